"""Tokenised datasets: label masking, truncation, drops, splits and the report."""

from __future__ import annotations

from pathlib import Path

import pytest

import llmtune
from llmtune.data import TEMPLATES, PreparedData, get_dataset
from llmtune.data.processor import IGNORE_INDEX, build_example
from llmtune.errors import DataError
from llmtune.hparams.data_args import DataArguments

REPO_DATA = Path(llmtune.__file__).parents[2] / "data"
ALPACA = {"a": {"file_name": "a.json"}}
SHAREGPT = {"s": {"file_name": "s.json", "formatting": "sharegpt"}}


def _args(folder: Path, dataset: str = "a", **options) -> DataArguments:
    return DataArguments(dataset=dataset, dataset_dir=str(folder), **options)


def _rows(count: int) -> list[dict]:
    return [{"instruction": f"Say {i}", "input": "", "output": f"word {i}"} for i in range(count)]


def _two_turn_row() -> dict:
    turns = [("human", "Hello world"), ("gpt", "how are you"), ("human", "The quick fox"), ("gpt", "lazy dog")]
    return {"conversations": [{"from": role, "value": text} for role, text in turns]}


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_columns_are_input_ids_and_labels_as_int_lists(dataset_dir, tokenizer) -> None:
    prepared = get_dataset(_args(dataset_dir({"a.json": _rows(3)}, ALPACA)), tokenizer)
    assert isinstance(prepared, PreparedData)
    assert prepared.train.column_names == ["input_ids", "labels"]
    assert prepared.eval is None
    row = prepared.train[0]
    assert all(isinstance(i, int) for i in row["input_ids"] + row["labels"])
    assert len(row["input_ids"]) == len(row["labels"])


def test_prompt_tokens_are_masked_and_response_tokens_trained(dataset_dir, tokenizer) -> None:
    row = {"instruction": "Hello world", "output": "how are you"}
    prepared = get_dataset(_args(dataset_dir({"a.json": [row]}, ALPACA)), tokenizer)
    prompt = _encode(tokenizer, "Human: Hello world\nAssistant: ")
    response = _encode(tokenizer, "how are you") + [tokenizer.eos_token_id]
    assert prepared.train[0]["input_ids"] == prompt + response
    assert prepared.train[0]["labels"] == [IGNORE_INDEX] * len(prompt) + response


def test_train_on_prompt_labels_everything(dataset_dir, tokenizer) -> None:
    folder = dataset_dir({"s.json": [_two_turn_row()]}, SHAREGPT)
    row = get_dataset(_args(folder, "s", train_on_prompt=True), tokenizer).train[0]
    assert row["labels"] == row["input_ids"]


def test_every_turn_is_trained_and_ends_with_eos_even_when_pad_is_eos(dataset_dir, tokenizer) -> None:
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    folder = dataset_dir({"s.json": [_two_turn_row()]}, SHAREGPT)
    row = get_dataset(_args(folder, "s"), tokenizer).train[0]
    labels, eos = row["labels"], tokenizer.eos_token_id
    trained = [label for label in labels if label != IGNORE_INDEX]
    assert trained == _encode(tokenizer, "how are you") + [eos] + _encode(tokenizer, "lazy dog") + [eos]
    assert labels[-1] == eos


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_each_template_trains_on_its_end_of_turn_token(name: str, dataset_dir, tokenizer, chat_tokenizer) -> None:
    tok = chat_tokenizer if name == "auto" else tokenizer
    folder = dataset_dir({"s.json": [_two_turn_row()]}, SHAREGPT)
    row = get_dataset(_args(folder, "s", template=name), tok).train[0]
    eot = TEMPLATES[name].eot_token or ("<|im_end|>" if name == "auto" else tok.eos_token)
    runs = _trained_runs(row["labels"])
    assert len(runs) == 2  # one trained span per response
    assert [run[-1] for run in runs] == [tok.convert_tokens_to_ids(eot)] * 2


