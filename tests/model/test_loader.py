"""Resolving, validating and loading models and tokenizers; precision checks; parameter counts."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from llmtune.errors import ConfigError, DataFileNotFoundError
from llmtune.hparams.model_args import ModelArguments
from llmtune.model import (
    TINY_MODEL_NAME,
    check_model_args,
    check_precision,
    count_parameters,
    load_model,
    load_tokenizer,
    resolve_model_path,
)
from llmtune.model.tiny import tiny_model_dir


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("LLMTUNE_ALLOW_CPU_BF16", raising=False)


# -- resolving names ---------------------------------------------------------------------------


def test_tiny_name_resolves_to_the_cached_build(tiny_home: Path) -> None:
    assert resolve_model_path(ModelArguments(model_name_or_path=TINY_MODEL_NAME)) == str(tiny_model_dir())


def test_hub_id_passes_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path(ModelArguments(model_name_or_path="some-org/some-model")) == "some-org/some-model"


def test_existing_local_folder_resolves_to_its_absolute_path(tiny_home: Path, tmp_path: Path, monkeypatch) -> None:
    shutil.copytree(tiny_model_dir(), tmp_path / "saves" / "run1")
    monkeypatch.chdir(tmp_path)
    resolved = resolve_model_path(ModelArguments(model_name_or_path="saves/run1"))
    assert resolved == str((tmp_path / "saves" / "run1").resolve())


@pytest.mark.parametrize(
    "name", ["./missing-model", "/no/such/model", "~/llmtune-no-such-model", "saves/run9", "a/b/c"]
)
def test_missing_local_folder_is_one_line(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "saves").mkdir()  # "saves/run9" looks local because saves/ exists
    monkeypatch.chdir(tmp_path)
    args = ModelArguments(model_name_or_path=name)
    for check in (resolve_model_path, check_model_args):
        with pytest.raises(DataFileNotFoundError) as error:
            check(args)
        message = _one_line(error)
        assert f"'{name}' does not exist" in message and TINY_MODEL_NAME in message


def test_folder_without_config_and_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(DataFileNotFoundError) as error:
        resolve_model_path(ModelArguments(model_name_or_path=str(tmp_path / "empty")))
    assert "no config.json" in _one_line(error)
    with pytest.raises(DataFileNotFoundError) as error:
        resolve_model_path(ModelArguments(model_name_or_path=str(tmp_path / "weights.bin")))
    assert "is a file, not a folder" in _one_line(error)


def test_unknown_embedded_name_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError) as error:
        resolve_model_path(ModelArguments(model_name_or_path="llmtune/tiny-lama"))
    assert "did you mean 'llmtune/tiny-llama'" in _one_line(error)


@pytest.mark.parametrize("name", [None, "", "  "])
def test_missing_model_name_is_refused(name) -> None:
    with pytest.raises(ConfigError) as error:
        check_model_args(ModelArguments(model_name_or_path=name))
    assert _one_line(error).startswith("model_name_or_path: missing")


# -- validation before loading ----------------------------------------------------------------


def test_check_model_args_builds_and_loads_nothing(empty_home: Path) -> None:
    check_model_args(ModelArguments(model_name_or_path=TINY_MODEL_NAME))
    assert not empty_home.exists()


def test_bad_flash_attn_names_the_allowed_values() -> None:
    with pytest.raises(ConfigError) as error:
        check_model_args(ModelArguments(model_name_or_path=TINY_MODEL_NAME, flash_attn="spda"))
    message = _one_line(error)
    assert "flash_attn: 'spda'" in message and "auto, eager, fa2, sdpa" in message and "did you mean 'sdpa'" in message


def test_fa2_without_cuda_is_refused(no_cuda: None) -> None:
    with pytest.raises(ConfigError) as error:
        check_model_args(ModelArguments(model_name_or_path=TINY_MODEL_NAME, flash_attn="fa2"))
    assert "no CUDA GPU was found" in _one_line(error)


def test_missing_local_adapter_is_refused(tmp_path: Path) -> None:
    args = ModelArguments(model_name_or_path=TINY_MODEL_NAME, adapter_name_or_path=str(tmp_path / "lora"))
    with pytest.raises(DataFileNotFoundError) as error:
        check_model_args(args)
    assert _one_line(error).startswith("adapter_name_or_path:")


@pytest.mark.parametrize("trust", [True, False])
def test_trust_remote_code_warns_once(trust: bool, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="llmtune"):
        check_model_args(ModelArguments(model_name_or_path=TINY_MODEL_NAME, trust_remote_code=trust))
    expected = [f"trust_remote_code is on: code from {TINY_MODEL_NAME} will run"] if trust else []
    assert [record.getMessage() for record in caplog.records] == expected


# -- loading --------------------------------------------------------------------------------------


def test_load_tokenizer_of_the_tiny_model(tiny_args: ModelArguments) -> None:
    tokenizer = load_tokenizer(tiny_args)
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.decode(tokenizer.encode("Add the numbers: 12 + 34", add_special_tokens=False)) == (
        "Add the numbers: 12 + 34"
    )


def test_tokenizer_without_pad_pads_with_eos(tiny_home: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir())
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    shutil.copy(tiny_model_dir() / "config.json", tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token is None
    loaded = load_tokenizer(ModelArguments(model_name_or_path=str(tmp_path)))
    assert loaded.pad_token == loaded.eos_token == "</s>"


def test_load_model_for_training(tiny_args: ModelArguments) -> None:
    model = load_model(tiny_args)
    assert model.config.use_cache is False
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert load_model(tiny_args, for_training=False).config.use_cache is True


def test_load_model_follows_flash_attn_and_dtype(tiny_home: Path) -> None:
    args = ModelArguments(model_name_or_path=TINY_MODEL_NAME, flash_attn="eager")
    model = load_model(args, torch_dtype="bfloat16")
    assert model.config._attn_implementation == "eager"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(ConfigError) as error:
        load_model(args, torch_dtype="float8")
    assert "torch_dtype: 'float8'" in _one_line(error)


@pytest.mark.parametrize("load", [load_tokenizer, load_model])
def test_unreachable_hub_model_is_one_line(load, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataFileNotFoundError) as error:
        load(ModelArguments(model_name_or_path="llmtune-tests/no-such-model"))
    message = _one_line(error)
    assert "'llmtune-tests/no-such-model'" in message and "local model folder" in message
    assert TINY_MODEL_NAME in message


# -- precision and counting ------------------------------------------------------------------------


def test_bf16_on_cpu_is_refused_unless_allowed(no_cuda: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as error:
        check_precision(bf16=True, fp16=False)
    assert _one_line(error) == (
        "bf16 needs a GPU with bfloat16 support (Ampere or newer); none was found: set bf16: false"
    )
    monkeypatch.setenv("LLMTUNE_ALLOW_CPU_BF16", "1")
    check_precision(bf16=True, fp16=False)


def test_fp16_on_cpu_is_refused(no_cuda: None) -> None:
    with pytest.raises(ConfigError) as error:
        check_precision(bf16=False, fp16=True)
    assert _one_line(error).startswith("fp16 mixed precision needs a CUDA GPU")
    check_precision(bf16=False, fp16=False)


def test_bf16_on_a_gpu_without_bf16_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.raises(ConfigError) as error:
        check_precision(bf16=True, fp16=False)
    assert "Ampere or newer" in _one_line(error)
    check_precision(bf16=False, fp16=True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    check_precision(bf16=True, fp16=False)


def test_bf16_and_fp16_together_are_refused() -> None:
    with pytest.raises(ConfigError) as error:
        check_precision(bf16=True, fp16=True)
    assert "choose at most one" in _one_line(error)


def test_count_parameters_sees_frozen_parts(tiny_args: ModelArguments) -> None:
    model = load_model(tiny_args)
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == (total, total)
    embedding = model.get_input_embeddings().weight
    embedding.requires_grad_(False)
    assert count_parameters(model) == (total - embedding.numel(), total)


@pytest.mark.parametrize(
    ("finetuning_type", "frozen", "trained"),
    [
        ("lora", torch.bfloat16, torch.float32),  # a LoRA base costs 2 bytes per parameter
        ("loretta", torch.bfloat16, torch.float32),
        ("full", None, torch.float32),  # AdamW on fp32 weights, as LLaMA-Factory does
        ("block", torch.bfloat16, torch.bfloat16),  # BAdam keeps bf16 weights and an fp32 master itself
    ],
)
def test_with_bf16_frozen_weights_stay_bf16_and_trained_ones_are_fp32(
    make_config, tmp_path, finetuning_type, frozen, trained
):
    from llmtune.arguments import parse_args
    from llmtune.methods import get_method
    from llmtune.model.loader import compute_dtype

    args = parse_args(make_config(tmp_path, finetuning_type))
    args.training.bf16 = True  # as on a GPU; parse_args refuses bf16 on this CPU-only machine
    method = get_method(finetuning_type)
    model = method.prepare_model(load_model(args.model, compute_dtype(True, False)), args)
    dtypes = {(p.requires_grad, p.dtype) for p in model.parameters()}
    assert {dtype for grad, dtype in dtypes if grad} == {trained}
    assert {dtype for grad, dtype in dtypes if not grad} == ({frozen} if frozen else set())
