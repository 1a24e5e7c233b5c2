"""The fidelity suite's machinery: learning-rate choice on dev, resuming, the page from the results alone."""

from __future__ import annotations

import json
import os
import statistics

import pytest

from benchmarks import fidelity, fidelity_report

SETTING = {"row": "zo", "budget": "cpu", "model": "m", "task": "t"}
SEEDS = (21, 42, 87, 100)  # the seeds after the grid's 13
ADAZETA = "AdaZeta: a higher accuracy than MeZO-LoRA at an equal query budget, and no divergence"


def record(row, seed, lr, dev, test, phase="final", **extra):
    return {
        "row": row, "seed": seed, "lr": lr, "dev_accuracy": dev, "test_accuracy": test, "phase": phase,
        "kind": "train", "budget": "cpu", "model": "m", "task": "t", "steps": 10, "trainable_params": 100,
        "peak_rss_bytes": 2e9, "train_seconds": 5.0, "load_average": [0.1, 0.2], "machine": {"cpus": 2},
        "curve": [{"step": 0, "test": 0.5, "queries": 0}, {"step": 10, "test": test, "queries": 10}], **extra,
    }  # fmt: skip


def test_the_learning_rate_is_chosen_on_dev_never_on_test():
    records = [record("zo", 13, 1e-6, 0.6, 0.9, "grid"), record("zo", 13, 1e-5, 0.7, 0.5, "grid")]
    assert fidelity.best_lr(records, SETTING, 13) == 1e-5  # the better dev accuracy, though its test is worse
    assert fidelity.best_lr(records[:1], SETTING, 13) is None  # the grid has not finished


def test_the_rows_runs_are_the_best_dev_grid_run_and_the_other_seeds_at_its_rate():
    records = [
        record("zo", 13, 1e-6, 0.6, 0.9, "grid"),
        record("zo", 13, 1e-5, 0.7, 0.5, "grid"),
        record("zo", 21, 1e-5, 0.6, 0.7),
        record("zo", 21, 1e-6, 0.6, 0.99),  # another rate's run (an older choice): not reported
    ]
    runs = fidelity_report.chosen_runs(records, "zo")
    assert [(r["seed"], r["lr"]) for r in runs] == [(13, 1e-5), (21, 1e-5)]
    table = fidelity_report.summarise(records)
    assert table["zo"]["test"][0] == pytest.approx(0.6) and table["zo"]["test"][1] == pytest.approx(0.1414, abs=1e-4)


def complete(row, test, dev=0.7):
    """A row with its learning-rate grid (the first rate wins on dev) and all five seeds at ``test``."""
    first, *others = fidelity.ROWS[row]["grid"]
    grid = [record(row, 13, first, dev, test, "grid"), *[record(row, 13, lr, dev - 0.1, 0.0, "grid") for lr in others]]
    return grid + [record(row, seed, first, dev, test) for seed in (21, 42, 87, 100)]


def test_verdicts_come_from_complete_rows_follow_the_numbers_and_say_what_is_missing():
    zero = {**record("zero_shot", None, None, 0.5, 0.5), "kind": "score"}
    icl = [{**record("icl", seed, None, 0.6, 0.6), "kind": "score"} for seed in fidelity.SEEDS]
    records = [zero, *complete("zo", 0.8), *complete("full", 0.83)]
    verdict = fidelity_report.verdicts(fidelity_report.summarise(records))[0][2]
    assert verdict == "not measured yet (icl not run)"
    verdicts = fidelity_report.verdicts(fidelity_report.summarise([*records, *icl]))
    assert verdicts[0][2] == "reproduced"  # +30 over zero-shot, +20 over ICL, -3 from full
    assert "still rising at the end: +30.0 points over the last 10 steps" in verdicts[0][1]  # the curves' 0.5 -> 0.8
    worse = [zero, *icl, *complete("zo", 0.55), *complete("full", 0.83)]
    assert fidelity_report.verdicts(fidelity_report.summarise(worse))[0][2].startswith("not reproduced (not above")
    # above zero-shot and ICL, 10 points below full: the half that holds is said
    half = [zero, *icl, *complete("zo", 0.73), *complete("full", 0.83)]
    assert fidelity_report.verdicts(fidelity_report.summarise(half))[0][2].startswith("half reproduced: above")
    # one seed short, or the grid unfinished: no verdict from a part of the runs
    partial = [zero, *icl, *complete("zo", 0.8)[:-1], *complete("full", 0.83)]
    assert fidelity_report.verdicts(fidelity_report.summarise(partial))[0][2] == "pending (zo: 4 of 5 seeds)"
    ungridded = [zero, *icl, *complete("zo", 0.8)[:1], *complete("full", 0.83)]
    assert fidelity_report.verdicts(fidelity_report.summarise(ungridded))[0][2].startswith("pending (zo: 1 of 5")


