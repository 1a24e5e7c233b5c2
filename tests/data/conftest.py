"""Fixtures for the data tests: a tiny byte-level BPE tokenizer and dataset folders in tmp_path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CHAT_TOKENS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|begin_of_text|>",
]
CHATML_JINJA = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TRAINING_TEXT = [
    "Hello world, how are you? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
    "Human: Assistant: System: user assistant system",
    "### Instruction: ### Response: [INST] [/INST] <<SYS>> <</SYS>>",
    "Reverse the word: lamp. Add the numbers: 12 + 34 = 46.",
]


def build_tokenizer(chat_tokens: bool = True, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer whose pad token is its eos token (``</s>``), bos ``<s>``."""
    specials = ["<s>", "</s>", *(CHAT_TOKENS if chat_tokens else [])]
    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    model.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        additional_special_tokens=specials[2:],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    """Has every chat token of the built-in templates; no chat_template; pad == eos."""
    return build_tokenizer()


@pytest.fixture(scope="session")
def chat_tokenizer() -> PreTrainedTokenizerFast:
    """Like ``tokenizer`` but with a ChatML ``chat_template`` (for ``template: auto``)."""
    return build_tokenizer(chat_template=CHATML_JINJA)


@pytest.fixture(scope="session")
def plain_tokenizer() -> PreTrainedTokenizerFast:
    """Only ``<s>`` and ``</s>``: lacks the chat tokens of llama3/chatml/qwen."""
    return build_tokenizer(chat_tokens=False)


DatasetDir = Callable[..., Path]


@pytest.fixture
def dataset_dir(tmp_path: Path) -> DatasetDir:
    """Write files and a ``dataset_info.json`` into tmp_path; return the folder.

    Call as ``dataset_dir({"a.json": rows_or_text_or_bytes}, {"name": entry})``: a list is
    written as a pretty-printed JSON array (indent 2), a str as text, bytes as they are.
    """

    def write(files: dict[str, object], registry: dict[str, dict]) -> Path:
        for name, content in files.items():
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            elif isinstance(content, str):
                path.write_text(content, encoding="utf-8")
            else:
                path.write_text(json.dumps(content, indent=2), encoding="utf-8")
        (tmp_path / "dataset_info.json").write_text(json.dumps(registry), encoding="utf-8")
        return tmp_path

    return write
