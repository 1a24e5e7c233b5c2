"""Read local dataset files into rows that remember where they came from.

Every reader returns a ``RawTable``: the rows of one file, each with its 1-based row number
and the 1-based line where it starts (``None`` for Parquet, which has no lines), so a problem
can be reported as ``file.json:17: row 5: ...``. Bytes that are not UTF-8 do not stop reading:
they are kept as lone surrogates (``errors="surrogateescape"``) and the row that holds them is
reported with the line of the first bad byte.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmtune.errors import DataError, DataFileNotFoundError

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
_SURROGATE = re.compile("[\ud800-\udfff]")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


@dataclass
class RawRow:
    """One row as read: ``index`` is 1-based within its file, ``line`` where the row starts.

    ``bad_byte_line`` is the line of the first byte that is not UTF-8 inside the row (None when
    the row is clean); ``problem`` is set when the reader already knows the row is malformed.
    """

    index: int
    line: int | None
    value: object
    bad_byte_line: int | None = None
    problem: str | None = None


@dataclass
class RawTable:
    """The rows of one file (or one hub split) and the column names found in them."""

    path: str
    rows: list[RawRow]
    columns: list[str] = field(default_factory=list)

    def where(self, row: RawRow) -> str:
        """``file.json:17: row 5`` (or ``file.parquet: row 5`` when there are no lines)."""
        line = f":{row.line}" if row.line is not None else ""
        return f"{self.path}{line}: row {row.index}"


def list_data_files(path: Path) -> list[Path]:
    """The file itself, or the supported files inside a folder (sorted, hidden files skipped)."""
    if not path.exists():
        raise DataFileNotFoundError(f"dataset file '{path}' does not exist")
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(SUFFIXES)}")
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    usable = [p for p in files if p.suffix.lower() in SUFFIXES]
    if not usable:
        found = ", ".join(p.name for p in files[:10]) or "nothing"
        raise DataError(f"{path}: folder holds no {', '.join(SUFFIXES)} files (found: {found})")
    return usable


def read_table(path: Path) -> RawTable:
    """Read one local file by its suffix (``.json``/``.jsonl``, ``.csv`` or ``.parquet``)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    if not text.strip():
        raise DataError(f"{path}: file is empty; expected rows of a dataset")
    table = _read_csv(path, text) if suffix == ".csv" else _read_json(path, text)
    table.columns = _columns_of(table.rows) if not table.columns else table.columns
    return table


def table_from_records(source: str, records: list[dict], columns: list[str]) -> RawTable:
    """Wrap rows that have no line numbers (a hub split) as a ``RawTable``."""
    rows = [RawRow(index=i, line=None, value=record) for i, record in enumerate(records, start=1)]
    return RawTable(path=source, rows=rows, columns=list(columns))


class _Lines:
    """Map a character offset in ``text`` to its 1-based line number."""

    def __init__(self, text: str):
        # The line ends the csv module counts (a lone "\r" too), so CSV record lines map to offsets.
        self.starts = [0] + [match.end() for match in re.finditer("\r\n|\r|\n", text)]

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset)

    def span(self, first_line: int, last_line: int, text_length: int) -> tuple[int, int]:
        """Offsets from the start of ``first_line`` to the end of ``last_line``."""
        end = self.starts[last_line] if last_line < len(self.starts) else text_length
        return self.starts[first_line - 1], end


def _bad_byte_line(text: str, start: int, end: int, lines: _Lines) -> int | None:
    match = _SURROGATE.search(text, start, end)
    return lines.line_of(match.start()) if match else None


def _read_json(path: Path, text: str) -> RawTable:
    """A JSON array of rows, or a stream of JSON values (JSON lines), with row start lines."""
    lines = _Lines(text)
    rows = []
    for index, (start, end, value) in enumerate(_json_values(path, text, lines), start=1):
        rows.append(RawRow(index, lines.line_of(start), value, _bad_byte_line(text, start, end, lines)))
    if not rows:
        raise DataError(f"{path}: holds no rows (an empty JSON array)")
    return RawTable(path=str(path), rows=rows)