def test_the_accuracy_objective_trains_when_above_zero_shot_on_the_mean_and_on_most_seeds():
    claim = "MeZO: a non-differentiable objective (accuracy) also trains"
    zero = {**record("zero_shot", None, None, 0.5, 0.54), "kind": "score"}
    loss = complete("zo", 0.74)

    def verdict(tests):
        first, *others = fidelity.ROWS["zo_accuracy"]["grid"]
        runs = [record("zo_accuracy", 13, first, 0.7, tests[0], "grid")]
        runs += [record("zo_accuracy", 13, lr, 0.6, 0.0, "grid") for lr in others]
        runs += [record("zo_accuracy", seed, first, 0.7, t) for seed, t in zip(SEEDS, tests[1:], strict=True)]
        found = {
            c: (here, v) for c, here, v in fidelity_report.verdicts(fidelity_report.summarise([zero, *loss, *runs]))
        }
        return found[claim]

    here, said = verdict([0.59, 0.57, 0.58, 0.54, 0.54])  # this suite's seeds: 3 above, 2 at zero-shot
    assert (
        said
        == "reproduced (above zero-shot on 3 of 5 seeds), but weakly: +2.4 points where the loss objective gains +20.0"
    )
    assert (
        "above zero-shot on 3 of 5 seeds" in here and "zo (the loss, the same steps) - zero-shot +20.0 points" in here
    )
    # one seed far above carries the mean, the others do not move: not "trains"
    assert verdict([0.74, 0.54, 0.54, 0.54, 0.53])[1] == "not reproduced (above zero-shot on 1 of 5 seeds)"
    assert verdict([0.70, 0.72, 0.71, 0.69, 0.70])[1] == "reproduced (above zero-shot on 5 of 5 seeds)"


