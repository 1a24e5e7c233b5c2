"""The embedded tiny model: what it is, that it is cached and rebuilt identically, and that it learns."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtune.data.demo import alpaca_rows, demo_texts
from llmtune.model import ensure_tiny_model, tiny
from llmtune.model.tiny import BUILD_MARKER, CHAT_SPECIAL_TOKENS, tiny_model_dir


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def model(tiny_dir: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_dir)


def _snapshot(folder: Path) -> tuple[dict[str, torch.Tensor], bytes, bytes]:
    """Weights, tokenizer and config of a build, for comparing two builds."""
    return (
        load_file(folder / "model.safetensors"),
        (folder / "tokenizer.json").read_bytes(),
        (folder / "config.json").read_bytes(),
    )


def test_build_is_a_small_untied_llama(tiny_dir: Path, model, tokenizer) -> None:
    config = model.config
    assert config.model_type == "llama"
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (64, 2, 128)
    assert (config.num_attention_heads, config.num_key_value_heads, config.max_position_embeddings) == (4, 2, 512)
    assert config.vocab_size == len(tokenizer)
    assert not config.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()
    assert 150_000 < sum(p.numel() for p in model.parameters()) < 300_000
    assert (tiny_dir / "model.safetensors").is_file() and (tiny_dir / BUILD_MARKER).is_file()


def test_second_call_uses_the_cache(empty_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ensure_tiny_model()
    assert first == empty_home / "models" / "tiny-llama-v3"

    def must_not_build(folder: Path) -> None:
        raise AssertionError("rebuilt although the cache was complete")

    monkeypatch.setattr(tiny, "build_tiny_model", must_not_build)
    assert ensure_tiny_model() == first


def test_rebuild_after_deleting_the_cache_is_identical(empty_home: Path) -> None:
    weights, tokenizer_json, config_json = _snapshot(ensure_tiny_model())
    shutil.rmtree(tiny_model_dir())
    rebuilt_weights, rebuilt_tokenizer, rebuilt_config = _snapshot(ensure_tiny_model())
    assert weights.keys() == rebuilt_weights.keys()
    assert all(torch.equal(weights[name], rebuilt_weights[name]) for name in weights)
    assert (tokenizer_json, config_json) == (rebuilt_tokenizer, rebuilt_config)


def test_building_leaves_the_global_rng_alone(tmp_path: Path, quick_pretrain: None) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.build_tiny_model(tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_a_build_that_loses_the_race_keeps_the_winner(empty_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build = tiny.build_tiny_model

    def build_while_another_process_finishes_first(folder: Path) -> None:
        build(folder)
        winner = tiny_model_dir()
        winner.mkdir(parents=True)
        build(winner)
        (winner / "winner.txt").write_text("first")

    monkeypatch.setattr(tiny, "build_tiny_model", build_while_another_process_finishes_first)
    target = ensure_tiny_model()
    assert (target / "winner.txt").read_text() == "first"
    assert list(target.parent.iterdir()) == [target]  # the losing copy was removed


def test_an_unfinished_cache_folder_is_rebuilt(empty_home: Path) -> None:
    broken = tiny_model_dir()
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{")  # an interrupted copy: no build marker
    target = ensure_tiny_model()
    assert target == broken and (target / BUILD_MARKER).is_file()
    assert AutoModelForCausalLM.from_pretrained(target).config.hidden_size == 64
    assert list(target.parent.iterdir()) == [target]


@pytest.mark.slow
def test_two_processes_building_at_once_both_succeed(empty_home: Path) -> None:
    # The lock is what is under test, not the pretraining: a few steps keep this fast on a loaded CI machine.
    code = (
        "import llmtune.model.tiny as tiny; tiny.PRETRAIN_STEPS = 3; "
        "from llmtune.model import ensure_tiny_model; print(ensure_tiny_model())"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    # the last line: DeepSpeed, when installed, prints its accelerator warning on stdout at import
    outputs = [proc.communicate(timeout=600)[0].strip().splitlines()[-1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert outputs == [str(tiny_model_dir())] * 2
    assert list(tiny_model_dir().parent.iterdir()) == [tiny_model_dir()]


def test_tokenizer_round_trips_the_demo_texts(tokenizer) -> None:
    for text in demo_texts():
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_tokenizer_specials_are_single_distinct_ids(tokenizer) -> None:
    specials = [
        tokenizer.unk_token,
        tokenizer.bos_token,
        tokenizer.eos_token,
        tokenizer.pad_token,
        *CHAT_SPECIAL_TOKENS,
    ]
    ids = [tokenizer.encode(token, add_special_tokens=False) for token in specials]
    assert all(len(one) == 1 for one in ids)
    assert len({one[0] for one in ids}) == len(specials)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")


def test_tokenizer_size_digits_and_no_automatic_bos(tokenizer) -> None:
    assert 800 <= len(tokenizer) <= 1100
    assert tokenizer.tokenize("12345") == list("12345")  # one token per digit keeps arithmetic learnable
    assert tokenizer("Add the numbers: 1 + 2")["input_ids"][0] != tokenizer.bos_token_id


def test_chat_template_renders_chatml(tokenizer) -> None:
    messages = [{"role": "user", "content": "Reverse the word: cat"}, {"role": "assistant", "content": "tac"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>user\nReverse the word: cat<|im_end|>\n<|im_start|>assistant\ntac<|im_end|>\n"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_generation_stops_at_every_template_end_token(model, tokenizer) -> None:
    stop = set(model.generation_config.eos_token_id)
    assert stop == set(tokenizer.convert_tokens_to_ids(["</s>", "<|im_end|>", "<|eot_id|>"]))


def test_pretrained_on_the_words_but_not_the_tasks(tiny_dir: Path, tokenizer) -> None:
    """The build knows the demo vocabulary (low loss on text) but not the answers (high loss on them)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    rows = alpaca_rows()[:16]

    def answer_loss(model) -> float:
        losses = []
        for row in rows:
            prompt = tokenizer(f"{row['instruction']} {row['input']}\n", add_special_tokens=False)["input_ids"]
            answer = tokenizer(row["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([prompt + answer])
            labels = torch.tensor([[-100] * len(prompt) + answer])
            losses.append(model(input_ids=ids, labels=labels).loss.item())
        return sum(losses) / len(losses)

    uniform = math.log(len(tokenizer))
    with torch.no_grad():
        text = tokenizer([row["instruction"] for row in rows], return_tensors="pt", padding=True)
        labels = text["input_ids"].masked_fill(text["attention_mask"] == 0, -100)
        text_loss = model(**text, labels=labels).loss.item()
        before = answer_loss(model)
    assert text_loss < uniform / 2  # it learned the words
    assert before > 2 * text_loss  # but not which answer follows which prompt

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        for row in rows[:4]:
            ids = tokenizer(f"{row['instruction']} {row['input']}\n{row['output']}</s>", return_tensors="pt")[
                "input_ids"
            ]
            model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        assert answer_loss(model) < before
