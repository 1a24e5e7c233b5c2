"""Every bad input gives one line naming the file, the line, the row and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmtune.data import check_datasets
from llmtune.errors import DataError, DataFileNotFoundError
from llmtune.hparams.data_args import DataArguments

ALPACA = {"a": {"file_name": "a.json"}}
SHAREGPT = {"s": {"file_name": "s.json", "formatting": "sharegpt"}}


def _args(folder: Path, dataset: str = "a", **options) -> DataArguments:
    return DataArguments(dataset=dataset, dataset_dir=str(folder), **options)


def _rows(count: int) -> list[dict]:
    return [{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(count)]


def _pretty_line(row: int) -> int:
    """Start line of 1-based ``row`` in ``json.dumps(rows, indent=2)`` when each row has 3 keys."""
    return 2 + (row - 1) * 5


def _error(folder: Path, dataset: str = "a", **options) -> str:
    with pytest.raises(DataError) as caught:
        check_datasets(_args(folder, dataset, **options))
    message = str(caught.value)
    assert "\n" not in message
    return message


def _turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"from": role, "value": text} for role, text in pairs]


def test_malformed_json_reports_file_line_and_column(dataset_dir) -> None:
    text = '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n'
    message = _error(dataset_dir({"a.json": text}, ALPACA))
    assert "a.json:3:23: invalid JSON: Expecting ',' delimiter" in message


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[\n  {"instruction": "a", "output": "b"},\n]\n', ":3:1:"),  # trailing comma
        ('[\n  {"instruction": "a", "output": "b"}\n', ":2:"),  # array never closed
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c" "output": "d"}\n', ":2:21:"),  # JSON lines
    ],
)
def test_other_json_syntax_errors(dataset_dir, text: str, where: str) -> None:
    assert f"a.json{where}" in _error(dataset_dir({"a.json": text}, ALPACA))


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"instruction": "", "input": "", "output": "x"}, "empty 'instruction'"),
        ({"instruction": "   ", "input": "", "output": "x"}, "empty 'instruction'"),
        ({"instruction": "x", "input": "", "output": ""}, "empty 'output'"),
        ({"instruction": "x", "input": "", "output": None}, "empty 'output'"),
        ({"instruction": "x", "input": "", "output": 42}, "'output' is a number (42), expected text"),
        ({"instruction": ["x"], "input": "", "output": "y"}, "'instruction' is a list, expected text"),
        ({"instruction": "x", "input": {"k": 1}, "output": "y"}, "'input' is an object, expected text"),
    ],
)
def test_bad_alpaca_row_names_file_line_and_row(dataset_dir, row: dict, reason: str) -> None:
    rows = _rows(6)
    rows[4] = row  # row 5
    message = _error(dataset_dir({"a.json": rows}, ALPACA))
    assert f"a.json:{_pretty_line(5)}: row 5: {reason}" in message
    assert "skip_bad_rows" in message


def test_bad_history_is_a_wrong_type(dataset_dir) -> None:
    text = (
        '[\n{"instruction": "a", "output": "b"},\n{"instruction": "a", "output": "b", "history": ["not a pair"]}\n]\n'
    )
    message = _error(dataset_dir({"a.json": text}, ALPACA))
    assert "a.json:3: row 2: 'history' is a list, expected a list of [prompt, response] pairs" in message


def test_non_object_row(dataset_dir) -> None:
    text = '[\n  {"instruction": "a", "output": "b"},\n  "just text"\n]\n'
    assert "a.json:3: row 2: row is a string, expected a JSON object" in _error(dataset_dir({"a.json": text}, ALPACA))


def test_non_utf8_bytes_report_the_line_of_the_first_bad_byte(dataset_dir) -> None:
    raw = b'[\n  {"instruction": "ok", "output": "fine"},\n  {\n    "instruction": "ok",\n    "output": "caf\xe9"\n  }\n]\n'
    message = _error(dataset_dir({"a.json": raw}, ALPACA))
    assert "a.json:5: row 2:" in message and "UTF-8" in message


def test_non_utf8_row_is_skipped_and_counted(dataset_dir) -> None:
    raw = b'[\n{"instruction": "a", "output": "b"},\n{"instruction": "\xff", "output": "b"}\n]\n'
    report = check_datasets(_args(dataset_dir({"a.json": raw}, ALPACA), skip_bad_rows=True))
    assert report.datasets[0].rows == 1
    assert report.skipped == {"non-UTF-8 bytes": 1}


def test_csv_rows_count_lines_across_quoted_newlines(dataset_dir) -> None:
    text = 'instruction,input,output\n"two\nlines",,fine\nthird line,,\n'
    message = _error(dataset_dir({"c.csv": text}, {"c": {"file_name": "c.csv"}}), "c")
    assert "c.csv:4: row 2: empty 'output'" in message


def test_csv_row_with_extra_fields(dataset_dir) -> None:
    text = "instruction,input,output\na,,b\nc,,d,e\n"
    message = _error(dataset_dir({"c.csv": text}, {"c": {"file_name": "c.csv"}}), "c")
    assert "c.csv:3: row 2: has 4 fields but the header has 3" in message


def test_jsonl_rows_use_their_own_line(dataset_dir) -> None:
    rows = _rows(4)
    rows[2]["output"] = ""
    text = "\n".join(json.dumps(row) for row in rows) + "\n"
    message = _error(dataset_dir({"b.jsonl": text}, {"b": {"file_name": "b.jsonl"}}), "b")
    assert "b.jsonl:3: row 3: empty 'output'" in message


def test_parquet_rows_have_no_line_but_a_row_number(dataset_dir, tmp_path: Path) -> None:
    folder = dataset_dir({}, {"p": {"file_name": "p.parquet"}})
    pq.write_table(
        pa.Table.from_pylist([{"instruction": "a", "output": "b"}, {"instruction": "", "output": "b"}]),
        tmp_path / "p.parquet",
    )
    assert "p.parquet: row 2: empty 'instruction'" in _error(folder, "p")


def test_missing_file_names_dataset_and_path(dataset_dir) -> None:
    folder = dataset_dir({"alpaca.json": _rows(1)}, {"a": {"file_name": "alpacca.json"}})
    with pytest.raises(DataFileNotFoundError) as caught:
        check_datasets(_args(folder))
    message = str(caught.value)
    assert "dataset 'a'" in message and "alpacca.json" in message and "does not exist" in message
    assert "did you mean 'alpaca.json'?" in message


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({"a.json": "  \n"}, "file is empty"),
        ({"a.json": "[]"}, "holds no rows"),
        ({"a.txt": "hello"}, "unsupported file type '.txt'"),
    ],
)
def test_unusable_files(dataset_dir, files: dict, words: str) -> None:
    name = next(iter(files))
    assert words in _error(dataset_dir(files, {"a": {"file_name": name}}))


def test_missing_declared_column_lists_columns_found(dataset_dir) -> None:
    entry = {"file_name": "a.json", "columns": {"prompt": "instruction", "response": "answer"}}
    message = _error(dataset_dir({"a.json": _rows(2)}, {"a": entry}))
    assert "column 'answer' (response)" in message and "a.json" in message
    assert "columns found: instruction, input, output" in message


def test_sharegpt_declared_on_alpaca_file_hints_the_formatting(dataset_dir) -> None:
    message = _error(dataset_dir({"s.json": _rows(2)}, SHAREGPT), "s")
    assert "column 'conversations' (messages)" in message
    assert "set formatting: alpaca" in message


def test_sharegpt_row_in_alpaca_dataset_is_mixed_format(dataset_dir) -> None:
    rows = _rows(3)
    rows[1] = {"conversations": _turns(("human", "a"), ("gpt", "b"))}
    message = _error(dataset_dir({"a.json": rows}, ALPACA))
    assert f"a.json:{_pretty_line(2)}: row 2: looks like a sharegpt row" in message


def test_alpaca_row_in_sharegpt_dataset_is_mixed_format(dataset_dir) -> None:
    rows = [{"conversations": _turns(("human", "a"), ("gpt", "b"))}, {"instruction": "a", "output": "b"}]
    text = "[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n"
    message = _error(dataset_dir({"s.json": text}, SHAREGPT), "s")
    assert "s.json:3: row 2: looks like an alpaca row (has 'instruction'" in message


def test_sharegpt_messages_with_other_tags_point_at_the_tags(dataset_dir) -> None:
    row = {"conversations": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    message = _error(dataset_dir({"s.json": [row]}, SHAREGPT), "s")
    assert "row 1: message 1 has no 'from' key" in message and "tags" in message


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        ((("gpt", "a"), ("human", "b")), "message 1 is 'gpt' where 'human' was expected"),
        ((("human", "a"), ("human", "b")), "message 2 is 'human' where 'gpt' was expected"),
        ((("human", "a"), ("gpt", "b"), ("human", "c")), "conversation ends with a 'human' turn"),
        ((("human", "a"), ("bot", "b")), "message 2 has unknown role 'bot'; allowed: 'human', 'gpt'"),
        (
            (("human", "a"), ("function_call", "{}")),
            "message 2 has role 'function_call'; tool-call turns are not supported",
        ),
        ((("human", "a"), ("gpt", "")), "message 2 ('gpt') is empty"),
        ((("human", ""), ("gpt", "b")), "message 1 ('human') is empty"),
        ((("human", "a"), ("gpt", 7)), "message 2 'value' is a number (7), expected text"),
    ],
)
def test_bad_sharegpt_conversation(dataset_dir, turns: tuple, reason: str) -> None:
    good = {"conversations": _turns(("human", "q"), ("gpt", "r"))}
    rows = [good, good, {"conversations": [{"from": r, "value": v} for r, v in turns]}]
    text = "[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n"
    message = _error(dataset_dir({"s.json": text}, SHAREGPT), "s")
    assert f"s.json:4: row 3: {reason}" in message


def test_first_bad_row_raises_and_counts_the_rest(dataset_dir) -> None:
    rows = _rows(6)
    rows[1]["output"] = ""
    rows[3]["instruction"] = 5
    rows[5]["output"] = ""
    message = _error(dataset_dir({"a.json": rows}, ALPACA))
    assert f"a.json:{_pretty_line(2)}: row 2: empty 'output'" in message
    assert "(and 2 more bad rows)" in message


def test_skip_bad_rows_counts_each_reason(dataset_dir) -> None:
    rows = _rows(7)
    rows[1]["output"] = ""
    rows[2]["output"] = "   "
    rows[3]["instruction"] = 5
    rows[5]["instruction"] = ""
    report = check_datasets(_args(dataset_dir({"a.json": rows}, ALPACA), skip_bad_rows=True))
    count = report.datasets[0]
    assert count.rows == 3
    assert count.skipped == {"empty response": 2, "wrong type": 1, "empty prompt": 1}
    assert f"a.json:{_pretty_line(2)}: row 2" in count.first_problem["empty response"]
    summary = report.summary()
    assert "skipped 4 bad rows (empty prompt 1, empty response 2, wrong type 1)" in summary


def test_skip_bad_rows_with_max_samples_keeps_that_many_good_rows(dataset_dir) -> None:
    rows = _rows(6)
    rows[0]["output"] = ""
    report = check_datasets(_args(dataset_dir({"a.json": rows}, ALPACA), skip_bad_rows=True, max_samples=3))
    assert report.datasets[0].rows == 3 and report.skipped == {"empty response": 1}


def test_all_rows_bad_stops_even_when_skipping(dataset_dir) -> None:
    rows = [{"instruction": "a", "output": ""}, {"instruction": "", "output": "b"}]
    message = _error(dataset_dir({"a.json": rows}, ALPACA), skip_bad_rows=True)
    assert "dataset 'a': all 2 rows are bad" in message
