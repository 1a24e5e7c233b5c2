"""The demo datasets: deterministic, shipped as generated, well-formed, and every answer right."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from llmtune.data import demo


def solve(prompt: str) -> str:
    """Answer a demo prompt independently of the generator (``stem: argument`` or ``stem.`` + input)."""
    stem, argument = prompt.split(": ", 1)
    if stem == "Reverse the word":
        return argument[::-1]
    if stem == "Uppercase the word":
        return argument.upper()
    if stem == "Add the numbers":
        return str(sum(int(number) for number in argument.split(" + ")))
    if match := re.fullmatch(r"Repeat (\d) times", stem):
        return " ".join([argument] * int(match.group(1)))
    if stem == "Next letter after":
        return string.ascii_lowercase[string.ascii_lowercase.index(argument) + 1]
    if stem == "Sort the digits":
        return " ".join(sorted(argument.split()))
    if stem == "Count the letters":
        return str(len(argument))
    raise AssertionError(f"unknown task in prompt {prompt!r}")


def alpaca_prompt(row: dict) -> str:
    return f"{row['instruction'].rstrip('.')}: {row['input']}" if row["input"] else row["instruction"]


def exchanges() -> list[tuple[str, str]]:
    """Every (prompt, answer) pair of both sets, history included."""
    pairs = []
    for row in demo.alpaca_rows():
        pairs += [tuple(turn) for turn in row.get("history", [])]
        pairs.append((alpaca_prompt(row), row["output"]))
    for row in demo.sharegpt_rows():
        turns = row["conversations"]
        pairs += [(turns[i]["value"], turns[i + 1]["value"]) for i in range(0, len(turns), 2)]
    return pairs


def test_generation_is_deterministic_and_seeded() -> None:
    assert demo.alpaca_rows() == demo.alpaca_rows()
    assert demo.sharegpt_rows() == demo.sharegpt_rows()
    assert demo.alpaca_rows(seed=7) != demo.alpaca_rows()


@pytest.mark.parametrize(
    ("name", "rows"), [(demo.ALPACA_FILE, demo.alpaca_rows), (demo.SHAREGPT_FILE, demo.sharegpt_rows)]
)
def test_shipped_files_equal_a_fresh_generation(name: str, rows) -> None:
    shipped = demo.default_data_dir() / name
    assert shipped.read_text(encoding="utf-8") == demo.to_json(rows()), "regenerate with python -m llmtune.data.demo"


def test_command_line_writes_both_files(tmp_path: Path) -> None:
    demo.main(["--out", str(tmp_path)])
    for name in (demo.ALPACA_FILE, demo.SHAREGPT_FILE):
        assert (tmp_path / name).read_bytes() == (demo.default_data_dir() / name).read_bytes()


def test_alpaca_rows_are_well_formed() -> None:
    rows = demo.alpaca_rows()
    assert len(rows) == demo.ALPACA_ROWS
    for row in rows:
        assert set(row) <= {"instruction", "input", "output", "history"}
        assert row["instruction"] and row["output"] and isinstance(row["input"], str)
        for turn in row.get("history", []):
            assert len(turn) == 2 and all(isinstance(text, str) and text for text in turn)
    assert sum(bool(row["input"]) for row in rows) > len(rows) // 5
    assert sum("history" in row for row in rows) > len(rows) // 20


def test_sharegpt_rows_are_well_formed() -> None:
    rows = demo.sharegpt_rows()
    assert len(rows) == demo.SHAREGPT_ROWS
    for row in rows:
        assert set(row) <= {"conversations", "system"}
        turns = row["conversations"]
        assert turns and len(turns) % 2 == 0
        assert [turn["from"] for turn in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert all(set(turn) == {"from", "value"} and turn["value"] for turn in turns)
    assert sum(len(row["conversations"]) > 2 for row in rows) > len(rows) // 5
    assert sum("system" in row for row in rows) > len(rows) // 10


def test_every_answer_is_correct_and_short() -> None:
    pairs = exchanges()
    assert len(pairs) > 800
    for prompt, answer in pairs:
        assert answer == solve(prompt), prompt
        assert len(prompt) <= 40 and len(answer) <= 30


def test_every_task_appears_in_both_sets() -> None:
    alpaca_stems = {alpaca_prompt(row).split(":")[0] for row in demo.alpaca_rows()}
    sharegpt_stems = {turn["value"].split(":")[0] for row in demo.sharegpt_rows() for turn in row["conversations"][::2]}
    assert len({re.sub(r"\d", "N", stem) for stem in alpaca_stems}) == len(demo.TASKS)
    assert len({re.sub(r"\d", "N", stem) for stem in sharegpt_stems}) == len(demo.TASKS)


def test_demo_texts_cover_both_sets() -> None:
    texts = demo.demo_texts()
    assert all(texts)
    alpaca, sharegpt = demo.alpaca_rows(), demo.sharegpt_rows()
    expected = {row["output"] for row in alpaca} | {row["instruction"] for row in alpaca}
    expected |= {turn["value"] for row in sharegpt for turn in row["conversations"]} | {demo.SYSTEM_PROMPT}
    assert expected <= set(texts)
