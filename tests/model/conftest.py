"""Fixtures for the model tests: each points ``LLMTUNE_HOME`` at a private temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtune.hparams.model_args import ModelArguments
from llmtune.model import TINY_MODEL_NAME, ensure_tiny_model


@pytest.fixture(scope="session")
def built_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private ``LLMTUNE_HOME`` in which the tiny model is built once for the session."""
    home = tmp_path_factory.mktemp("llmtune_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMTUNE_HOME", str(home))
        ensure_tiny_model()
    return home


@pytest.fixture(scope="session")
def tiny_dir(built_home: Path) -> Path:
    """The folder of the session's tiny-model build."""
    return built_home / "models" / "tiny-llama-v3"


@pytest.fixture
def tiny_home(built_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``LLMTUNE_HOME`` at the session's built tiny model for one test."""
    monkeypatch.setenv("LLMTUNE_HOME", str(built_home))
    return built_home


@pytest.fixture
def quick_pretrain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds in this test pretrain for 3 steps, not 300: the cache tests check files, not quality."""
    monkeypatch.setattr("llmtune.model.tiny.PRETRAIN_STEPS", 3)


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick_pretrain: None) -> Path:
    """Point ``LLMTUNE_HOME`` at a fresh, empty folder: the tiny model is not built there yet."""
    home = tmp_path / "llmtune_home"
    monkeypatch.setenv("LLMTUNE_HOME", str(home))
    return home


@pytest.fixture
def tiny_args(tiny_home: Path) -> ModelArguments:
    """Model arguments naming the embedded tiny model."""
    return ModelArguments(model_name_or_path=TINY_MODEL_NAME)