def test_adamu_is_judged_at_the_same_steps_or_on_reaching_zos_accuracy_sooner():
    adamu = "ZO-AdaMU: a higher accuracy than MeZO at the same number of steps, or the same accuracy sooner"

    def row(name, points, finals=None):  # every seed with the test curve ``points`` over steps 0, 10, 20
        runs = complete(name, points[-1])
        for run in runs:
            run["curve"] = [{"step": 10 * i, "test": t} for i, t in enumerate(points)]
        chosen = [r for r in runs if r["phase"] == "final" or r["lr"] == fidelity.ROWS[name]["grid"][0]]
        for run, final in zip(chosen, finals or [], strict=False):  # per-seed final accuracies
            run["test_accuracy"] = run["curve"][-1]["test"] = final
        return runs

    def verdict(adamu_curve, zo_curve, adamu_finals=None, zo_finals=None):
        records = row("zo_adamu", adamu_curve, adamu_finals) + row("zo", zo_curve, zo_finals)
        found = {
            claim: (evidence, v) for claim, evidence, v in fidelity_report.verdicts(fidelity_report.summarise(records))
        }
        return found[adamu]

    evidence, said = verdict([0.5, 0.6, 0.8], [0.5, 0.6, 0.7])
    assert said == "reproduced (higher at the same steps)"
    assert "zo_adamu 0: 50.0, 10: 60.0, 20: 80.0; zo 0: 50.0, 10: 60.0, 20: 70.0" in evidence
    sooner = "reproduced (the same final accuracy, reached by step 10 against zo's 20)"
    assert verdict([0.5, 0.7, 0.7], [0.5, 0.6, 0.7])[1] == sooner
    assert verdict([0.5, 0.6, 0.65], [0.5, 0.6, 0.7])[1] == "not reproduced (lower at the same steps)"
    # a higher point on the way does not count when the run ends lower
    assert verdict([0.5, 0.7, 0.55], [0.5, 0.6, 0.7])[1] == "not reproduced (lower at the same steps)"
    # zo flat from step 0: reaching its accuracy "by step 0" is not sooner
    assert (
        verdict([0.5, 0.6, 0.5], [0.5, 0.5, 0.5])[1] == "not reproduced (the same final accuracy, not reached sooner)"
    )
    # the same mean by other per-seed accuracies differs by rounding (1e-16): a tie, not "higher"
    finals_a, finals_b = [0.92, 0.825, 0.565, 0.995, 0.75], [0.92, 0.845, 0.545, 0.995, 0.75]
    assert statistics.mean(finals_a) != statistics.mean(finals_b)
    assert verdict([0.5, 0.6, 0.75], [0.5, 0.75, 0.75], finals_a, finals_b)[1].startswith("not reproduced (the same")
    assert verdict([0.5, 0.6, 0.75], [0.5, 0.75, 0.75], finals_b, finals_a)[1].startswith("not reproduced (the same")
    # curves that cannot be compared point by point: said, not judged
    records = row("zo_adamu", [0.5, 0.7, 0.7]) + row("zo", [0.5, 0.6, 0.7])
    records[-1]["curve"] = records[-1]["curve"][:1] + records[-1]["curve"][2:]  # one zo seed evaluated at 0 and 20 only
    found = {claim: v for claim, _, v in fidelity_report.verdicts(fidelity_report.summarise(records))}
    assert found[adamu].startswith("not measurable here")


def test_adazeta_is_judged_at_equal_queries_and_on_divergence():
    def row(name, test):  # the grid on seed 13 (its first rate chosen), the other seeds at it
        rates = fidelity.ROWS[name]["grid"]
        grid = [record(name, 13, lr, 0.7 if lr == rates[0] else 0.6, test, "grid") for lr in rates]
        return grid + [record(name, s, 1e-4, 0.7, test) for s in SEEDS]

    base, good = row("zo_lora", 0.54), row("adazeta", 0.60)
    verdict = {claim: v for claim, _, v in fidelity_report.verdicts(fidelity_report.summarise(base + good))}
    assert verdict[ADAZETA] == "reproduced (no divergence at the chosen rate)"
    good[1]["dev_accuracy"] = good[1]["test_accuracy"] = 0.5  # a grid run not chosen that fell to chance on dev
    claims = {
        claim: (evidence, v) for claim, evidence, v in fidelity_report.verdicts(fidelity_report.summarise(base + good))
    }
    lr = f"{fidelity.ROWS['adazeta']['grid'][1]:.0e}"
    said = f"reproduced (no divergence at the chosen rate; at the grid's lr {lr} it diverged or fell to chance on dev)"
    assert claims[ADAZETA][1] == said
    assert f"{lr} 50.0 (diverged or at chance on dev)" in claims[ADAZETA][0]
    good[len(fidelity.ROWS["adazeta"]["grid"]) + 1]["losses"] = [0.7, float("nan")]  # seed 42's run
    verdict = {claim: v for claim, _, v in fidelity_report.verdicts(fidelity_report.summarise(base + good))}
    assert verdict[ADAZETA] == "not reproduced: diverged on seed 42"


