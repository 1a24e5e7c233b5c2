"""Chat templates: exact renderings, the end-of-turn token as a label, tokenizer checks, ``auto``."""

from __future__ import annotations

import re

import pytest

from llmtune.data import TEMPLATES, Template, get_template
from llmtune.errors import ConfigError

TWO_TURNS = {
    "system": "Be brief.",
    "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye"},
    ],
}
NO_SYSTEM = {**TWO_TURNS, "system": None}

EXPECTED_TEXT = {
    "default": "System: Be brief.\nHuman: Hi\nAssistant: Hello</s>\nHuman: Bye\nAssistant: Goodbye</s>",
    "alpaca": "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello</s>\n\n"
    "### Instruction:\nBye\n\n### Response:\nGoodbye</s>",
    "llama2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST] Goodbye </s>",
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    "Hello<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nGoodbye<|eot_id|>",
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    "Hello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nGoodbye<|im_end|>",
    "mistral": "<s>[INST] Be brief.\n\nHi [/INST] Hello</s>[INST] Bye [/INST] Goodbye</s>",
    "auto": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    "Hello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nGoodbye<|im_end|>",
}
EXPECTED_TEXT["qwen"] = EXPECTED_TEXT["chatml"]


def _text(tokenizer, pairs) -> str:
    return tokenizer.decode([i for prompt, response in pairs for i in prompt + response])


def test_every_template_is_covered() -> None:
    assert set(TEMPLATES) == set(EXPECTED_TEXT)
    assert all(isinstance(t, Template) for t in TEMPLATES.values())


@pytest.mark.parametrize("name", sorted(EXPECTED_TEXT))
def test_two_turn_rendering_is_exact(name: str, tokenizer, chat_tokenizer) -> None:
    tok = chat_tokenizer if name == "auto" else tokenizer
    pairs = get_template(name, tok).encode(tok, TWO_TURNS)
    assert len(pairs) == 2
    assert _text(tok, pairs) == EXPECTED_TEXT[name]


def test_default_template_prompt_and_response_split() -> None:
    pairs = TEMPLATES["default"].render(NO_SYSTEM)
    assert pairs == [("Human: Hi\nAssistant: ", "Hello"), ("\nHuman: Bye\nAssistant: ", "Goodbye")]


def test_chatml_split_keeps_the_newline_in_the_next_prompt() -> None:
    pairs = TEMPLATES["chatml"].render(NO_SYSTEM)
    assert pairs[1][0] == "\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    assert pairs[0][1] == "Hello"


def test_auto_split_matches_chatml(chat_tokenizer) -> None:
    auto = TEMPLATES["auto"].render(TWO_TURNS, tokenizer=chat_tokenizer)
    assert auto[0] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "Hello<|im_end|>",
    )
    assert auto[1] == ("\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", "Goodbye<|im_end|>")


@pytest.mark.parametrize(("name", "system"), [("qwen", "You are Qwen"), ("alpaca", "Below is an instruction")])
def test_default_system_prompts(name: str, system: str, tokenizer) -> None:
    template = TEMPLATES[name]
    assert template.render(NO_SYSTEM)[0][0].startswith(("<|im_start|>system\n" if name == "qwen" else "") + system)
    overridden = template.render(NO_SYSTEM, default_system="Custom.")[0][0]
    assert "Custom." in overridden and system not in overridden
    assert "Be brief." in template.render(TWO_TURNS, default_system="Custom.")[0][0]  # the row's own wins


def test_content_with_braces_is_kept_verbatim(tokenizer) -> None:
    example = {"system": None, "messages": [{"role": "user", "content": "I am {{name}}"}, NO_SYSTEM["messages"][1]]}
    assert TEMPLATES["default"].render(example)[0][0] == "Human: I am {{name}}\nAssistant: "


@pytest.mark.parametrize("name", sorted(EXPECTED_TEXT))
def test_end_of_turn_token_ends_every_response_with_pad_equal_to_eos(name: str, tokenizer, chat_tokenizer) -> None:
    tok = chat_tokenizer if name == "auto" else tokenizer
    assert tok.pad_token_id == tok.eos_token_id  # the case where a pad-masking collator would lose eos
    template = get_template(name, tok)
    expected = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>", "qwen": "<|im_end|>", "auto": "<|im_end|>"}
    eot_id = tok.convert_tokens_to_ids(expected.get(name, tok.eos_token))
    for _prompt, response in template.encode(tok, TWO_TURNS):
        assert response[-1] == eot_id
        assert response.count(eot_id) == 1


def test_unknown_template_suggests_a_name(tokenizer) -> None:
    with pytest.raises(ConfigError, match=r"template: 'lama3' is not one of .* \(did you mean 'llama3'\?\)"):
        get_template("lama3", tokenizer)


def test_template_needs_its_tokens(plain_tokenizer) -> None:
    with pytest.raises(ConfigError) as caught:
        get_template("llama3", plain_tokenizer)
    message = str(caught.value)
    assert "template 'llama3' needs token '<|eot_id|>', which this tokenizer lacks" in message
    assert "template: auto" in message and "default, alpaca, llama2, mistral" in message
    with pytest.raises(ConfigError, match=re.escape("needs token '<|im_end|>'")):
        get_template("chatml", plain_tokenizer)
    assert get_template("default", plain_tokenizer) is TEMPLATES["default"]


def test_auto_needs_a_chat_template(tokenizer) -> None:
    with pytest.raises(ConfigError, match="has none"):
        get_template("auto", tokenizer)


def test_auto_refuses_a_template_that_is_not_incremental(tokenizer) -> None:
    tok = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>")
    tok.chat_template = "{{ messages[-1]['content'] }}"  # renders only the last message
    with pytest.raises(ConfigError, match="does not render conversations incrementally"):
        get_template("auto", tok)


def test_auto_reports_a_failing_chat_template(tokenizer) -> None:
    tok = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>")
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(ConfigError, match="roles must alternate"):
        get_template("auto", tok)


def test_auto_appends_eos_when_the_template_has_no_end_token(tokenizer) -> None:
    tok = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>")
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    pairs = get_template("auto", tok).encode(tok, NO_SYSTEM)
    assert [response[-1] for _, response in pairs] == [tok.eos_token_id] * 2
    assert _text(tok, pairs) == "user: Hi\nassistant: Hello\n</s>user: Bye\nassistant: Goodbye\n</s>"
