"""Shared fixtures: everything offline, on the CPU, with tiny models built locally.

Under ``CI=true`` a skipped test fails (:func:`pytest_runtest_makereport`): a missing package, data
file or program means the CI environment is broken, not that the test may pass. Only skips whose
reason names missing (or present) hardware, listed in ``HARDWARE_SKIP_REASONS``, stay skips.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

pytest_plugins = ["pytester"]  # tests/test_ci_skips.py runs small pytest sessions with this file's hooks

REPO = Path(__file__).resolve().parents[1]
# Test data shared by every checkout, next to the repository (CI puts it there too).
SHARED_DATA = REPO.parent / "shared" / "data"

# The only skips CI keeps: the machine lacks (or has) the hardware a test is about. A skip reason
# must contain one of these phrases to stay a skip under CI=true.
HARDWARE_SKIP_REASONS = (
    "needs a CUDA GPU",
    "this machine has a GPU",
    "needs a CPU with AVX512-BF16",
)


def in_ci() -> bool:
    """Whether this is a CI run: ``CI=true`` (GitHub Actions sets it; ``.ci/run`` expects it from its caller)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_a_skip_in_ci(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not in_ci():
        return
    reason = _skip_reason(report)
    if any(phrase in reason for phrase in HARDWARE_SKIP_REASONS):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, where only missing hardware may skip (tests/conftest.py): {reason}"


def pytest_configure(config):
    """Under CI=true, pytest-timeout must be loaded: without it pyproject's ``timeout`` is only an unknown option
    (a warning) and a hung test holds CI until its time runs out instead of failing with its stack."""
    if in_ci() and not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError(
            "pytest-timeout is not installed (or disabled with -p no:timeout): CI needs it "
            '(pip install -e ".[dev]" installs it)'
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A test's skip (``pytest.skip``, ``skipif``, ``importorskip``) fails it under CI=true, unless hardware is missing."""
    report = yield
    _fail_a_skip_in_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A module-level skip (``importorskip`` at import time) is a collection error under CI=true."""
    report = yield
    _fail_a_skip_in_ci(report)
    return report


def require_module(name: str, install: str):
    """Import ``name`` for a test: skip (a failure under CI=true) only when it is not installed.

    Unlike ``pytest.importorskip``, an installed module that fails to import (a broken build, a
    missing shared library) raises, so the test fails instead of passing as skipped.
    """
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"needs the {name} package ({install})")
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def bnb():
    """The ``bitsandbytes`` module (see :func:`require_module`: installed but broken fails the test)."""
    return require_module("bitsandbytes", "pip install bitsandbytes; in the dev extra")


def shared_folder(name: str, marker: str) -> Path:
    """``<repo>/../shared/data/<name>``, the test data every checkout shares; skipped (failed under CI=true)
    when its ``marker`` file is missing."""
    folder = SHARED_DATA / name
    if not (folder / marker).is_file():
        pytest.skip(f"needs the shared test data <repo>/../shared/data/{name} ({folder / marker} is missing)")
    return folder


@pytest.fixture(scope="session")
def badam():
    """The ``badam`` package, BAdam's reference implementation (see :func:`require_module`)."""
    return require_module("badam", "pip install badam; in the dev extra")


@pytest.fixture(scope="session")
def llamafactory_data() -> Path:
    """LLaMA-Factory's ``data`` folder: its dataset_info.json and demo sets (alpaca_en_demo, identity, ...)."""
    return shared_folder("llamafactory", "dataset_info.json")


@pytest.fixture(scope="session")
def shared_mt_bench() -> Path:
    """FastChat's MT-bench files (question.jsonl, reference answers)."""
    return shared_folder("mt_bench", "question.jsonl")


def tiny_config(output_dir, finetuning_type: str = "lora", **overrides) -> dict:
    """A config for a few seconds of training of the embedded tiny model on the demo data."""
    config = {
        "model_name_or_path": "llmtune/tiny-llama",
        "stage": "sft",
        "finetuning_type": finetuning_type,
        "dataset": "demo_alpaca",
        "template": "default",
        "cutoff_len": 64,
        "max_samples": 160,
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 8,
        "learning_rate": {"full": 3e-3, "lora": 1e-2}.get(finetuning_type, 1e-3),
        "max_steps": 20,
        "logging_steps": 1,
        "save_steps": 10,
        "lr_scheduler_type": "constant",
        "seed": 0,
        "report_to": "none",
        "disable_tqdm": True,
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_config():
    """``make_config(output_dir, finetuning_type, **overrides)`` -> a tiny training config dict."""
    return tiny_config


@pytest.fixture(scope="session")
def bnb_logits(bnb):
    """``bnb_logits(model, ids)``: eval-mode logits with every bitsandbytes ``Linear4bit`` left in train mode.

    In eval mode on a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight for a bfloat16 kernel
    (unless the input requires a gradient), so two equal models could compute in different precisions.
    """
    import torch

    def logits(model, ids):
        model.eval()
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.train()
        with torch.no_grad():
            return model(input_ids=ids).logits

    return logits


@pytest.fixture(scope="session")
def llama3_8b_config():
    """A ``LlamaConfig`` with meta-llama/Meta-Llama-3-8B's shapes (estimates need no download)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    )


@pytest.fixture
def refuse_model_loading(monkeypatch):
    """Loading a model fails the test: llmtune's ``load_model`` in every module that looks it up (a module that
    imported it by name keeps its own reference, so patching ``llmtune.model`` alone misses it) and
    transformers' ``AutoModelForCausalLM.from_pretrained`` underneath."""
    import sys

    import llmtune.model

    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was loaded")

    original = llmtune.model.load_model
    for name, module in list(sys.modules.items()):
        if name.startswith("llmtune") and getattr(module, "load_model", None) is original:
            monkeypatch.setattr(module, "load_model", refuse)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", refuse)
