"""Runs the UI launched: detached processes, found again from files after any page reload or UI restart.

Each launch gets a folder ``$LLMTUNE_HOME/webui/runs/<id>/`` with ``launch.json`` (the command,
pid, output_dir, start time) and ``console.log`` (the process's stdout and stderr). The process
runs in its own session (``start_new_session=True``), so closing the page or stopping the UI
changes nothing for it. What the UI shows comes from files only: the training run's own
``run_status.json``, ``trainer_log.jsonl`` and the console log; Abort sends SIGINT to the pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmtune.model.tiny import llmtune_home
from llmtune.train.plot import read_log
from llmtune.train.status import read_status

TAIL_LINES = 40
_children: dict[int, subprocess.Popen] = {}  # processes this UI process started: reaped on poll


def runs_root() -> Path:
    """``$LLMTUNE_WEBUI_RUNS`` or ``$LLMTUNE_HOME/webui/runs``: one folder per launched run."""

    return Path(os.environ.get("LLMTUNE_WEBUI_RUNS") or llmtune_home() / "webui" / "runs").expanduser()


@dataclass
class Launch:
    """What the UI recorded when it started a process."""

    id: str
    kind: str  # "train" or "eval"
    command: list[str]  # as shown to the user (llmtune ...)
    argv: list[str]  # as run
    pid: int
    output_dir: str  # absolute; eval: the run folder evaluated
    started: float
    cwd: str

    @property
    def folder(self) -> Path:
        return runs_root() / self.id

    @property
    def console(self) -> Path:
        return self.folder / "console.log"


def launch(kind: str, command: list[str], argv: list[str], output_dir: str) -> Launch:
    """Start ``argv`` detached (own session, stdout/stderr to the run's console.log) and record it."""
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{len(_children)}"
    folder = runs_root() / run_id
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (folder / "console.log").open("wb") as console:
        proc = subprocess.Popen(  # noqa: S603 - an argv list, never a shell string
            argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    _children[proc.pid] = proc
    record = Launch(
        run_id, kind, command, argv, proc.pid, str(Path(output_dir).expanduser().resolve()), time.time(), os.getcwd()
    )
    (folder / "launch.json").write_text(json.dumps(asdict(record), indent=1), encoding="utf-8")
    return record


def list_launches() -> list[Launch]:
    """Every recorded launch, newest first (unreadable records are skipped)."""
    found = []
    root = runs_root()
    for path in root.glob("*/launch.json") if root.is_dir() else []:
        try:
            found.append(Launch(**json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(found, key=lambda r: r.started, reverse=True)


def get_launch(run_id: str) -> Launch | None:
    return next((r for r in list_launches() if r.id == run_id), None)


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a child of this UI that ended is reaped, not counted)."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an ended child of another process, not yet reaped, is a zombie: not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a text file (progress-bar carriage returns become line ends)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 64_000, 0))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.replace("\r", "\n").rstrip().splitlines()[-lines:]


@dataclass
class RunView:
    """Everything the page shows about one launch, read from files."""

    state: str  # starting, running, finished, interrupted, failed
    error: list[str]
    step: int
    total_steps: int
    losses: list[tuple[int, float]]
    log: list[str]
    results: list[dict[str, Any]]
    last: dict[str, Any] | None = None  # each field of the training log at its last value (times, speed, memory)


def view(record: Launch) -> RunView:
    """Read the run's files (never the process) and say where it stands."""
    running = alive(record.pid)
    log = tail(record.console)
    records = read_log(record.output_dir) if record.kind == "train" else []
    losses = [(int(r["current_steps"]), float(r["loss"])) for r in records if isinstance(r.get("loss"), int | float)]
    last = records[-1] if records else {}
    step, total = int(last.get("current_steps") or 0), int(last.get("total_steps") or 0)
    results = read_results(record.output_dir, record.started) if record.kind == "eval" else []
    state, error = _state(record, running, log, results)
    if state == "starting":  # the folder may still hold an older run's log until this run empties it
        step, total, losses = 0, 0, []
    # the progress line's figures: each from the last record that has it (the end-of-training summary has
    # no speed or memory of its own)
    latest = {key: value for r in records for key, value in r.items() if value is not None}
    return RunView(state, error, step, total, losses, log, results, latest if state != "starting" else None)


def _state(record: Launch, running: bool, log: list[str], results: list) -> tuple[str, list[str]]:
    if record.kind == "train":
        status = read_status(record.output_dir)
        # Only a status written by this launch counts (an older run may have left one in the folder).
        if status and (status.get("started") or 0) >= record.started - 1:
            if status["state"] != "running" or running:
                return status["state"], list(status.get("error") or [])
            return "failed", ["the process ended without recording an end state (killed?)", *log[-5:]]
    if running:
        return ("running" if record.kind == "eval" else "starting"), []
    if record.kind == "eval" and results:
        return "finished", []
    # It ended before its own status file existed: a config, data or output_dir error (in the console).
    return "failed", [line for line in log if line.strip()][-8:]


def read_results(run_dir: str, since: float) -> list[dict[str, Any]]:
    """``<run>/eval/<task>/results.json`` files written since ``since``: one flat row per task."""
    rows = []
    for path in sorted(Path(run_dir).glob("eval/*/results.json")):
        try:
            if path.stat().st_mtime < since - 1:
                continue
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        metrics = _flat_metrics(data) if isinstance(data, dict) else {}
        row = {"task": path.parent.name}
        row.update({k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)})
        rows.append(row)
    return rows


def _flat_metrics(data: dict[str, Any]) -> dict[str, Any]:
    """Task results keep their ``metrics``; MT-bench's become the medians (overall, turns, categories) and missing."""
    if "categories" not in data:
        return data.get("metrics", data)
    flat = {key: (data.get(key) or {}).get("median") for key in ("overall", "turn 1", "turn 2")}
    flat.update({name: (stats or {}).get("median") for name, stats in data["categories"].items()})
    flat["missing judgments"] = (data.get("counts") or {}).get("missing")
    return flat


def abort(record: Launch) -> str:
    """SIGINT to the run's process group: the training finishes its step, saves a checkpoint and exits."""
    if not alive(record.pid):
        return "the run is not running"
    try:
        os.killpg(record.pid, signal.SIGINT)  # its own session: the group holds it (and any torchrun workers)
    except ProcessLookupError:
        return "the run is not running"
    except PermissionError:
        os.kill(record.pid, signal.SIGINT)
    return f"sent SIGINT to {record.pid}: finishing the current step and saving a checkpoint"
