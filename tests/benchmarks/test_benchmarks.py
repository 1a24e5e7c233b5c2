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
    assert {job["gradient_checkpointing"] for job in jobs} == {False}  # every runner defaults to it on


def test_llamafactory_yaml_is_the_equivalent_run(tmp_path):
    block = lf_yaml({**_job("block", tmp_path), "config": {**_job("block", tmp_path)["config"], "bf16": False}})
    assert block["finetuning_type"] == "full" and block["use_badam"] and block["badam_mode"] == "layer"
    assert block["badam_switch_interval"] == CONFIGS["block"]["options"]["badam_switch_interval"]
    lora = lf_yaml(_job("lora", tmp_path))
    assert (lora["lora_rank"], lora["lora_target"], lora["learning_rate"]) == (8, "all", CONFIGS["lora"]["lr"])
    assert lora["dataset_dir"] == str(ROOT / "data") and lora["template"] == "default"
    assert lora["disable_gradient_checkpointing"]  # the benchmarks' setting: no checkpointing on either side


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
        ("full_fused", "trl_full"),
        ("lora", "trl_lora"),
        ("lora_fused", "trl_lora"),
        ("block_fused", "badam_block"),
        ("sparse_fused", "badam_ratio"),
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
    assert "llmtune / TRL step time, both on TRL's fused LM head (`full_fused` / `trl_full`)" in text
    assert "block / badam package step time, same loss path (`block_fused` / `badam_block`)" in text
    assert "zo peak / inference peak" in text
    assert "(`full` / `trl_full`)" not in text  # two loss paths: not a target


def test_filled_rows_make_every_batch_cutoff_len_tokens(tmp_path):
    """``fill_rows``: every row is cut to exactly cutoff_len tokens, so batches are equal on every runner."""
    from llmtune.arguments import parse_args
    from llmtune.data import get_dataset
    from llmtune.model import load_tokenizer

    model = bench_run.model_path("tiny")
    dataset = bench_run.filled_rows(("demo_alpaca", str(ROOT / "data")), model, 48, 10, tmp_path / "rows")
    config = bench_run.job_config("full", model, 48, SMOKE, dataset, tmp_path / "out")
    args = parse_args(config)
    prepared = get_dataset(args.data, load_tokenizer(args.model), seed=0)
    lengths = [len(row["input_ids"]) for row in prepared.train]
    assert len(lengths) == 10 and set(lengths) == {48}
    # the same rows at a shorter cutoff are cut shorter: the length is the cutoff's, not the data's
    short = get_dataset(parse_args({**config, "cutoff_len": 24}).data, load_tokenizer(args.model), seed=0)
    assert {len(row["input_ids"]) for row in short.train} == {24}


