"""Tables and plots from a suite's ``results.jsonl``: ``OUT/report.md``, ``OUT/scaling.png``, ``OUT/loss_curves.png``.

    python -m benchmarks.report benchmarks/results/cpu        # rewrite the report of a finished run

Targets (issue #11 and #3), each a ratio measured side by side in one run; the table says "met" or
"missed" and the docs explain the misses:

* llmtune / plain TRL step time <= 1.03 (``full``, ``lora``);
* llmtune / LLaMA-Factory <= 1.0 on step time and peak memory (``full``, ``lora``, ``block``);
* ``block`` peak <= 1.15 x the estimator's figure and below ``full``; ``sparse`` below ``full``;
* ``zo`` peak <= 1.1 x the inference peak of the same model and batch.

"Peak" is the rise of the peak above the memory before the model loaded (``peak_rise_bytes``): the
resident set on the CPU, allocated CUDA memory on a GPU.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from benchmarks.configs import CONFIGS, MODELS

MIB = 2**20

# (what, numerator, denominator, metric, limit)
TARGETS = [
    ("llmtune / TRL step time", "full", "trl_full", "step_seconds", 1.03),
    ("llmtune / TRL step time", "lora", "trl_lora", "step_seconds", 1.03),
    ("llmtune / TRL step time, both on TRL's fused LM head", "full_fused", "trl_full", "step_seconds", 1.03),
    ("llmtune / LLaMA-Factory step time", "full", "lf_full", "step_seconds", 1.0),
    ("llmtune / LLaMA-Factory step time", "lora", "lf_lora", "step_seconds", 1.0),
    ("llmtune / LLaMA-Factory step time", "block", "lf_badam", "step_seconds", 1.0),
    ("llmtune / LLaMA-Factory peak", "full", "lf_full", "peak_rise_bytes", 1.0),
    ("llmtune / LLaMA-Factory peak", "lora", "lf_lora", "peak_rise_bytes", 1.0),
    ("llmtune / LLaMA-Factory peak", "block", "lf_badam", "peak_rise_bytes", 1.0),
    ("block / badam package step time", "block", "badam_block", "step_seconds", 1.0),
    ("block / badam package peak", "block", "badam_block", "peak_rise_bytes", 1.0),
    ("sparse / badam ratio step time", "sparse", "badam_ratio", "step_seconds", 1.0),
    ("sparse / badam ratio peak", "sparse", "badam_ratio", "peak_rise_bytes", 1.0),
    ("block peak / full peak", "block", "full", "peak_rise_bytes", 1.0),
    ("sparse peak / full peak", "sparse", "full", "peak_rise_bytes", 1.0),
    ("zo peak / inference peak", "zo", "inference", "peak_rise_bytes", 1.1),
]


def load(out: Path) -> tuple[dict, list[dict]]:
    header = json.loads((out / "machine.json").read_text())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    latest = {}
    for row in rows:  # a configuration run again replaces its earlier result
        latest[(row["model"], row["cutoff_len"], row.get("task"), row["config"])] = row
    return header, list(latest.values())


def _mib(n) -> str:
    return f"{n / MIB:,.0f}" if isinstance(n, int | float) else "-"


def _error_cell(row: dict) -> str:
    """A failed run's error as one markdown table cell."""
    return row["error"].replace("|", "/").replace("\n", " ")


def _num(n, fmt: str) -> str:
    return format(n, fmt) if isinstance(n, int | float) else "-"


