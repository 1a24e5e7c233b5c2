"""Loading good data: every file type, both formattings, the unified form, caps and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import llmtune
from llmtune.data import DataReport, check_datasets
from llmtune.data.loader import load_conversations
from llmtune.errors import ConfigError, DataError
from llmtune.hparams.data_args import DataArguments

REPO_DATA = Path(llmtune.__file__).parents[2] / "data"
ALPACA = {"a": {"file_name": "a.json"}}
SHAREGPT = {"s": {"file_name": "s.json", "formatting": "sharegpt"}}


def _args(folder: Path, dataset: str, **options) -> DataArguments:
    return DataArguments(dataset=dataset, dataset_dir=str(folder), **options)


def _rows(count: int) -> list[dict]:
    return [{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(count)]


def test_alpaca_row_becomes_a_conversation(dataset_dir) -> None:
    row = {
        "instruction": "Translate",
        "input": "chat",
        "output": "cat",
        "system": "Be terse.",
        "history": [["Hi", "Hello"], ["Ready?", "Yes"]],
    }
    folder = dataset_dir({"a.json": [row]}, ALPACA)
    (conversation,) = load_conversations(_args(folder, "a")).train
    assert conversation == {
        "system": "Be terse.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Ready?"},
            {"role": "assistant", "content": "Yes"},
            {"role": "user", "content": "Translate\nchat"},  # input joined with "\n"
            {"role": "assistant", "content": "cat"},
        ],
    }


def test_alpaca_without_input_or_system(dataset_dir) -> None:
    folder = dataset_dir({"a.json": [{"instruction": "Hi", "output": "Hello"}]}, ALPACA)
    (conversation,) = load_conversations(_args(folder, "a")).train
    assert conversation == {
        "system": None,
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    }


def test_sharegpt_with_system_message_and_custom_tags(dataset_dir) -> None:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Goodbye"},
            ]
        }
    ]
    entry = {
        "file_name": "s.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }
    folder = dataset_dir({"s.json": rows}, {"s": entry})
    (conversation,) = load_conversations(_args(folder, "s")).train
    assert conversation["system"] == "Be kind."
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant", "user", "assistant"]
    assert conversation["messages"][3]["content"] == "Goodbye"


def test_sharegpt_system_column(dataset_dir) -> None:
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}], "system": "Sys"}
    folder = dataset_dir({"s.json": [row]}, SHAREGPT)
    (conversation,) = load_conversations(_args(folder, "s")).train
    assert conversation == {
        "system": "Sys",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
    }


def test_jsonl_in_json_and_jsonl_files(dataset_dir) -> None:
    lines = "\n".join(json.dumps(row) for row in _rows(3)) + "\n"
    folder = dataset_dir({"a.json": lines, "b.jsonl": lines}, {**ALPACA, "b": {"file_name": "b.jsonl"}})
    loaded = load_conversations(_args(folder, "a,b"))
    assert len(loaded.train) == 6
    assert loaded.train[4]["messages"][1]["content"] == "1"


def test_csv_file(dataset_dir) -> None:
    text = 'instruction,input,output\nSay hi,,hi\n"Two\nlines",x,"ok"\n'
    folder = dataset_dir({"c.csv": text}, {"c": {"file_name": "c.csv"}})
    train = load_conversations(_args(folder, "c")).train
    assert [c["messages"][0]["content"] for c in train] == ["Say hi", "Two\nlines\nx"]


def test_parquet_file(dataset_dir, tmp_path: Path) -> None:
    folder = dataset_dir({}, {"p": {"file_name": "p.parquet"}})
    pq.write_table(pa.Table.from_pylist(_rows(4)), tmp_path / "p.parquet")
    train = load_conversations(_args(folder, "p")).train
    assert [c["messages"][1]["content"] for c in train] == ["0", "1", "2", "3"]


def test_folder_of_files_is_read_in_name_order(dataset_dir) -> None:
    files = {"set/b.json": _rows(2), "set/a.jsonl": json.dumps(_rows(1)[0]) + "\n", "set/README.md": "# notes"}
    folder = dataset_dir(files, {"f": {"file_name": "set"}})
    train = load_conversations(_args(folder, "f")).train
    assert [c["messages"][1]["content"] for c in train] == ["0", "0", "1"]


def test_several_datasets_are_concatenated_and_counted(dataset_dir) -> None:
    sharegpt_row = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    folder = dataset_dir({"a.json": _rows(3), "s.json": [sharegpt_row] * 2}, {**ALPACA, **SHAREGPT})
    loaded = load_conversations(_args(folder, "a, s"))
    assert len(loaded.train) == 5
    assert [(d.name, d.rows) for d in loaded.report.datasets] == [("a", 3), ("s", 2)]
    assert loaded.report.summary() == "train data: a 3 rows, s 2 rows"


def test_max_samples_caps_rows_per_dataset(dataset_dir) -> None:
    folder = dataset_dir({"a.json": _rows(10), "b.json": _rows(3)}, {**ALPACA, "b": {"file_name": "b.json"}})
    report = check_datasets(_args(folder, "a,b", max_samples=4))
    assert [d.rows for d in report.datasets] == [4, 3]


def test_eval_dataset_is_loaded_separately(dataset_dir) -> None:
    folder = dataset_dir({"a.json": _rows(5), "b.json": _rows(2)}, {**ALPACA, "b": {"file_name": "b.json"}})
    loaded = load_conversations(_args(folder, "a", eval_dataset="b"))
    assert (len(loaded.train), len(loaded.eval)) == (5, 2)
    assert loaded.report.summary() == "train data: a 5 rows\neval data: b 2 rows"


def test_check_datasets_returns_a_report(dataset_dir) -> None:
    folder = dataset_dir({"a.json": _rows(3)}, ALPACA)
    report = check_datasets(_args(folder, "a"))
    assert isinstance(report, DataReport)
    assert report.rows("train") == 3 and not report.skipped


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"dataset": None}, "no dataset given"),
        ({"template": "chatmll"}, "did you mean 'chatml'"),
        ({"cutoff_len": 0}, "cutoff_len"),
        ({"max_samples": 0}, "max_samples"),
        ({"val_size": -0.1}, "val_size"),
        ({"val_size": 2.5}, "val_size"),
        ({"val_size": 0.1, "eval_dataset": "a"}, "both set"),
    ],
)
def test_bad_options_fail_before_reading(tmp_path: Path, options: dict, words: str) -> None:
    args = DataArguments(**{"dataset": "a", "dataset_dir": str(tmp_path), **options})
    with pytest.raises(ConfigError, match=words):
        check_datasets(args)  # tmp_path has no registry: the option check comes first


def test_val_size_larger_than_the_data(dataset_dir) -> None:
    folder = dataset_dir({"a.json": _rows(3)}, ALPACA)
    with pytest.raises(DataError, match="holds out 3 of 3"):
        check_datasets(_args(folder, "a", val_size=3))


def test_hub_dataset_offline_gives_one_clear_error(dataset_dir) -> None:
    folder = dataset_dir({}, {"hub": {"hf_hub_url": "llamafactory/alpaca_gpt4_en"}})
    with pytest.raises(DataError) as caught:
        check_datasets(_args(folder, "hub"))
    message = str(caught.value)
    assert "dataset 'hub'" in message and "llamafactory/alpaca_gpt4_en" in message
    assert "file_name" in message and "\n" not in message


def test_shipped_demo_datasets_load() -> None:
    if not (REPO_DATA / "demo_alpaca.json").is_file() or not (REPO_DATA / "demo_sharegpt.json").is_file():
        pytest.skip("data/demo_alpaca.json or data/demo_sharegpt.json not generated yet (python -m llmtune.data.demo)")
    report = check_datasets(DataArguments(dataset="demo_alpaca,demo_sharegpt", dataset_dir=str(REPO_DATA)))
    assert all(d.rows > 100 for d in report.datasets)
    assert not report.skipped


def test_llamafactory_demo_files_load_with_their_registry(llamafactory_data: Path) -> None:
    loaded = load_conversations(DataArguments(dataset="alpaca_en_demo,identity", dataset_dir=str(llamafactory_data)))
    counts = {d.name: d.rows for d in loaded.report.datasets}
    raw = {name: len(json.loads((llamafactory_data / f"{name}.json").read_text())) for name in counts}
    assert counts == raw  # every row of LLaMA-Factory's own demo data is valid
    first = loaded.train[0]["messages"]
    assert first[0]["content"] == "Describe a process of making crepes."
    assert "{{name}}" in loaded.train[-1]["messages"][1]["content"]  # identity placeholders kept verbatim
