"""Runs are found and judged from files alone: the status file, the console log and the pid."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from llmtune.errors import ConfigError, TrainingInterrupted
from llmtune.train import status
from llmtune.webui import runs


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMTUNE_WEBUI_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def _track(out, fn):
    @status.tracks_status
    def run():
        status.mark_running(out)
        return fn()

    return run


def test_status_file_records_finished_failed_and_interrupted(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    assert _track(out, lambda: 7)() == 7
    record = status.read_status(out)
    assert record["state"] == "finished" and record["pid"] == os.getpid() and record["ended"] >= record["started"]

    def fail():
        raise ConfigError("dataset: 'nope' is not one of demo_alpaca")

    with pytest.raises(ConfigError):
        _track(out, fail)()
    record = status.read_status(out)
    assert record["state"] == "failed" and record["error"] == ["ConfigError: dataset: 'nope' is not one of demo_alpaca"]

    def crash():
        raise RuntimeError("CUDA out of something")

    with pytest.raises(RuntimeError):
        _track(out, crash)()
    record = status.read_status(out)
    assert record["state"] == "failed" and record["error"][-1] == "RuntimeError: CUDA out of something"
    assert any("Traceback" in line for line in record["error"]) or len(record["error"]) == status.ERROR_LINES

    def stop():
        raise TrainingInterrupted("stopped by SIGINT after step 3", 2)

    with pytest.raises(TrainingInterrupted):
        _track(out, stop)()
    assert status.read_status(out)["state"] == "interrupted"


def test_a_run_that_fails_before_training_shows_its_console_lines(tmp_path):
    code = "import sys; print('loading'); print('llmtune: error: dataset: nope', file=sys.stderr); sys.exit(2)"
    record = runs.launch("train", ["llmtune", "train"], [sys.executable, "-c", code], str(tmp_path / "out"))
    for _ in range(100):
        if not runs.alive(record.pid):
            break
        time.sleep(0.05)
    found = runs.list_launches()
    assert [r.id for r in found] == [record.id]  # the record survives the UI: it is a file
    view = runs.view(found[0])
    assert view.state == "failed" and view.error[-1] == "llmtune: error: dataset: nope"


def test_a_killed_run_is_not_shown_as_running(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    record = runs.launch("train", ["llmtune", "train"], [sys.executable, "-c", "print('hi')"], str(out))
    while runs.alive(record.pid):
        time.sleep(0.05)
    # What a process killed with SIGKILL leaves: a status that still says running, for a pid that is gone.
    stale = {"state": "running", "pid": record.pid, "command": [], "started": time.time(), "ended": None, "error": []}
    (out / status.STATUS_FILE).write_text(json.dumps(stale))
    view = runs.view(record)
    assert view.state == "failed" and "without recording an end state" in view.error[0]


def test_an_older_runs_status_is_not_taken_for_this_one(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    old = {"state": "finished", "pid": 1, "command": [], "started": time.time() - 3600, "ended": 0, "error": []}
    (out / status.STATUS_FILE).write_text(json.dumps(old))
    record = runs.launch("train", ["llmtune", "train"], [sys.executable, "-c", "import time; time.sleep(5)"], str(out))
    try:
        assert runs.view(record).state == "starting"
        assert "SIGINT" in runs.abort(record)
        for _ in range(100):
            if not runs.alive(record.pid):
                break
            time.sleep(0.05)
        assert not runs.alive(record.pid)
    finally:
        if runs.alive(record.pid):
            os.kill(record.pid, 9)


def test_eval_results_are_read_for_tasks_and_mt_bench(tmp_path):
    task = tmp_path / "eval" / "demo_sst2"
    bench = tmp_path / "eval" / "mt_bench"
    task.mkdir(parents=True)
    bench.mkdir(parents=True)
    (task / "results.json").write_text(json.dumps({"task": "demo_sst2", "metrics": {"accuracy": 0.6875}}))
    median = {"median": 6.5, "spread": 0.2}
    mt = {"overall": median, "turn 1": median, "turn 2": {"median": None}, "categories": {"coding": median}}
    (bench / "results.json").write_text(json.dumps({**mt, "counts": {"missing": 2}}))
    rows = runs.read_results(str(tmp_path), since=time.time() - 60)
    assert rows == [
        {"task": "demo_sst2", "accuracy": 0.6875},
        {"task": "mt_bench", "overall": 6.5, "turn 1": 6.5, "coding": 6.5, "missing judgments": 2},
    ]
    assert runs.read_results(str(tmp_path), since=time.time() + 60) == []  # older results are not this run's


def test_one_run_at_a_time_per_ui(tmp_path):
    from llmtune.webui import actions
    from llmtune.webui.fields import start_values

    state = actions.UiState()
    state.current = runs.launch(
        "train", ["llmtune"], [sys.executable, "-c", "import time; time.sleep(5)"], str(tmp_path)
    )
    try:
        message = actions.start_train(state, {**start_values(), "output_dir": str(tmp_path / "b")}, "")
        assert message.startswith("**error:** a run is already going") and not (tmp_path / "b").exists()
        assert len(runs.list_launches()) == 1
        # The run recorded its end (the page says finished) while its process still exits: not busy.
        (tmp_path / status.STATUS_FILE).write_text(
            json.dumps({"state": "finished", "pid": state.current.pid, "started": state.current.started + 1})
        )
        assert runs.alive(state.current.pid) and state.busy() is None
    finally:
        os.kill(state.current.pid, 9)


def test_the_progress_line_says_time_speed_loss_and_memory_from_the_runs_log(tmp_path, make_config):
    import json

    from llmtune.arguments import parse_args
    from llmtune.train.run import run_sft
    from llmtune.webui import actions
    from llmtune.webui.runs import RunView

    run_sft(parse_args(make_config(tmp_path / "run", "lora", max_steps=3)))
    records = [json.loads(line) for line in (tmp_path / "run" / "trainer_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert all(r["tokens_per_second"] > 0 and r["memory_bytes"] > 10**8 and r["elapsed_time"] > 0 for r in steps)
    last = steps[-1]
    view = RunView("running", [], 3, 6, [(r["current_steps"], r["loss"]) for r in steps], [], [], last)
    text = actions.progress_html(view)
    assert 'value="3" max="6"' in text and "50%" in text
    assert f"{last['tokens_per_second']:,.0f} tokens/s" in text and f"loss {last['loss']:.4f}" in text
    assert f"{last['memory_bytes'] / 1e9:.2f} GB" in text and "elapsed" in text
    # The finished run, read from its files as the page reads it: the log ends with the training summary,
    # which has no speed or memory of its own; the line keeps the last step's.
    assert "tokens_per_second" not in records[-1]
    done = runs.view(runs.Launch("r", "train", [], [], 2**22, str(tmp_path / "run"), 0.0, str(tmp_path)))
    shown = actions.progress_html(done)
    assert f"{last['tokens_per_second']:,.0f} tokens/s" in shown and f"{last['memory_bytes'] / 1e9:.2f} GB" in shown