def _trained_runs(labels: list[int]) -> list[list[int]]:
    """The maximal spans of labels that are not ``IGNORE_INDEX``."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


def test_mask_history_trains_only_the_last_turn(dataset_dir, tokenizer) -> None:
    folder = dataset_dir({"s.json": [_two_turn_row()]}, SHAREGPT)
    row = get_dataset(_args(folder, "s", mask_history=True), tokenizer).train[0]
    trained = [label for label in row["labels"] if label != IGNORE_INDEX]
    assert trained == _encode(tokenizer, "lazy dog") + [tokenizer.eos_token_id]


def test_build_example_combines_flags() -> None:
    pairs = [([1, 2], [3, 9]), ([4], [5, 9])]
    assert build_example(pairs) == ([1, 2, 3, 9, 4, 5, 9], [-100, -100, 3, 9, -100, 5, 9])
    assert build_example(pairs, mask_history=True)[1] == [-100, -100, -100, -100, -100, 5, 9]
    assert build_example(pairs, train_on_prompt=True, mask_history=True)[1] == [-100, -100, -100, -100, 4, 5, 9]


def test_default_system_option_is_rendered(dataset_dir, tokenizer) -> None:
    folder = dataset_dir({"a.json": _rows(1)}, ALPACA)
    row = get_dataset(_args(folder, default_system="Be brief."), tokenizer).train[0]
    assert tokenizer.decode(row["input_ids"]).startswith("System: Be brief.\nHuman: Say 0")


def test_cutoff_len_truncates_and_counts(dataset_dir, tokenizer) -> None:
    rows = _rows(4)
    rows[1]["output"] = "The quick brown fox jumps over the lazy dog. " * 5
    prepared = get_dataset(_args(dataset_dir({"a.json": rows}, ALPACA), cutoff_len=24), tokenizer)
    lengths = [len(ids) for ids in prepared.train["input_ids"]]
    assert lengths[1] == 24 and max(lengths) == 24
    assert (
        prepared.train[1]["input_ids"]
        == get_dataset(_args(dataset_dir({"a.json": rows}, ALPACA)), tokenizer).train[1]["input_ids"][:24]
    )  # the start is kept
    assert (prepared.report.truncated, prepared.report.dropped) == (1, 0)
    assert "1 truncated at cutoff_len 24, 0 dropped" in prepared.report.summary()


def test_rows_with_no_trained_token_left_are_dropped(dataset_dir, tokenizer) -> None:
    rows = _rows(3)
    rows[2]["instruction"] = "The quick brown fox jumps over the lazy dog. " * 5  # prompt alone > cutoff
    prepared = get_dataset(_args(dataset_dir({"a.json": rows}, ALPACA), cutoff_len=20), tokenizer)
    assert len(prepared.train) == 2
    assert (prepared.report.truncated, prepared.report.dropped) == (1, 1)
    assert "dropped 1 rows" in prepared.report.summary() and "raise cutoff_len" in prepared.report.summary()


def test_no_row_left_raises_with_the_numbers(dataset_dir, tokenizer) -> None:
    with pytest.raises(DataError, match="all 3 rows lose every trained token when cut to cutoff_len 3"):
        get_dataset(_args(dataset_dir({"a.json": _rows(3)}, ALPACA), cutoff_len=3), tokenizer)


@pytest.mark.parametrize(("val_size", "eval_rows"), [(0.2, 4), (3, 3)])
def test_val_size_splits_with_the_seed(dataset_dir, tokenizer, val_size: float, eval_rows: int) -> None:
    folder = dataset_dir({"a.json": _rows(20)}, ALPACA)
    first = get_dataset(_args(folder, val_size=val_size), tokenizer, seed=1)
    again = get_dataset(_args(folder, val_size=val_size), tokenizer, seed=1)
    other = get_dataset(_args(folder, val_size=val_size), tokenizer, seed=2)
    assert (len(first.train), len(first.eval)) == (20 - eval_rows, eval_rows)
    assert list(first.eval["input_ids"]) == list(again.eval["input_ids"])
    assert list(first.eval["input_ids"]) != list(other.eval["input_ids"])
    together = sorted(map(tuple, [*first.train["input_ids"], *first.eval["input_ids"]]))
    assert together == sorted(map(tuple, get_dataset(_args(folder), tokenizer).train["input_ids"]))
    assert (first.report.train_rows, first.report.eval_rows) == (20 - eval_rows, eval_rows)


def test_eval_dataset_is_tokenised_separately(dataset_dir, tokenizer) -> None:
    folder = dataset_dir({"a.json": _rows(5), "s.json": [_two_turn_row()] * 2}, {**ALPACA, **SHAREGPT})
    prepared = get_dataset(_args(folder, "a", eval_dataset="s"), tokenizer)
    assert (len(prepared.train), len(prepared.eval)) == (5, 2)
    assert prepared.eval.column_names == ["input_ids", "labels"]


def test_several_datasets_are_concatenated(dataset_dir, tokenizer) -> None:
    folder = dataset_dir({"a.json": _rows(5), "s.json": [_two_turn_row()] * 2}, {**ALPACA, **SHAREGPT})
    prepared = get_dataset(_args(folder, "a,s"), tokenizer)
    assert len(prepared.train) == 7
    assert "train data: a 5 rows, s 2 rows" in prepared.report.summary()
    assert "tokenised: 7 train;" in prepared.report.summary()


def test_shipped_demo_data_tokenises(tokenizer) -> None:
    if not (REPO_DATA / "demo_alpaca.json").is_file() or not (REPO_DATA / "demo_sharegpt.json").is_file():
        pytest.skip("data/demo_*.json not generated yet (python -m llmtune.data.demo)")
    args = DataArguments(dataset="demo_alpaca,demo_sharegpt", dataset_dir=str(REPO_DATA), val_size=0.1)
    prepared = get_dataset(args, tokenizer)
    assert len(prepared.train) + len(prepared.eval) == prepared.report.rows("train")
    assert prepared.report.dropped == 0