def test_a_task_group_trains_as_classification_and_scores_after(tmp_path):
    """The quality suite's task group: the base model's score, and a trained model's score on the eval split."""
    results = {}
    for name in ("zero_shot", "lora"):
        job = {**_job(name, tmp_path), "task": "demo_sst2"}
        job["config"] = bench_run.job_config(name, job["model_path"], 64, SMOKE, None, tmp_path / name, "demo_sst2")
        assert job["config"]["train_as_classification"] and job["config"]["dataset"] == "demo_sst2"
        measure = Measure(warmup=0)
        RUNNERS[CONFIGS[name]["runner"]](job, measure)
        results[name] = measure.result()
    for result in results.values():
        assert 0.0 <= result["task_metrics"]["accuracy"] <= 1.0
    assert results["zero_shot"]["steps"] == 0 and results["lora"]["steps"] == 1
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    header = {"suite": "quality", "date": "d", "platform": "p", "cpus": 2, "gpu": None, "load_average": 0.0}
    (report_dir / "machine.json").write_text(json.dumps({**header, "versions": {}, "settings": {}, "dataset": "x"}))
    rows = [
        {"config": n, "model": "tiny", "cutoff_len": 64, "batch": 2, "task": "demo_sst2", **r}
        for n, r in results.items()
    ]
    (report_dir / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    text = write_report(report_dir).read_text()
    assert "trained as classification on `demo_sst2`" in text and "| zero_shot | 0 (no training) |" in text


@pytest.mark.parametrize(("name", "task"), [("full", None), ("zo", None), ("lora", "demo_sst2")])
def test_the_head_suites_before_side_is_the_same_run_with_every_positions_logits(name, task, tmp_path, monkeypatch):
    """``T_all_logits`` (the head suite's "before"): the same losses as ``T``, but the LM head computes
    every position, not only the ones the loss reads."""
    import torch

    import llmtune.methods.zo.objectives as objectives
    import llmtune.model.head as head

    monkeypatch.setattr(head, "output_head", head.output_head)  # restored after the test
    monkeypatch.setattr(objectives, "output_head", objectives.output_head)
    from transformers import AutoConfig

    vocabulary = AutoConfig.from_pretrained(bench_run.model_path("tiny")).vocab_size
    results, head_rows = {}, {}
    for config in (name, f"{name}_all_logits"):
        job = {**_job(config, tmp_path), "task": task, "score": False}
        if task:
            job["config"] = bench_run.job_config(config, job["model_path"], 64, SMOKE, None, tmp_path / config, task)
        job["config"]["max_steps"] = 2
        rows = []

        def count(module, args, output, rows=rows):  # the LM head's output: [..., vocabulary]
            if isinstance(module, torch.nn.Linear) and output.shape[-1] == vocabulary:
                rows.append(output.numel() // vocabulary)

        handle = torch.nn.modules.module.register_module_forward_hook(count)
        try:
            measure = Measure(warmup=0)
            RUNNERS["llmtune"](job, measure)
        finally:
            handle.remove()
        results[config], head_rows[config] = measure.result(), sum(rows)
    assert results[f"{name}_all_logits"]["final_loss"] == pytest.approx(results[name]["final_loss"], rel=1e-5)
    assert head_rows[f"{name}_all_logits"] > 2 * head_rows[name] > 0
    assert "task_metrics" not in results[name]  # score: False, the step alone is measured


def test_a_task_group_without_scores_has_a_well_formed_table_and_its_ratios(tmp_path):
    """The head suite's classification group is not scored: its table has no metric columns (every row as
    many cells as the header) and its pairs get their ratio lines."""
    header = {"suite": "head", "date": "d", "platform": "p", "cpus": 2, "gpu": None, "load_average": 0.0}
    (tmp_path / "machine.json").write_text(json.dumps({**header, "versions": {}, "settings": {}, "dataset": "x"}))
    rows = [
        {"config": name, "model": "tiny", "cutoff_len": 64, "batch": 2, "task": "demo_sst2", "repeat": 0,
         "trainable": 10, "final_loss": 0.5, "step_seconds": seconds, "peak_rise_bytes": 1}
        for name, seconds in (("full", 0.8), ("full_all_logits", 1.0))
    ]  # fmt: skip
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(tmp_path).read_text()
    table = [line for line in text.splitlines() if line.startswith("| full") or line.startswith("| configuration")]
    assert len({line.count("|") for line in table}) == 1, table
    assert "every position's logits, step time (`full` / `full_all_logits`) | 0.800 |" in text


def test_ratios_pair_runs_of_one_session_only(tmp_path):
    """A configuration rerun later into the same folder (``--only``) is not paired with runs of another
    session: they were not interleaved."""
    from benchmarks.report import target_ratios

    def run(config, seconds, session):
        return {"config": config, "model": "tiny", "cutoff_len": 64, "batch": 2, "repeat": 0,
                "step_seconds": seconds, "session": session}  # fmt: skip

    same = [run("full", 2.0, "a"), run("full_all_logits", 4.0, "a")]
    assert target_ratios(same, "full", "full_all_logits", "step_seconds") == ([0.5], 1)
    apart = [run("full", 2.0, "a"), run("full_all_logits", 4.0, "b")]
    assert target_ratios(apart, "full", "full_all_logits", "step_seconds") == ([], 0)


def test_the_head_forward_benchmark_writes_a_ratio_per_type_and_repeat(tmp_path):
    """``benchmarks/head_forward.py`` on the tiny model: one line per type, the read positions counted,
    and the head restored afterwards."""
    from benchmarks.head_forward import TYPES
    from benchmarks.head_forward import main as head_forward

    import llmtune.model.head as head

    restricted = head.output_head
    head_forward(["--repeats", "1", "--model", "tiny", "--out", str(tmp_path / "forward.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "forward.jsonl").read_text().splitlines()]
    assert [r["config"] for r in rows] == list(TYPES)
    assert all(0 < r["positions_read"] < r["batch"][0] * r["batch"][1] and r["ratio"] > 0 for r in rows)
    assert head.output_head is restricted