def _json_values(path: Path, text: str, lines: _Lines) -> Iterator[tuple[int, int, object]]:
    """Yield ``(start, end, value)`` for each row, raising ``file:line:col`` on bad JSON."""
    decoder = json.JSONDecoder()

    def fail(message: str, offset: int) -> DataError:
        line = lines.line_of(offset)
        column = offset - lines.starts[line - 1] + 1
        return DataError(f"{path}:{line}:{column}: invalid JSON: {message}")

    def decode(offset: int) -> tuple[object, int]:
        try:
            return decoder.raw_decode(text, offset)
        except json.JSONDecodeError as error:
            raise fail(error.msg, error.pos) from None

    pos = _WHITESPACE.match(text, 0).end()
    if text[pos] != "[" or _array_row_first(path, text, pos, decoder):  # JSON lines: values separated by whitespace
        while pos < len(text):
            value, end = decode(pos)
            yield pos, end, value
            pos = _WHITESPACE.match(text, end).end()
        return
    pos = _WHITESPACE.match(text, pos + 1).end()
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            value, end = decode(pos)
            yield pos, end, value
            pos = _WHITESPACE.match(text, end).end()
            if text.startswith(",", pos):
                pos = _WHITESPACE.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos += 1
                break
            elif pos >= len(text):
                raise fail("the array is not closed (missing ']')", len(text) - 1)
            else:
                raise fail("Expecting ',' delimiter", pos)
    pos = _WHITESPACE.match(text, pos).end()
    if pos < len(text):
        raise fail("extra data after the closing ']'", pos)


def _array_row_first(path: Path, text: str, pos: int, decoder: json.JSONDecoder) -> bool:
    """Whether a ``.jsonl`` file that starts with ``[`` is JSON lines whose first row is an array.

    It is when more values follow the first one; a ``.jsonl`` file holding one JSON array is read as that array.
    """
    if path.suffix.lower() != ".jsonl":
        return False
    try:
        _, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError:
        return False
    return _WHITESPACE.match(text, end).end() < len(text)


def _read_csv(path: Path, text: str) -> RawTable:
    """A CSV file with a header line; each record's start line is tracked across quoted newlines."""
    lines = _Lines(text)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[RawRow] = []
    try:
        header = next(reader)
        while True:
            start_line = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            if not record:
                continue
            start, end = lines.span(start_line, reader.line_num, len(text))
            row = RawRow(len(rows) + 1, start_line, dict(zip(header, record, strict=False)))
            row.bad_byte_line = _bad_byte_line(text, start, end, lines)
            if len(record) != len(header):
                row.problem = f"has {len(record)} fields but the header has {len(header)}"
            rows.append(row)
    except csv.Error as error:
        raise DataError(f"{path}:{reader.line_num}: invalid CSV: {error}") from None
    if has_surrogate(header):
        raise DataError(f"{path}:1: the header line holds bytes that are not UTF-8")
    if not rows:
        raise DataError(f"{path}: holds a header but no rows")
    return RawTable(path=str(path), rows=rows, columns=header)


def _read_parquet(path: Path) -> RawTable:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: not a readable Parquet file ({type(error).__name__}: {error})") from None
    records = table.to_pylist()
    if not records:
        raise DataError(f"{path}: holds no rows")
    return table_from_records(str(path), records, table.column_names)


def _columns_of(rows: list[RawRow]) -> list[str]:
    """Keys of the object rows, in order of first appearance."""
    seen: dict[str, None] = {}
    for row in rows:
        if isinstance(row.value, dict):
            seen.update(dict.fromkeys(row.value))
    return list(seen)


def has_surrogate(value: object) -> bool:
    """True when any string in ``value`` (recursively) holds a lone surrogate: bytes that were not UTF-8."""
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_surrogate(v) for v in value)
    return False
