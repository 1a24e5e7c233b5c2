"""Check each raw row and turn it into one unified conversation.

The unified form, whatever the file's formatting::

    {"system": str | None, "messages": [{"role": "user" | "assistant", "content": str}, ...]}

with turns alternating user, assistant and ending with an assistant turn. An alpaca row's
``history`` (``[[prompt, response], ...]``) becomes the earlier turns, and its ``input`` is
appended to the instruction after a newline, as LLaMA-Factory does. A row that cannot be
converted gives a ``RowProblem`` whose ``reason`` is a short key counted by the report.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmtune.data.readers import RawRow, RawTable, has_surrogate
from llmtune.data.registry import DEFAULT_COLUMNS, DatasetAttr

Conversation = dict  # {"system": str | None, "messages": [{"role", "content"}, ...]}

# Reason keys, counted per dataset when bad rows are skipped.
EMPTY_PROMPT = "empty prompt"
EMPTY_RESPONSE = "empty response"
WRONG_TYPE = "wrong type"
NOT_UTF8 = "non-UTF-8 bytes"
MIXED_FORMAT = "mixed format"
MISSING_COLUMN = "missing column"
BAD_ROLE_ORDER = "bad role order"
UNKNOWN_ROLE = "unknown role"
UNSUPPORTED_ROLE = "tool-call turn"
MALFORMED_ROW = "malformed row"


@dataclass
class RowProblem:
    """Why one row was rejected: ``reason`` is the counting key, ``message`` the one-line error."""

    reason: str
    message: str


class _BadRow(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def convert_row(row: RawRow, table: RawTable, attr: DatasetAttr) -> Conversation | RowProblem:
    """Validate ``row`` of ``table`` against ``attr`` and return its conversation or the problem."""
    if row.bad_byte_line is not None or has_surrogate(row.value):
        line = row.bad_byte_line or row.line
        where = f"{table.path}:{line}: row {row.index}" if line is not None else table.where(row)
        detail = "holds bytes that are not valid UTF-8; re-save the file as UTF-8"
        return RowProblem(NOT_UTF8, f"{where}: {detail}")
    try:
        if row.problem:
            raise _BadRow(MALFORMED_ROW, row.problem)
        if not isinstance(row.value, dict):
            raise _BadRow(WRONG_TYPE, f"row is {_describe(row.value)}, expected a JSON object")
        if attr.formatting == "sharegpt":
            return _from_sharegpt(row.value, attr)
        return _from_alpaca(row.value, attr)
    except _BadRow as bad:
        return RowProblem(bad.reason, f"{table.where(row)}: {bad.detail}")


def _from_alpaca(value: dict, attr: DatasetAttr) -> Conversation:
    columns = attr.columns
    prompt_col, response_col = columns["prompt"], columns["response"]
    _check_alpaca_shape(value, attr)
    prompt = _text(value, prompt_col)
    query = _text(value, columns.get("query"))
    response = _text(value, response_col)
    system = _text(value, columns.get("system")) or None
    messages = _history(value, columns.get("history"))
    if not (prompt.strip() or query.strip()):
        raise _BadRow(EMPTY_PROMPT, f"empty '{prompt_col}' (the prompt)")
    if not response.strip():
        raise _BadRow(EMPTY_RESPONSE, f"empty '{response_col}' (the response)")
    user = "\n".join(part for part in (prompt, query) if part)
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
    return {"system": system, "messages": messages}


def _check_alpaca_shape(value: dict, attr: DatasetAttr) -> None:
    for role in ("prompt", "response"):
        column = attr.columns[role]
        if column in value:
            continue
        sharegpt_keys = [key for key in DEFAULT_COLUMNS["sharegpt"].values() if key in value] + (
            ["messages"] if "messages" in value else []
        )
        if sharegpt_keys:
            raise _BadRow(
                MIXED_FORMAT,
                f"looks like a sharegpt row (has '{sharegpt_keys[0]}', no '{column}') in alpaca dataset '{attr.name}'",
            )
        raise _BadRow(MISSING_COLUMN, f"no '{column}' key (the {role} column); keys: {_keys(value)}")


def _history(value: dict, column: str | None) -> list[dict]:
    """Alpaca ``history``: ``[[prompt, response], ...]`` -> earlier user/assistant turns."""
    history = value.get(column) if column else None
    if history is None:
        return []
    if not isinstance(history, list) or not all(isinstance(pair, list | tuple) and len(pair) == 2 for pair in history):
        raise _BadRow(WRONG_TYPE, f"'{column}' is {_describe(history)}, expected a list of [prompt, response] pairs")
    messages = []
    for number, (prompt, response) in enumerate(history, start=1):
        for role, text in (("user", prompt), ("assistant", response)):
            if not isinstance(text, str):
                raise _BadRow(WRONG_TYPE, f"'{column}' turn {number} holds {_describe(text)}, expected text")
            if not text.strip():
                reason = EMPTY_PROMPT if role == "user" else EMPTY_RESPONSE
                raise _BadRow(
                    reason, f"'{column}' turn {number} has an empty {'prompt' if role == 'user' else 'response'}"
                )
            messages.append({"role": role, "content": text})
    return messages


def _from_sharegpt(value: dict, attr: DatasetAttr) -> Conversation:
    column = attr.columns["messages"]
    if column not in value:
        alpaca_keys = [key for key in ("instruction", "output", attr.columns.get("prompt")) if key and key in value]
        if alpaca_keys:
            raise _BadRow(
                MIXED_FORMAT,
                f"looks like an alpaca row (has '{alpaca_keys[0]}', no '{column}') in sharegpt dataset '{attr.name}'",
            )
        raise _BadRow(MISSING_COLUMN, f"no '{column}' key (the messages column); keys: {_keys(value)}")
    turns = value[column]
    if not isinstance(turns, list):
        raise _BadRow(WRONG_TYPE, f"'{column}' is {_describe(turns)}, expected a list of messages")
    if not turns:
        raise _BadRow(EMPTY_PROMPT, f"'{column}' is an empty conversation")
    system = _text(value, attr.columns.get("system")) or None
    tags = attr.tags
    messages: list[dict] = []
    for number, turn in enumerate(turns, start=1):
        role, content = _role_and_content(turn, number, tags)
        if role == tags["system_tag"] and number == 1:
            system = system or content or None
            continue
        messages.append(_message(role, content, number, len(messages), tags))
    if not messages:
        raise _BadRow(EMPTY_PROMPT, f"'{column}' holds only a system message")
    if messages[-1]["role"] != "assistant":
        raise _BadRow(
            BAD_ROLE_ORDER,
            f"conversation ends with a '{tags['user_tag']}' turn; it must end with '{tags['assistant_tag']}'",
        )
    return {"system": system, "messages": messages}


def _role_and_content(turn: object, number: int, tags: dict[str, str]) -> tuple[str, str]:
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    if not isinstance(turn, dict):
        raise _BadRow(WRONG_TYPE, f"message {number} is {_describe(turn)}, expected an object")
    if role_tag not in turn or content_tag not in turn:
        missing = role_tag if role_tag not in turn else content_tag
        raise _BadRow(
            MIXED_FORMAT,
            f"message {number} has no '{missing}' key (keys: {_keys(turn)}); set 'tags' for this dataset "
            "in dataset_info.json (e.g. role_tag: role, content_tag: content)",
        )
    role, content = turn[role_tag], turn[content_tag]
    if not isinstance(role, str):
        raise _BadRow(WRONG_TYPE, f"message {number} '{role_tag}' is {_describe(role)}, expected text")
    if not isinstance(content, str):
        raise _BadRow(WRONG_TYPE, f"message {number} '{content_tag}' is {_describe(content)}, expected text")
    return role, content


def _message(role: str, content: str, number: int, position: int, tags: dict[str, str]) -> dict:
    """One user/assistant message; ``position`` counts messages kept so far (0 = first user turn)."""
    user, assistant = tags["user_tag"], tags["assistant_tag"]
    if role in (tags["observation_tag"], tags["function_tag"]):
        raise _BadRow(UNSUPPORTED_ROLE, f"message {number} has role '{role}'; tool-call turns are not supported")
    if role not in (user, assistant):
        allowed = f"'{user}', '{assistant}' (and '{tags['system_tag']}' first)"
        raise _BadRow(UNKNOWN_ROLE, f"message {number} has unknown role '{role}'; allowed: {allowed}")
    expected = user if position % 2 == 0 else assistant
    if role != expected:
        raise _BadRow(
            BAD_ROLE_ORDER,
            f"message {number} is '{role}' where '{expected}' was expected; turns must alternate "
            f"'{user}', '{assistant}', starting with '{user}'",
        )
    if not content.strip():
        reason = EMPTY_PROMPT if role == user else EMPTY_RESPONSE
        raise _BadRow(reason, f"message {number} ('{role}') is empty")
    return {"role": "user" if role == user else "assistant", "content": content}


def _text(value: dict, column: str | None) -> str:
    """The text in ``column`` ('' when the column is unset, absent or null); non-text raises."""
    if not column or value.get(column) is None:
        return ""
    text = value[column]
    if not isinstance(text, str):
        raise _BadRow(WRONG_TYPE, f"'{column}' is {_describe(text)}, expected text")
    return text


def _describe(value: object) -> str:
    """``a number (42)``, ``a list``, ... for messages about wrong types."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    name = names.get(type(value), "null" if value is None else f"a {type(value).__name__}")
    if isinstance(value, bool | int | float):
        return f"{name} ({value!r})"
    return name


def _keys(value: dict) -> str:
    return ", ".join(map(str, value)) or "none"
