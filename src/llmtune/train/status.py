"""The run status file: ``output_dir/run_status.json``, written by the training process itself.

A run started from the web UI is its own process; the UI only reads files and signals the pid.
This file tells any reader (a reloaded page, a second UI, a script) what the run is doing:

``{"state": "running" | "finished" | "interrupted" | "failed", "pid", "command", "started",
"ended", "error": [last lines]}``

``running`` is written once ``output_dir`` is prepared (writing earlier would make a folder that
``check_output_dir`` must find empty non-empty); the end state is written when :func:`run_sft`
returns or raises. A process killed outright leaves ``running`` behind: readers check the pid.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from llmtune.errors import LlmtuneError, TrainingInterrupted
from llmtune.launch import is_main_process

STATUS_FILE = "run_status.json"
STATES = ("running", "finished", "interrupted", "failed")
ERROR_LINES = 12  # how much of a traceback a reader is shown

_current: Path | None = None  # output_dir of the run this process is tracking
F = TypeVar("F", bound=Callable[..., Any])


def read_status(output_dir: str | Path) -> dict[str, Any] | None:
    """The status of the run in ``output_dir``, or None when there is none (or it is torn/unreadable)."""
    try:
        data = json.loads((Path(output_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("state") in STATES else None


def _write(path: Path, record: dict[str, Any]) -> None:
    # Write then rename, so a reader never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _command() -> list[str]:
    """This process's command line as a user would type it (``llmtune train ...``)."""
    return ["llmtune", *sys.argv[1:]]


def mark_running(output_dir: str | Path) -> None:
    """Record that this process is training into ``output_dir`` (rank 0 only)."""
    global _current
    if not is_main_process():
        return
    _current = Path(output_dir)
    record = {
        "state": "running",
        "pid": os.getpid(),
        "command": _command(),
        "started": time.time(),
        "ended": None,
        "error": [],
    }
    _write(_current / STATUS_FILE, record)


def mark_ended(state: str, error: BaseException | None = None) -> None:
    """Record the end state of the tracked run; nothing happens when no run is tracked."""
    global _current
    if _current is None:
        return
    path = _current / STATUS_FILE
    record = read_status(_current) or {"pid": os.getpid(), "command": _command(), "started": None}
    record.update(state=state, ended=time.time(), error=error_lines(error) if error is not None else [])
    try:
        _write(path, record)
    except OSError:  # the folder was removed under us: nothing left to report into
        pass
    _current = None


def error_lines(error: BaseException) -> list[str]:
    """The lines a user needs: llmtune's own errors are one line; anything else keeps its traceback tail."""

    if isinstance(error, LlmtuneError):
        return [f"{type(error).__name__}: {error}"]
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return text.rstrip().splitlines()[-ERROR_LINES:]


def tracks_status(fn: F) -> F:
    """Decorate the training entry point: its return or exception becomes the run's end state."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except TrainingInterrupted as err:  # a checkpoint was saved; the run can resume
            mark_ended("interrupted", err)
            raise
        except BaseException as err:
            mark_ended("failed", err)
            raise
        mark_ended("finished")
        return result

    return wrapper  # type: ignore[return-value]
