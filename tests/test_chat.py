"""``llmtune chat``: a scripted conversation on the tiny model, with and without an adapter."""

from __future__ import annotations

import io

import pytest
import torch

from llmtune.chat import chat_loop, load_chat_model, load_chat_options, prompt_ids, run_chat
from llmtune.cli import main
from llmtune.errors import ConfigError
from llmtune.eval.model import generate, stop_token_ids

TINY = ["--model_name_or_path", "llmtune/tiny-llama", "--template", "default", "--max_new_tokens", "8"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA adapter on the tiny model with random (non-zero) weights, so it changes the answers."""
    from peft import LoraConfig, get_peft_model

    from llmtune.hparams.model_args import ModelArguments
    from llmtune.model import load_model

    torch.manual_seed(0)
    model = load_model(ModelArguments(model_name_or_path="llmtune/tiny-llama"), for_training=False)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(20.0)  # large enough that greedy answers move
    folder = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(folder)
    return folder


def _transcript(tokens, lines):
    out = io.StringIO()
    history = run_chat(tokens, lines=lines, out=out)
    return history, out.getvalue()


def test_scripted_conversation_keeps_history_and_clear_forgets_it():
    history, text = _transcript(TINY, ["hello", "clear", "what is 2+2?", "and 3+3?", "exit", "never read"])
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in history if m["role"] == "user"] == ["what is 2+2?", "and 3+3?"]
    assert "(conversation cleared)" in text
    assert text.count("Assistant:") == 3  # three questions answered, nothing after exit


def test_answers_are_the_greedy_continuation_of_the_templated_prompt(adapter):
    options = load_chat_options([*TINY, "--adapter_name_or_path", str(adapter)])
    model, tokenizer, template = load_chat_model(options)
    history = chat_loop(model, tokenizer, template, options, ["Name a colour."], io.StringIO())
    ids = prompt_ids(template, tokenizer, history[:1], None)
    expected = generate(model, tokenizer, [ids], 8, stop_token_ids(model, tokenizer, template))[0].strip()
    assert history[1]["content"] == expected
    assert hasattr(model, "peft_config")  # the adapter is applied


def test_adapter_changes_the_answer(adapter):
    question = ["Give three tips for staying healthy."]
    plain, _ = _transcript(TINY, question)
    adapted, _ = _transcript([*TINY, "--adapter_name_or_path", str(adapter)], question)
    assert plain[1]["content"] != adapted[1]["content"]


def test_errors_are_one_line_before_loading(tmp_path, capsys):
    with pytest.raises(ConfigError, match="model_name_or_path: required"):
        load_chat_options([])
    with pytest.raises(ConfigError, match="max_new_tokens"):
        load_chat_options([*TINY, "--max_new_tokens", "0"])
    assert (
        main(["chat", "--model_name_or_path", "llmtune/tiny-llama", "--adapter_name_or_path", str(tmp_path / "x")]) == 2
    )
    assert "adapter_name_or_path" in capsys.readouterr().err
    assert main(["chat", "--help"]) == 0
    assert "llmtune chat" in capsys.readouterr().out
