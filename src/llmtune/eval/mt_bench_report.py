"""MT-bench results: scores per category and turn, over judge runs, as JSON, a markdown table and a chart.

Each judge run (``judge_runs``) is scored on its own, as FastChat scores one run: the mean rating
of the judged turns, per turn, per category (both turns) and overall. Over the runs, every score
is reported as its median with the spread (max - min) and standard deviation, so judge noise is
visible. Unparsed ratings and missing judgments are never scored; they are counted and shown.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from llmtune.errors import DataFileNotFoundError
from llmtune.eval.judge import ERROR, OK, UNPARSED, Judgment

RESULTS_FILE = "results.json"
OVERALL, TURN_1, TURN_2 = "overall", "turn 1", "turn 2"


def _spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"median": None, "min": None, "max": None, "spread": None, "stdev": None, "runs": []}
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "spread": round(max(values) - min(values), 4),
        "stdev": round(statistics.pstdev(values), 4),
        "runs": [round(v, 4) for v in values],
    }


def aggregate(judgments: list[Judgment], runs: int, expected: int, model_id: str, judge_model: str) -> dict[str, Any]:
    """Scores and counts of one model's judgments (``expected``: judgments asked for, all runs)."""
    per_run: list[dict[str, list[float]]] = [defaultdict(list) for _ in range(runs)]
    categories = list(dict.fromkeys(j.category for j in judgments))
    for j in judgments:
        if j.status != OK:
            continue
        groups = per_run[j.run]
        groups[OVERALL].append(j.score)
        groups[TURN_1 if j.turn == 1 else TURN_2].append(j.score)
        groups[f"category:{j.category}"].append(j.score)

    def over_runs(group: str) -> dict[str, Any]:
        means = [statistics.fmean(run[group]) for run in per_run if run[group]]
        return _spread(means)

    counts = {
        "expected": expected,
        "scored": sum(j.status == OK for j in judgments),
        "unparsed": sum(j.status == UNPARSED for j in judgments),
        "missing": sum(j.status == ERROR for j in judgments) + max(0, expected - len(judgments)),
    }
    return {
        "model_id": model_id,
        "judge_model": judge_model,
        "judge_runs": runs,
        OVERALL: over_runs(OVERALL),
        TURN_1: over_runs(TURN_1),
        TURN_2: over_runs(TURN_2),
        "categories": {c: over_runs(f"category:{c}") for c in categories},
        "counts": counts,
    }


def _cell(stats: dict[str, Any], runs: int) -> str:
    if stats["median"] is None:
        return "-"
    return f"{stats['median']:.2f}" + (f" ± {stats['spread'] / 2:.2f}" if runs > 1 else "")


def markdown_table(result: dict[str, Any]) -> str:
    """One model's scores: overall, per turn, per category (median, ± half the spread when runs > 1)."""
    runs = result["judge_runs"]
    lines = [
        f"MT-bench, {result['model_id']} judged by {result['judge_model']}"
        + (f", median over {runs} judge runs (± half the spread)" if runs > 1 else ""),
        "",
        "| | score |",
        "|---|---|",
    ]
    for name in (OVERALL, TURN_1, TURN_2):
        lines.append(f"| {name} | {_cell(result[name], runs)} |")
    for category, stats in result["categories"].items():
        lines.append(f"| {category} | {_cell(stats, runs)} |")
    lines += ["", counts_line(result)]
    return "\n".join(lines) + "\n"


def counts_line(result: dict[str, Any]) -> str:
    """``scored 158 of 160; unparsed ratings 1; missing (judge errors) 1``."""
    c = result["counts"]
    return f"scored {c['scored']} of {c['expected']} judgments; unparsed ratings {c['unparsed']}; missing (judge errors) {c['missing']}"


def compare_table(results: list[dict[str, Any]]) -> str:
    """Several models side by side (median scores)."""
    header = "| | " + " | ".join(r["model_id"] for r in results) + " |"
    lines = [header, "|---" * (len(results) + 1) + "|"]
    categories = list(dict.fromkeys(c for r in results for c in r["categories"]))
    for name in (OVERALL, TURN_1, TURN_2):
        lines.append(f"| {name} | " + " | ".join(_cell(r[name], 1) for r in results) + " |")
    for category in categories:
        cells = [_cell(r["categories"][category], 1) if category in r["categories"] else "-" for r in results]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    lines += ["", *(f"{r['model_id']}: {counts_line(r)}" for r in results)]
    return "\n".join(lines) + "\n"


def plot_scores(results: list[dict[str, Any]], path: Path) -> Path:
    """A radar chart of the category scores (a bar chart with fewer than 3 categories), one series per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    categories = list(dict.fromkeys(c for r in results for c in r["categories"]))

    def values(result: dict) -> list[float]:
        return [(result["categories"].get(c) or {}).get("median") or 0.0 for c in categories]

    if len(categories) >= 3:
        angles = np.linspace(0, 2 * np.pi, len(categories), endpoint=False).tolist()
        figure, axes = plt.subplots(figsize=(6, 6), subplot_kw={"polar": True})
        for result in results:
            points = values(result)
            axes.plot(angles + angles[:1], points + points[:1], label=result["model_id"])
            axes.fill(angles + angles[:1], points + points[:1], alpha=0.1)
        axes.set_xticks(angles)
        axes.set_xticklabels(categories)
        axes.set_ylim(0, 10)
    else:
        figure, axes = plt.subplots(figsize=(6, 4))
        width = 0.8 / len(results)
        for i, result in enumerate(results):
            axes.bar(np.arange(len(categories)) + i * width, values(result), width, label=result["model_id"])
        axes.set_xticks(np.arange(len(categories)) + 0.4 - width / 2)
        axes.set_xticklabels(categories)
        axes.set_ylim(0, 10)
        axes.set_ylabel("score")
    axes.set_title("MT-bench")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_results(result: dict[str, Any], out: Path) -> list[Path]:
    """``results.json``, ``results.md`` and ``mt_bench.png`` in ``out``."""
    paths = [out / RESULTS_FILE, out / "results.md", out / "mt_bench.png"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(markdown_table(result), encoding="utf-8")
    plot_scores([result], paths[2])
    return paths


def find_results(folder: Path) -> dict[str, Any]:
    """The MT-bench results of an evaluated run: ``folder`` itself, ``folder/mt_bench`` or ``folder/eval/mt_bench``."""
    for candidate in (folder, folder / "mt_bench", folder / "eval" / "mt_bench"):
        if (candidate / RESULTS_FILE).is_file():
            return json.loads((candidate / RESULTS_FILE).read_text(encoding="utf-8"))
    raise DataFileNotFoundError(
        f"compare: no MT-bench {RESULTS_FILE} in '{folder}' (or its mt_bench/, eval/mt_bench/); "
        f"run `llmtune eval {folder} --task mt_bench ...` first"
    )