def test_a_kernel_row_read_from_the_cache_reports_the_pass_that_computed_it():
    def kernel(row, seed, kernel_pass, peak, seconds):
        return {**record(row, seed, None, 0.8, 0.8), "kind": "kernel", "kernel_pass": kernel_pass, "k": 16,
                "peak_rss_bytes": peak, "train_seconds": seconds, "trainable_params": 0}  # fmt: skip

    computed, cached = kernel("kernel_sgd", 13, "computed", 8e9, 900.0), kernel("kernel_signgd", 13, "cached", 1e9, 2.0)
    table = fidelity_report.summarise([computed, cached])
    assert (table["kernel_signgd"]["peak"], table["kernel_signgd"]["seconds"]) == (8e9, 900.0)
    alone = fidelity_report.summarise([cached])  # its pass is not in the results: neither figure
    assert alone["kernel_signgd"]["peak"] is None and alone["kernel_signgd"]["seconds"] is None
    line = next(x for x in fidelity_report.table_markdown(alone) if x.startswith("| kernel_signgd"))
    assert line.endswith("| n/a | n/a |")
    # the cache refilled later by another pass (another machine, another time): the latest pass before the row
    other = {**kernel("kernel_signgd", 13, "computed", 7e9, 600.0), "machine": {"cpus": 2, "processor": "B"}}
    third = kernel("kernel_asymmetric_signgd", 13, "cached", 1e9, 2.0)
    table = fidelity_report.summarise([computed, other, third])
    assert (table["kernel_asymmetric_signgd"]["peak"], table["kernel_asymmetric_signgd"]["seconds"]) == (7e9, 600.0)


def test_times_measured_on_different_machines_name_their_machine():
    a = {**record("full", 13, 1e-5, 0.8, 0.8), "machine": {"cpus": 2, "processor": "A"}}
    b = {**record("lora", 13, 1e-4, 0.8, 0.8), "machine": {"cpus": 2, "processor": "B"}}
    lines = fidelity_report.table_markdown(fidelity_report.summarise([a, b]))
    assert next(x for x in lines if x.startswith("| full ")).endswith("| 5, on A, 2 CPUs |")
    assert next(x for x in lines if x.startswith("| lora ")).endswith("| 5, on B, 2 CPUs |")
    alone = fidelity_report.table_markdown(fidelity_report.summarise([a]))  # one machine: the header says it
    assert next(x for x in alone if x.startswith("| full ")).endswith("| 5 |")


def test_a_busy_runs_time_is_not_reported():
    quiet, busy = record("full", 13, 1e-5, 0.8, 0.8, "grid"), record("full", 21, 1e-5, 0.8, 0.8)
    busy["load_average"], busy["train_seconds"] = [3.5, 1.0], 500.0
    table = fidelity_report.summarise([quiet, busy])
    assert table["full"]["seconds"] == 5.0 and table["full"]["busy"] == 1


def test_adazeta_stops_at_the_query_budget_of_a_one_query_per_step_run(tmp_path):
    """AdaZeta's claim is at an equal query budget: its job carries MeZO-LoRA's query count, and the run
    stops at the first step that reaches it (here 2 queries a step, a budget of 5: after step 3)."""
    setting = {"model": "llmtune/tiny-llama", "task": "demo_sst2", "k": 4, "test_samples": 8}
    jobs = {
        row: next(fidelity.jobs_of(row, "cpu", [13], setting, tmp_path / "r.jsonl")) for row in ("adazeta", "zo_lora")
    }
    assert jobs["adazeta"]["max_queries"] == jobs["zo_lora"]["steps"] and "max_queries" not in jobs["zo_lora"]
    fixed = {"finetuning_type": "adazeta", "adazeta_alpha": 2, "adazeta_beta": 0.0}  # Q = 2 every step
    job = {**jobs["adazeta"], "options": fixed, "steps": 20, "points": 4, "max_queries": 5, "lr": 1e-4}
    result = fidelity.run_train({**job, "output_dir": str(tmp_path / "out")})
    assert result["steps_done"] == 3 and result["queries"] == 6
    assert [point["step"] for point in result["curve"]] == [0, 3] and result["curve"][-1]["queries"] == 6


def test_the_kernel_rows_stream_the_budgets_block_size(monkeypatch, tmp_path):
    """The CPU budget's kernel passes take the parameters in its blocks (fewer passes per example than
    llmtune kernel's default); the job hands them to the kernel run."""
    import llmtune.kernel.run as kernel_run

    setting = {"model": "llmtune/tiny-llama", "task": "demo_sst2", "k": 4, "test_samples": 8}
    job = next(fidelity.jobs_of("kernel_sgd", "cpu", [13], setting, tmp_path / "r.jsonl"))
    assert job["block_params"] == fidelity.BUDGETS["cpu"]["kernel"]["block_params"]
    assert "block_params" not in next(fidelity.jobs_of("kernel_sgd", "smoke", [13], setting, tmp_path / "r.jsonl"))
    seen = {}

    def stop(config, say):
        seen.update(config)
        raise RuntimeError("stop before the pass")

    monkeypatch.setattr(kernel_run, "run_kernel_config", stop)
    with pytest.raises(RuntimeError, match="stop before the pass"):
        fidelity.run_kernel_row({**job, "output_dir": str(tmp_path / "out"), "kernel_cache_dir": str(tmp_path)})
    assert seen["kernel_block_params"] == job["block_params"]