def group_table(rows: list[dict]) -> list[str]:
    lines = [
        "| configuration | runner | trainable params | peak rise (MiB) | peak process (MiB) | s/step | tokens/s | "
        "loss after last step |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        runner = CONFIGS[row["config"]]["runner"]
        if "error" in row:
            lines.append(f"| {row['config']} | {runner} | {_error_cell(row)} ||||||")
            continue
        lines.append(
            f"| {row['config']} | {runner} | {row['trainable']:,} | {_mib(row['peak_rise_bytes'])} | "
            f"{_mib(row['peak_process_bytes'])} | {_num(row['step_seconds'], '.3f')} | "
            f"{_num(row['tokens_per_second'], ',.0f')} | {_num(row['final_loss'], '.4f')} |"
        )
    return lines


def task_table(rows: list[dict]) -> list[str]:
    """A task group: every configuration's metrics on the task's eval split after training (or none)."""
    metrics = sorted({m for r in rows for m in r.get("task_metrics", {})})
    lines = [
        "| configuration | trainable params | " + " | ".join(metrics) + " | loss after last step | s/step |",
        "|---|---:|" + "---:|" * (len(metrics) + 2),
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['config']} | {_error_cell(row)} |" + "|" * (len(metrics) + 2))
            continue
        scores = " | ".join(_num(row.get("task_metrics", {}).get(m), ".4f") for m in metrics)
        trainable = f"{row['trainable']:,}" if row.get("trainable") else "0 (no training)"
        lines.append(
            f"| {row['config']} | {trainable} | {scores} | {_num(row.get('final_loss'), '.4f')} | "
            f"{_num(row.get('step_seconds'), '.3f')} |"
        )
    return lines


def target_lines(rows: list[dict]) -> list[str]:
    by_name = {r["config"]: r for r in rows if "error" not in r}
    lines = ["| target | ratio | limit | result |", "|---|---:|---:|---|"]
    for what, top, bottom, metric, limit in TARGETS:
        if top in by_name and bottom in by_name and by_name[bottom].get(metric):
            ratio = by_name[top][metric] / by_name[bottom][metric]
            lines.append(
                f"| {what} (`{top}` / `{bottom}`) | {ratio:.3f} | {limit} | {'met' if ratio <= limit else 'missed'} |"
            )
    block = by_name.get("block")
    if block and block.get("estimate_bytes"):
        ratio = block["peak_rise_bytes"] / block["estimate_bytes"]
        lines.append(
            f"| block peak / estimator ({_mib(block['peak_rise_bytes'])} / {_mib(block['estimate_bytes'])} MiB) | "
            f"{ratio:.2f} | 1.15 | {'met' if ratio <= 1.15 else 'missed'} |"
        )
    return lines if len(lines) > 2 else []


def plot_scaling(rows: list[dict], out: Path) -> Path | None:
    """Step time and peak memory against parameters (random Llama shapes) and against sequence length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = [r for r in rows if "random" in MODELS[r["model"]] and "error" not in r]
    if not shapes:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    lengths = defaultdict(int)
    for r in shapes:
        lengths[r["cutoff_len"]] += 1
    common = max(lengths, key=lengths.get)  # the length shared by every size
    for config in sorted({r["config"] for r in shapes}):
        by_size = sorted((r["parameters"], r) for r in shapes if r["config"] == config and r["cutoff_len"] == common)
        xs = [p / 1e6 for p, _ in by_size]
        axes[0][0].plot(xs, [r["step_seconds"] for _, r in by_size], "o-", label=config)
        axes[1][0].plot(xs, [r["peak_rise_bytes"] / MIB for _, r in by_size], "o-", label=config)
        model_counts = defaultdict(int)
        for r in shapes:
            if r["config"] == config:
                model_counts[r["model"]] += 1
        if model_counts:
            swept = max(model_counts, key=model_counts.get)
            by_len = sorted((r["cutoff_len"], r) for r in shapes if r["config"] == config and r["model"] == swept)
            axes[0][1].plot([n for n, _ in by_len], [r["step_seconds"] for _, r in by_len], "o-", label=config)
            axes[1][1].plot([n for n, _ in by_len], [r["peak_rise_bytes"] / MIB for _, r in by_len], "o-", label=config)
    axes[0][0].set(xlabel="parameters (M)", ylabel="s / step", title=f"step time, cutoff_len {common}")
    axes[1][0].set(xlabel="parameters (M)", ylabel="peak rise (MiB)", title=f"peak memory, cutoff_len {common}")
    axes[0][1].set(xlabel="cutoff_len", ylabel="s / step", title="step time against sequence length")
    axes[1][1].set(xlabel="cutoff_len", ylabel="peak rise (MiB)", title="peak memory against sequence length")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "scaling.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_losses(rows: list[dict], out: Path, model: str = "smollm2") -> Path | None:
    """Training loss per step of every configuration on ``model`` (one line each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [
        r
        for r in rows
        if r["model"] == model and "error" not in r and not r.get("task") and len(r.get("losses", [])) > 1
    ]
    curves = [r for r in curves if CONFIGS[r["config"]]["runner"] != "inference"]
    if not curves:
        return None
    fig, (ax, rel) = plt.subplots(1, 2, figsize=(14, 5))
    for r in curves:
        ax.plot(range(1, len(r["losses"]) + 1), r["losses"], label=r["config"])
    ax.set(xlabel="step", ylabel="training loss", title=f"{model}: training loss by configuration")
    # Every configuration sees the same batches, whose difficulty moves every curve together; the loss
    # minus the mean of all configurations at that step shows which learns faster (lower is better).
    steps = min(len(r["losses"]) for r in curves)
    mean = [sum(r["losses"][i] for r in curves) / len(curves) for i in range(steps)]
    for r in curves:
        rel.plot(range(1, steps + 1), [r["losses"][i] - mean[i] for i in range(steps)], label=r["config"])
    rel.set(xlabel="step", ylabel="loss - mean over configurations", title="the same, relative (same batches)")
    for axis in (ax, rel):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = out / f"loss_curves_{model}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def scaling_table(rows: list[dict]) -> list[str]:
    shapes = sorted(
        (r for r in rows if "random" in MODELS[r["model"]] and "error" not in r),
        key=lambda r: (r["parameters"], r["cutoff_len"], r["config"]),
    )
    if not shapes:
        return []
    lines = ["| model | parameters | cutoff_len | configuration | s/step | tokens/s | peak rise (MiB) |"]
    lines.append("|---|---:|---:|---|---:|---:|---:|")
    for r in shapes:
        lines.append(
            f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['cutoff_len']} | {r['config']} | "
            f"{_num(r['step_seconds'], '.3f')} | {_num(r['tokens_per_second'], ',.0f')} | {_mib(r['peak_rise_bytes'])} |"
        )
    return lines


def write_report(out: Path) -> Path:
    """Write ``out/report.md`` (and the plots) from ``out/results.jsonl``; return the report's path."""
    out = Path(out)
    header, rows = load(out)
    v = ", ".join(f"{k} {val}" for k, val in header["versions"].items())
    lines = [
        f"# Benchmark suite `{header['suite']}`",
        "",
        f"`python -m benchmarks.run --suite {header['suite']}`; {header['date']}; {header['platform']}, "
        f"{header['cpus']} CPUs, GPU: {header['gpu'] or 'none'}; load average at start {header['load_average']:.1f}; "
        f"{v}; settings {header['settings']}; dataset {header['dataset']}.",
        "",
    ]
    groups = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["cutoff_len"], row.get("task"))].append(row)
    for (model, length, task), group in groups.items():
        if task:
            title = f"## {model}: trained as classification on `{task}`, cutoff_len {length}, batch {group[0]['batch']}"
            lines += [title, "", *task_table(group), ""]
            continue
        if "random" in MODELS[model] and len(group) <= 4:
            continue  # scaling runs: in the scaling table
        lines += [f"## {model}, cutoff_len {length}, batch {group[0]['batch']}", "", *group_table(group), ""]
        targets = target_lines(group)
        if targets:
            lines += ["Targets:", "", *targets, ""]
    scaling = scaling_table(rows)
    if scaling:
        lines += ["## Scaling (random-initialised Llama shapes)", "", *scaling, ""]
    for path in (plot_scaling(rows, out), *(plot_losses(rows, out, m) for m in sorted({r["model"] for r in rows}))):
        if path is not None:
            lines.append(f"![{path.stem}]({path.name})")
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    print(write_report(Path(sys.argv[1])).read_text())
