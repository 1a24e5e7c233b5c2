"""Property tests for the dataset loaders: any dataset folder loads or raises one line of llmtune's errors.

Random dataset files (alpaca and sharegpt rows of any shape, as a JSON array, JSON lines or CSV,
sometimes truncated or holding bytes that are not UTF-8) and random ``dataset_info.json`` entries
go through ``check_datasets`` and ``get_dataset``. Either they load, and then every tokenised row
is a well-formed training example, or they raise an ``LlmtuneError`` whose message is one line.
With ``skip_bad_rows: true`` a file mixing good and bad rows gives exactly the examples of its
good rows.

The number of examples is bounded so the file runs in seconds in CI. ``HYPOTHESIS_PROFILE=ci``
(and the default) keep that bound; ``HYPOTHESIS_PROFILE=thorough`` runs 20 times as many.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from llmtune.data import TEMPLATES, check_datasets, get_dataset
from llmtune.data.processor import IGNORE_INDEX
from llmtune.errors import LlmtuneError
from llmtune.hparams.data_args import DataArguments

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True, print_blob=True)
settings.register_profile("thorough", parent=settings.get_profile("default"))
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
settings.load_profile(PROFILE)
SCALE = 20 if PROFILE == "thorough" else 1

ROLES = ["prompt", "query", "response", "system", "history", "messages", "tools", "images", "kto_tag", "chosen"]
COLUMN_NAMES = ["instruction", "input", "output", "system", "history", "conversations", "messages", "text"]
TAG_KEYS = ["role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"]
SPEAKERS = ["human", "gpt", "system", "observation", "function_call", "user", "assistant", "tool", "from", "role"]
BAD_BYTES = [b"\xff", b"\xfe\xff", b"\xc3", b"\xed\xa0\x80", b"\x80abc", b"\x00"]


class Tokenizers(dict):
    """The tiny tokenizers by fixture name, with a short repr for Hypothesis' falsifying examples."""

    def __repr__(self) -> str:
        return f"Tokenizers({', '.join(self)})"


@pytest.fixture(scope="module")
def tokenizers(tokenizer, chat_tokenizer, plain_tokenizer) -> Tokenizers:
    return Tokenizers(tokenizer=tokenizer, chat_tokenizer=chat_tokenizer, plain_tokenizer=plain_tokenizer)


def one_line_error(error: LlmtuneError) -> None:
    message = str(error)
    assert message.strip(), f"{type(error).__name__} with an empty message"
    assert len(message.splitlines()) == 1, f"{type(error).__name__} message spans lines: {message!r}"


# ---------------------------------------------------------------------------------------------
# Rows of every shape

TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["", " ", "\n\t", "Hello", "{content}", "{{name}}", "</s>", "<s>", "<|im_end|>", "Human:", "\ud800"]
    ),
)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT)
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=5
)
TEXT_OR_ANY = st.one_of(TEXT, TEXT, TEXT, JSON_VALUES)
GOOD_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=16).filter(str.strip)