@pytest.mark.slow
def test_the_suite_runs_resumes_and_writes_its_page(tmp_path, monkeypatch):
    """Four rows on the tiny model and demo_sst2 (k = 4, 2 seeds, 2 steps); a second call runs nothing. The
    signgd kernel rows read the kernels the sgd rows' pass cached, and report that pass's cost."""
    scratch = tmp_path / "scratch"  # where each run's folder is made, and removed once its record is read
    scratch.mkdir()
    monkeypatch.setattr(fidelity.tempfile, "tempdir", str(scratch))
    results = tmp_path / "results.jsonl"
    argv = ["--budget", "smoke", "--model", "llmtune/tiny-llama", "--task", "demo_sst2", "--k", "4"]
    argv += ["--test_samples", "8", "--rows", "zero_shot,zo,kernel_sgd,kernel_signgd", "--seeds", "13,21"]
    argv += ["--results", str(results), "--kernel_cache", str(tmp_path / "kernels")]
    before = dict(os.environ)
    assert fidelity.main(argv) == 0
    assert dict(os.environ) == before  # later tests' subprocesses inherit this process's environment
    runs = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["row"], r["seed"], r["phase"]) for r in runs] == [
        ("zero_shot", None, "final"), ("zo", 13, "grid"), ("zo", 13, "grid"), ("zo", 21, "final"),
        ("kernel_sgd", 13, "final"), ("kernel_sgd", 21, "final"),
        ("kernel_signgd", 13, "final"), ("kernel_signgd", 21, "final"),
    ]  # fmt: skip
    assert [r.get("kernel_pass") for r in runs[4:]] == ["computed", "computed", "cached", "cached"]
    assert [r["train_seconds"] for r in runs[4:6]] == [r["train_seconds"] for r in runs[6:]]  # the pass's time
    table = fidelity_report.summarise(runs)
    assert table["kernel_signgd"]["peak"] == table["kernel_sgd"]["peak"]  # the pass's memory, not the reader's
    assert all("error" not in r and 0 <= r["test_accuracy"] <= 1 for r in runs)
    assert runs[1]["curve"][0]["step"] == 0 and runs[1]["curve"][-1]["step"] == 2
    assert fidelity.main(argv) == 0
    assert len(results.read_text().splitlines()) == 8  # resumed: nothing ran again
    assert list(scratch.iterdir()) == []  # no run left its folder (a saved model each) behind
    page = (tmp_path / "fidelity.md").read_text()
    assert "| zo | MeZO" in page and "not run yet" in page


def test_every_test_the_deviations_table_names_exists():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for _, _, tests in fidelity_report.DEVIATIONS:
        for path, name in re.findall(r"(tests/[\w/]+\.py)::(\w+)", tests):
            assert f"def {name}(" in (root / path).read_text(), f"{path}::{name}"


def test_a_gap_that_rounds_to_zero_is_shown_without_a_minus_sign():
    assert fidelity_report.signed_points(-0.0004) == "+0.0"  # 0.04 points below: "-0.0" would be noise
    assert fidelity_report.signed_points(0.0) == "+0.0"
    assert fidelity_report.signed_points(-0.003) == "-0.3"
    assert fidelity_report.signed_points(0.024) == "+2.4"


def test_every_row_has_its_papers_numbers_beside_it():
    named = [row for rows, _, _ in fidelity_report.PAPER_NUMBERS for row in rows.split(", ")]
    assert sorted(named) == sorted(fidelity.ROWS)  # each row once: a new row needs its paper's numbers (or why not)
