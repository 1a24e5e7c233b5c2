"""The benchmark suite cannot rot: every configuration runs one step on the tiny model (in this process).

The full suites (``python -m benchmarks.run --suite cpu``) are not run here; this runs the same
runners and the same measuring callback the child processes use, for one step each, and checks what
the tables rely on: a finite loss, token and memory counts, the same first loss for a row and its
baseline (same model, data, batch and seed), and a report written from the results.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the benchmarks package lives next to src/, not inside it

from benchmarks.child import RUNNERS  # noqa: E402
from benchmarks.configs import CONFIGS, SUITES  # noqa: E402
from benchmarks.llamafactory import lf_yaml  # noqa: E402
from benchmarks.measure import Measure  # noqa: E402
from benchmarks.report import write_report  # noqa: E402

from benchmarks import run as bench_run  # noqa: E402

SMOKE = SUITES["smoke"]
SMOKE_CONFIGS = SMOKE["groups"][0]["configs"]


def _job(name: str, tmp: Path) -> dict:
    model = bench_run.model_path("tiny")
    dataset = ("demo_alpaca", str(ROOT / "data"))
    return {
        "name": name,
        "model_path": model,
        "warmup": 0,
        "config": bench_run.job_config(name, model, 32, SMOKE, dataset, tmp / name),
    }


def test_a_group_shares_model_data_batch_and_seed(tmp_path):
    shared = ("model_name_or_path", "dataset", "dataset_dir", "cutoff_len", "per_device_train_batch_size", "seed")
    jobs = [_job(name, tmp_path)["config"] for name in SMOKE_CONFIGS]
    for key in shared:
        assert len({json.dumps(job[key]) for job in jobs}) == 1, key
    assert {job["max_steps"] for job in jobs} == {1}


def test_llamafactory_yaml_is_the_equivalent_run(tmp_path):
    block = lf_yaml({**_job("block", tmp_path), "config": {**_job("block", tmp_path)["config"], "bf16": False}})
    assert block["finetuning_type"] == "full" and block["use_badam"] and block["badam_mode"] == "layer"
    assert block["badam_switch_interval"] == CONFIGS["block"]["options"]["badam_switch_interval"]
    lora = lf_yaml(_job("lora", tmp_path))
    assert (lora["lora_rank"], lora["lora_target"], lora["learning_rate"]) == (8, "all", CONFIGS["lora"]["lr"])
    assert lora["dataset_dir"] == str(ROOT / "data") and lora["template"] == "default"
    assert lora["disable_gradient_checkpointing"]  # llmtune's default: no checkpointing, so neither side has it


def test_qlora_is_skipped_with_a_reason_only_without_bitsandbytes(monkeypatch):
    assert bench_run.unavailable("qlora") is None  # bitsandbytes is in the dev extra
    monkeypatch.setattr("llmtune.model.quantization.bitsandbytes_installed", lambda: False)
    assert "pip install bitsandbytes" in bench_run.unavailable("qlora")


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    """One step of every runnable smoke configuration, each with its own Measure callback."""
    tmp = tmp_path_factory.mktemp("bench")
    results = {}
    for name in SMOKE_CONFIGS:
        if bench_run.unavailable(name):
            continue
        job = _job(name, tmp)
        measure = Measure(warmup=0)
        RUNNERS[CONFIGS[name]["runner"]](job, measure)
        results[name] = {"config": name, "model": "tiny", "cutoff_len": 32, "batch": 2, **measure.result()}
    return tmp, results


@pytest.mark.slow
def test_every_configuration_runs_one_measured_step(smoke_results):
    _, results = smoke_results
    assert set(SMOKE_CONFIGS) == set(results)  # every configuration ran, QLoRA included
    for name, result in results.items():
        assert result["steps"] == 1, name
        assert math.isfinite(result["final_loss"]), name
        assert result["step_seconds"] > 0 and result["tokens_per_second"] > 0, name
        # In one process a step's resident peak can sit below the RSS at the start (freed pages of
        # an earlier run go back to the OS); the whole run's peak cannot.
        assert result["peak_process_bytes"] >= result["baseline_bytes"] > 0, name
        assert result["peak_process_bytes"] >= result["peak_train_bytes"] > 0, name
        assert 0 < result["trainable"] <= result["parameters"], name


@pytest.mark.slow
def test_rows_and_baselines_see_the_same_first_batch(smoke_results):
    _, r = smoke_results
    # Same weights, batch and seed: the first loss (before any update) is the same for a row and its baseline.
    for ours, theirs in (
        ("full", "trl_full"),
        ("lora", "trl_lora"),
        ("block", "badam_block"),
        ("sparse", "badam_ratio"),
    ):
        assert r[ours]["final_loss"] == pytest.approx(r[theirs]["final_loss"], rel=1e-5), (ours, theirs)
    assert r["lora"]["trainable"] < r["full"]["trainable"]
    assert r["zo_lora"]["trainable"] == r["lora"]["trainable"]


@pytest.mark.slow
def test_report_has_a_row_and_a_target_line_per_configuration(smoke_results, tmp_path):
    _, results = smoke_results
    out = tmp_path / "out"
    out.mkdir()
    header = {"suite": "smoke", "settings": {}, "date": "d", "platform": "p", "cpus": 2, "gpu": None}
    (out / "machine.json").write_text(json.dumps({**header, "versions": {}, "load_average": 0.0, "dataset": "x"}))
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results.values()))
    text = write_report(out).read_text()
    for name in results:
        assert f"| {name} |" in text
    assert "llmtune / TRL step time (`full` / `trl_full`)" in text
    assert "zo peak / inference peak" in text