def with_extra_keys(row: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(lambda value, extra: {**extra, **value}, row, st.dictionaries(TEXT, JSON_VALUES, max_size=2))


def good_alpaca_rows() -> st.SearchStrategy:
    pairs = st.lists(st.tuples(GOOD_TEXT, GOOD_TEXT).map(list), max_size=2)
    return st.fixed_dictionaries(
        {"instruction": GOOD_TEXT, "output": GOOD_TEXT},
        optional={"input": st.one_of(st.just(""), GOOD_TEXT), "system": GOOD_TEXT, "history": pairs},
    )


def good_sharegpt_rows() -> st.SearchStrategy:
    def conversation(system: str | None, texts: list[tuple[str, str]]) -> dict:
        turns = [{"from": "system", "value": system}] if system else []
        for user, assistant in texts:
            turns += [{"from": "human", "value": user}, {"from": "gpt", "value": assistant}]
        return {"conversations": turns}

    return st.builds(
        conversation, st.none() | GOOD_TEXT, st.lists(st.tuples(GOOD_TEXT, GOOD_TEXT), min_size=1, max_size=3)
    )


def alpaca_ish_rows() -> st.SearchStrategy:
    history = st.one_of(st.lists(st.lists(TEXT_OR_ANY, max_size=3), max_size=2), JSON_VALUES)
    row = st.fixed_dictionaries(
        {},
        optional={
            "instruction": TEXT_OR_ANY,
            "input": TEXT_OR_ANY,
            "output": TEXT_OR_ANY,
            "system": TEXT_OR_ANY,
            "history": history,
        },
    )
    return with_extra_keys(row)


def sharegpt_ish_rows() -> st.SearchStrategy:
    role = st.one_of(st.sampled_from(SPEAKERS), TEXT, JSON_SCALARS)
    turn = st.one_of(
        st.fixed_dictionaries({}, optional={"from": role, "value": TEXT_OR_ANY, "role": role, "content": TEXT_OR_ANY}),
        JSON_VALUES,
    )
    turns = st.one_of(st.lists(turn, max_size=4), JSON_VALUES)
    row = st.fixed_dictionaries({}, optional={"conversations": turns, "messages": turns, "system": TEXT_OR_ANY})
    return with_extra_keys(row)


ANY_ROW = st.one_of(good_alpaca_rows(), good_sharegpt_rows(), alpaca_ish_rows(), sharegpt_ish_rows(), JSON_VALUES)


# ---------------------------------------------------------------------------------------------
# Files: rows written as JSON, JSON lines or CSV, then maybe damaged


def to_bytes(text: str) -> bytes:
    # A lone surrogate becomes the three bytes CESU-8 uses for it: not UTF-8, as in a badly saved file.
    return text.encode("utf-8", errors="surrogatepass")


def serialise(rows: list, kind: str) -> bytes:
    """``rows`` as the bytes of a ``.json`` (array), ``.jsonl`` or ``.csv`` file."""
    if kind == "json":
        return to_bytes(json.dumps(rows, indent=2, ensure_ascii=False))
    if kind == "jsonl":
        return to_bytes("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    header: dict[str, None] = {}
    for row in rows:
        header.update(dict.fromkeys(row if isinstance(row, dict) else ["value"]))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        cells = row if isinstance(row, dict) else {"value": row}
        writer.writerow(["" if key not in cells else cell_text(cells[key]) for key in header])
    return to_bytes(buffer.getvalue())


def cell_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@st.composite
def damaged(draw, content: bytes) -> bytes:
    """``content`` unchanged, truncated, with bad bytes inserted, with a BOM, or replaced by noise."""
    how = draw(st.sampled_from(["none"] * 6 + ["truncate", "bad_bytes", "bom", "noise"]))
    cut = draw(st.integers(0, max(len(content) - 1, 0)))
    if how == "truncate":
        return content[:cut]
    if how == "bad_bytes":
        return content[:cut] + draw(st.sampled_from(BAD_BYTES)) + content[cut:]
    if how == "bom":
        return b"\xef\xbb\xbf" + content
    if how == "noise":
        return draw(st.binary(max_size=40))
    return content


@st.composite
def data_files(draw, sharegpt: bool) -> tuple[str, bytes]:
    """``(suffix, bytes)`` of one file of a ``sharegpt`` (or alpaca) dataset: rows of its formatting or any shape."""
    kind = draw(st.sampled_from(["json", "jsonl", "csv"]))
    good = good_sharegpt_rows() if sharegpt else good_alpaca_rows()
    rows = draw(st.lists(st.one_of(good, good, ANY_ROW), min_size=1, max_size=5))
    content = draw(damaged(serialise(rows, kind)))
    suffix = draw(st.sampled_from([kind, kind, kind, "json", "txt", "JSON"]))
    return suffix, content


# ---------------------------------------------------------------------------------------------
# Registry entries and data options


def registry_entries(file_name: str) -> st.SearchStrategy:
    """Entries for ``file_name`` with any ``formatting``, ``columns``, ``tags`` and ``ranking``."""
    columns = st.dictionaries(st.sampled_from(ROLES) | TEXT, st.sampled_from(COLUMN_NAMES) | JSON_SCALARS, max_size=3)
    tags = st.dictionaries(st.sampled_from(TAG_KEYS) | TEXT, st.sampled_from(SPEAKERS) | JSON_SCALARS, max_size=3)
    return st.fixed_dictionaries(
        {"file_name": st.just(file_name) | st.sampled_from(["", ".", "missing.json"]) | JSON_SCALARS},
        optional={
            "formatting": st.sampled_from(["alpaca", "sharegpt"]) | JSON_VALUES,
            "columns": columns | JSON_VALUES,
            "tags": tags | JSON_VALUES,
            "ranking": JSON_SCALARS,
        },
    )


def usual_options() -> st.SearchStrategy:
    """Keyword arguments of ``DataArguments`` besides the names, all in range."""
    return st.fixed_dictionaries(
        {
            "template": st.sampled_from(sorted(TEMPLATES)),
            "cutoff_len": st.integers(1, 64) | st.just(1024),
            "max_samples": st.none() | st.integers(1, 4),
            "val_size": st.sampled_from([0.0, 0.0, 0.5, 1]),
            "train_on_prompt": st.booleans(),
            "mask_history": st.booleans(),
            "skip_bad_rows": st.booleans(),
            "default_system": st.none() | TEXT,
        }
    )


def any_options() -> st.SearchStrategy:
    """Like ``usual_options``, with sizes out of range too."""
    out_of_range = {
        "cutoff_len": st.integers(-2, 64),
        "max_samples": st.none() | st.integers(-2, 4),
        "val_size": st.sampled_from([0.0, 0.5, 0.99, 1, 2, 1.5, -0.1, math.inf]),
    }
    return st.builds(
        lambda usual, odd: {**usual, **odd}, usual_options(), st.fixed_dictionaries({}, optional=out_of_range)
    )


def write_folder(root: Path, files: dict[str, bytes], registry: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (root / name).write_bytes(content)
    (root / "dataset_info.json").write_bytes(registry)
    return root


def check_examples(prepared, cutoff_len: int) -> None:
    """Every tokenised row is a training example: labels aligned with ids, at least one trained token."""
    for split in (prepared.train, prepared.eval):
        if split is None:
            continue
        for row in split:
            ids, labels = row["input_ids"], row["labels"]
            assert 0 < len(ids) == len(labels) <= cutoff_len
            assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels, strict=True))
            assert any(label != IGNORE_INDEX for label in labels)


def load_or_refuse(data_args: DataArguments, tokenizer) -> None:
    """``check_datasets`` and ``get_dataset`` agree: both load, or both raise the same one-line error."""
    try:
        report = check_datasets(data_args)
    except LlmtuneError as error:
        event(f"refused: {type(error).__name__}")
        one_line_error(error)
        try:
            get_dataset(data_args, tokenizer)
        except LlmtuneError as again:
            assert (type(again), str(again)) == (type(error), str(error))
        else:
            raise AssertionError(f"check_datasets raised {error!r} but get_dataset loaded") from None
        return
    try:
        prepared = get_dataset(data_args, tokenizer)
    except LlmtuneError as error:  # tokenising can still refuse: a template the tokenizer lacks, all rows cut
        event(f"refused after check: {type(error).__name__}")
        one_line_error(error)
        return
    event("loaded")
    assert prepared.report.rows("train") == report.rows("train") > 0
    assert prepared.report.train_rows == len(prepared.train) > 0
    check_examples(prepared, data_args.cutoff_len)


# ---------------------------------------------------------------------------------------------
# The properties


def dataset_files() -> st.SearchStrategy:
    """``(sharegpt, (suffix, bytes))``: the formatting the registry declares, and one file."""
    return st.booleans().flatmap(lambda sharegpt: st.tuples(st.just(sharegpt), data_files(sharegpt)))


PLAIN = {"template": "default", "cutoff_len": 1024, "max_samples": None, "val_size": 0.0}


@settings(max_examples=250 * SCALE)
@given(
    dataset=dataset_files(),
    options=usual_options(),
    which=st.sampled_from(["tokenizer", "chat_tokenizer", "plain_tokenizer"]),
)
@example(  # a quoted "\r" in a CSV cell: the csv module counts it as a line end, the line map did not (IndexError)
    dataset=(False, ("csv", b'instruction,output\r\n0,0\r\n0,"0\r"\r\n0,"0\r"\r\n0,0\r\n')),
    options=PLAIN,
    which="tokenizer",
)
def test_any_dataset_file_loads_or_raises_one_line(tmp_path_factory, tokenizers, dataset, options, which) -> None:
    sharegpt, (suffix, content) = dataset
    entry = {"file_name": f"rows.{suffix}", "formatting": "sharegpt" if sharegpt else "alpaca"}
    registry = to_bytes(json.dumps({"d": entry}))
    folder = write_folder(tmp_path_factory.mktemp("rows"), {f"rows.{suffix}": content}, registry)
    load_or_refuse(DataArguments(dataset="d", dataset_dir=str(folder), **options), tokenizers[which])


@settings(max_examples=150 * SCALE)
@given(rows=st.lists(ANY_ROW, min_size=1, max_size=4), entry=registry_entries("rows.json"), options=any_options())
# Each once raised from inside Python: TypeError (unhashable formatting), OverflowError (int(inf)),
# TypeError from the tokenizer (a lone surrogate in default_system).
@example(
    rows=[{"instruction": "Hi", "output": "there"}], entry={"file_name": "rows.json", "formatting": [None]}, options={}
)
@example(
    rows=[{"instruction": "Hi", "output": "there"}], entry={"file_name": "rows.json"}, options={"val_size": math.inf}
)
@example(
    rows=[{"instruction": "Hi", "output": "there"}],
    entry={"file_name": "rows.json"},
    options={"default_system": "\ud800"},
)
def test_any_registry_entry_and_options_load_or_raise_one_line(
    tmp_path_factory, tokenizers, rows, entry, options
) -> None:
    registry = to_bytes(json.dumps({"d": entry}))
    folder = write_folder(tmp_path_factory.mktemp("entry"), {"rows.json": serialise(rows, "json")}, registry)
    load_or_refuse(DataArguments(dataset="d", dataset_dir=str(folder), **options), tokenizers["tokenizer"])


@settings(max_examples=80 * SCALE)
@given(
    registry=st.one_of(
        st.dictionaries(TEXT, JSON_VALUES, max_size=3).map(lambda r: to_bytes(json.dumps(r))),
        JSON_VALUES.map(lambda r: to_bytes(json.dumps(r))),
        st.binary(max_size=40),
        st.sampled_from([b"", b"{", b'{"d": {"file_name": "rows.json"}', b"\xff\xfe{}"]),
    ),
    names=st.one_of(st.just("d"), TEXT, st.just("d, d"), st.just(",")),
    eval_names=st.none() | st.just("d") | TEXT,
)
# A dataset name holding a line break once made a two-line message ("entry '\n\t' must be ...", "available: \n\t").
@example(registry=b'{"\\n\\t": null}', names="d", eval_names=None)
@example(registry=b'{"\\n\\t": {"file_name": "rows.json"}}', names="d", eval_names=None)
def test_any_registry_loads_or_raises_one_line(tmp_path_factory, tokenizers, registry, names, eval_names) -> None:
    rows = [{"instruction": "Hello", "output": "world"}, {"instruction": "Hi", "output": "there"}]
    folder = write_folder(tmp_path_factory.mktemp("registry"), {"rows.json": serialise(rows, "json")}, registry)
    data_args = DataArguments(dataset=names, eval_dataset=eval_names, dataset_dir=str(folder))
    load_or_refuse(data_args, tokenizers["tokenizer"])


# Rows that every loader must refuse, one per way of being wrong; each may also hold bad bytes.
BAD_ALPACA = st.one_of(
    JSON_SCALARS,
    st.lists(JSON_SCALARS, max_size=2),
    st.fixed_dictionaries({"instruction": GOOD_TEXT}),  # no output
    st.fixed_dictionaries({"instruction": st.sampled_from(["", "  "]), "output": GOOD_TEXT}),
    st.fixed_dictionaries({"instruction": GOOD_TEXT, "output": st.sampled_from(["", "\n"])}),
    st.fixed_dictionaries({"instruction": GOOD_TEXT, "output": st.integers() | st.booleans() | st.lists(TEXT)}),
    st.fixed_dictionaries({"instruction": GOOD_TEXT, "output": GOOD_TEXT, "history": st.sampled_from([1, "x", [[1]]])}),
    st.fixed_dictionaries({"conversations": st.just([])}),  # a sharegpt row in an alpaca file
)
BAD_SHAREGPT = st.one_of(
    JSON_SCALARS,
    st.fixed_dictionaries({"instruction": GOOD_TEXT, "output": GOOD_TEXT}),
    st.fixed_dictionaries({"conversations": st.sampled_from([[], "text", 3, [{"from": "system", "value": "s"}]])}),
    st.builds(lambda text: {"conversations": [{"from": "human", "value": text}]}, GOOD_TEXT),  # no answer
    st.builds(lambda text: {"conversations": [{"from": "gpt", "value": text}]}, GOOD_TEXT),  # answer first
    st.builds(
        lambda text: {"conversations": [{"from": "human", "value": text}, {"from": "bot", "value": text}]}, GOOD_TEXT
    ),
    st.builds(
        lambda text: {"conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": " "}]}, GOOD_TEXT
    ),
    st.builds(
        lambda text: {"conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": 7}]}, GOOD_TEXT
    ),
)
BAD_BYTE_MARK = "\x00BAD-BYTES\x00"  # replaced, after serialising, by bytes that are not UTF-8


@st.composite
def mixed_rows(draw) -> tuple[bool, list, list[bool]]:
    """``(sharegpt, rows, flags)``: good and bad rows interleaved; ``flags`` says which are good."""
    sharegpt = draw(st.booleans())
    good = good_sharegpt_rows() if sharegpt else good_alpaca_rows()
    with_bad_bytes = good.map(lambda row: {**row, "note": BAD_BYTE_MARK})  # good but for its bytes
    bad = st.one_of(BAD_SHAREGPT if sharegpt else BAD_ALPACA, with_bad_bytes)
    flags = draw(st.lists(st.booleans(), min_size=1, max_size=8).filter(any))
    return sharegpt, [draw(good if flag else bad) for flag in flags], flags


def write_rows(root: Path, rows: list, kind: str, sharegpt: bool) -> Path:
    content = serialise(rows, kind).replace(to_bytes(json.dumps(BAD_BYTE_MARK)[1:-1]), b"\xff\xfe")
    entry = {"file_name": f"rows.{kind}", **({"formatting": "sharegpt"} if sharegpt else {})}
    return write_folder(root, {f"rows.{kind}": content}, to_bytes(json.dumps({"d": entry})))


@settings(max_examples=100 * SCALE)
@given(
    case=mixed_rows(),
    kind=st.sampled_from(["json", "jsonl"]),
    template=st.sampled_from(["default", "chatml", "llama3"]),
)
@example(  # a .jsonl file whose first row is an array was read as a JSON array, then refused whole
    case=(
        False,
        [[], {"instruction": "Hi", "output": "there"}, {"instruction": "a", "output": "b"}],
        [False, True, True],
    ),
    kind="jsonl",
    template="default",
)
@example(
    case=(
        False,
        [{"instruction": "Hi", "output": "there"}, {"instruction": "x", "output": BAD_BYTE_MARK}],
        [True, False],
    ),
    kind="json",
    template="default",
)
def test_skip_bad_rows_keeps_exactly_the_good_rows(tmp_path_factory, tokenizers, case, kind, template) -> None:
    sharegpt, rows, flags = case
    tokenizer = tokenizers["tokenizer"]
    good_rows = [row for row, flag in zip(rows, flags, strict=True) if flag]
    options = {"dataset": "d", "template": template, "cutoff_len": 1024, "skip_bad_rows": True}
    mixed = write_rows(tmp_path_factory.mktemp("mixed"), rows, kind, sharegpt)
    clean = write_rows(tmp_path_factory.mktemp("clean"), good_rows, kind, sharegpt)

    report = check_datasets(DataArguments(dataset_dir=str(mixed), **options))
    assert report.rows("train") == len(good_rows)
    assert sum(report.skipped.values()) == len(rows) - len(good_rows)
    loaded = get_dataset(DataArguments(dataset_dir=str(mixed), **options), tokenizer)
    expected = get_dataset(DataArguments(dataset_dir=str(clean), **options), tokenizer)
    assert loaded.train.to_dict() == expected.train.to_dict()
    check_examples(loaded, 1024)
