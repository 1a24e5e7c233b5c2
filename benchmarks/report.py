"""Tables and plots from a suite's ``results.jsonl``: ``OUT/report.md``, ``OUT/scaling.png``, ``OUT/loss_curves.png``.

    python -m benchmarks.report benchmarks/results/cpu        # rewrite the report of a finished run

Targets (issues #3, #11, #22), each a ratio of two configurations run in turn in one suite (with
``repeats``, A B A B ...): the median over the pairs in which neither run shared the machine (a load
average above the CPU count marks a run busy; busy runs make no ratio), with the range over pairs:

* llmtune / plain TRL step time <= 1.03 on TRL's own loss path (``full_fused``, ``lora_fused``);
* llmtune / LLaMA-Factory <= 1.0 on step time and peak memory (``full``, ``lora``, ``block``);
* ``block``/``sparse`` against the badam package on the same loss path (``*_fused``);
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

from benchmarks.configs import CONFIGS, HEAD_TYPES, MODELS

MIB = 2**20

# (what, numerator, denominator, metric, limit or None). Every pair runs on the same loss path: the
# TRL-based baselines (trl_*, badam_*) compute the loss through TRL's fused LM head, so llmtune's side
# of those pairs is the ``*_fused`` configuration; the loss path's own effect is a pair of its own.
TARGETS = [
    ("llmtune / TRL step time, both on TRL's fused LM head", "full_fused", "trl_full", "step_seconds", 1.03),
    ("llmtune / TRL step time, both on TRL's fused LM head", "lora_fused", "trl_lora", "step_seconds", 1.03),
    ("lm_head_loss auto / fused step time (no Triton here)", "full", "full_fused", "step_seconds", None),
    ("lm_head_loss auto / fused step time (no Triton here)", "lora", "lora_fused", "step_seconds", None),
    ("llmtune / LLaMA-Factory step time", "full", "lf_full", "step_seconds", 1.0),
    ("llmtune / LLaMA-Factory step time", "lora", "lf_lora", "step_seconds", 1.0),
    ("llmtune / LLaMA-Factory step time", "block", "lf_badam", "step_seconds", 1.0),
    ("llmtune / LLaMA-Factory peak", "full", "lf_full", "peak_rise_bytes", 1.0),
    ("llmtune / LLaMA-Factory peak", "lora", "lf_lora", "peak_rise_bytes", 1.0),
    ("llmtune / LLaMA-Factory peak", "block", "lf_badam", "peak_rise_bytes", 1.0),
    ("block / badam package step time, same loss path", "block_fused", "badam_block", "step_seconds", 1.0),
    ("block / badam package peak, same loss path", "block_fused", "badam_block", "peak_rise_bytes", 1.0),
    ("sparse / badam ratio step time, same loss path", "sparse_fused", "badam_ratio", "step_seconds", 1.0),
    ("sparse / badam ratio peak, same loss path", "sparse_fused", "badam_ratio", "peak_rise_bytes", 1.0),
    ("block / full mean step time over a whole pass of the blocks", "block_pass", "full", "mean_step_seconds", 0.4),
    (
        "LLaMA-Factory's BAdam / its full, mean step time over a whole pass",
        "lf_badam_pass",
        "lf_full",
        "mean_step_seconds",
        None,
    ),
    *[
        ("LM head only where read / every position's logits, step time", t, f"{t}_all_logits", "step_seconds", None)
        for t in HEAD_TYPES
    ],
    ("block peak / full peak", "block", "full", "peak_rise_bytes", 1.0),
    ("sparse peak / full peak", "sparse", "full", "peak_rise_bytes", 1.0),
    ("zo peak / inference peak", "zo", "inference", "peak_rise_bytes", 1.1),
    ("zo_lora peak / inference peak", "zo_lora", "inference", "peak_rise_bytes", 1.1),
    ("adazeta peak / inference peak", "adazeta", "inference", "peak_rise_bytes", 1.1),
    ("zo with fp32 master weights / zo peak", "zo_master", "zo", "peak_rise_bytes", None),
]


def load(out: Path) -> tuple[dict, list[dict]]:
    """The header and every run of ``out/results.jsonl``; a run repeated under the same repeat index
    (a configuration run again with ``--only``) replaces its earlier result."""
    header = json.loads((out / "machine.json").read_text())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    latest = {}
    for row in rows:
        key = (row["model"], row["cutoff_len"], row.get("task"), row.get("precision"), row["config"])
        latest[(*key, row.get("repeat", 0))] = row
    return header, list(latest.values())


def busy(row: dict) -> bool:
    """Whether the run shared the machine: its 1-minute load average before or after exceeded
    :data:`BUSY_LOAD` times the CPUs (runs recorded without their load are taken as they are)."""
    load, cpus = row.get("load_average"), row.get("cpus")
    if load is None or not cpus:
        return False
    return max(load if isinstance(load, list) else [load]) > BUSY_LOAD * cpus


def runs_of(rows: list[dict]) -> dict[str, dict[int, dict]]:
    """``{config: {repeat: run}}`` of the runs that measured something."""
    out: dict[str, dict[int, dict]] = defaultdict(dict)
    for row in rows:
        if "error" not in row:
            out[row["config"]][row.get("repeat", 0)] = row
    return out


def representative(runs: list[dict]) -> dict:
    """The run shown in a table for a configuration: the median step time among its quiet runs (all
    of them when every run was busy), with ``runs``, ``busy_runs`` and ``step_range`` added."""
    quiet = [r for r in runs if not busy(r)] or runs
    ordered = sorted(quiet, key=lambda r: r.get("step_seconds") or 0.0)
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    times = [r["step_seconds"] for r in quiet if r.get("step_seconds")]
    chosen.update(
        runs=len(runs),
        busy_runs=sum(busy(r) for r in runs),
        step_range=(min(times), max(times)) if len(times) > 1 else None,
    )
    return chosen


def _mib(n) -> str:
    return f"{n / MIB:,.0f}" if isinstance(n, int | float) else "-"


def _error_cell(row: dict) -> str:
    """A failed run's error as one markdown table cell."""
    return row["error"].replace("|", "/").replace("\n", " ")


def _num(n, fmt: str) -> str:
    return format(n, fmt) if isinstance(n, int | float) else "-"


def collapse(rows: list[dict]) -> list[dict]:
    """One row per (model, length, task, configuration): its representative run, or its error."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["cutoff_len"], row.get("task"), row.get("precision"), row["config"])].append(row)
    out = []
    for runs in groups.values():
        measured = [r for r in runs if "error" not in r]
        out.append(representative(measured) if measured else runs[-1])
    return out


def group_table(rows: list[dict]) -> list[str]:
    """One line per configuration: its median quiet run (s/step with the range over its quiet runs)."""
    lines = [
        "| configuration | runner | trainable params | peak rise (MiB) | peak process (MiB) | s/step | tokens/s | "
        "loss after last step |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    measured = runs_of(rows)
    for name in dict.fromkeys(r["config"] for r in rows):
        runner = CONFIGS[name]["runner"]
        if name not in measured:
            error = next(r for r in rows if r["config"] == name)
            lines.append(f"| {name} | {runner} | {_error_cell(error)} ||||||")
            continue
        row = representative(list(measured[name].values()))
        step = _num(row["step_seconds"], ".3f")
        if row["step_range"]:
            step += f" ({row['step_range'][0]:.3f}-{row['step_range'][1]:.3f}, {row['runs'] - row['busy_runs']} runs)"
        if row["busy_runs"] == row["runs"] and row.get("load_average") is not None:
            step += " busy"
        lines.append(
            f"| {name} | {runner} | {row['trainable']:,} | {_mib(row['peak_rise_bytes'])} | "
            f"{_mib(row['peak_process_bytes'])} | {step} | "
            f"{_num(row['tokens_per_second'], ',.0f')} | {_num(row['final_loss'], '.4f')} |"
        )
    return lines


def task_table(rows: list[dict]) -> list[str]:
    """A task group: every configuration's metrics on the task's eval split after training (or none)."""
    metrics = sorted({m for r in rows for m in r.get("task_metrics", {})})  # none when the suite does not score
    header = ["configuration", "trainable params", *metrics, "loss after last step", "s/step"]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (len(metrics) + 2)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['config']} | {_error_cell(row)} |" + "|" * (len(metrics) + 2))
            continue
        scores = [_num(row.get("task_metrics", {}).get(m), ".4f") for m in metrics]
        trainable = f"{row['trainable']:,}" if row.get("trainable") else "0 (no training)"
        cells = [row["config"], trainable, *scores, _num(row.get("final_loss"), ".4f")]
        lines.append("| " + " | ".join([*cells, _num(row.get("step_seconds"), ".3f")]) + " |")
    return lines


# A run's own threads (and, back to back, the previous run's) keep the 1-minute load near the CPU count;
# above one and a half times it, other work ran beside.
BUSY_LOAD = 1.5
TIME_METRICS = ("step_seconds", "mean_step_seconds", "tokens_per_second")


def target_ratios(rows: list[dict], top: str, bottom: str, metric: str) -> tuple[list[float], int]:
    """``(ratios, pairs)``: ``top / bottom`` of ``metric`` for each repeat both ran in the same session (for
    times, only the pairs in which neither run was busy); ``pairs`` counts all such pairs."""
    runs = runs_of(rows)
    pairs = [(runs[top][i], runs[bottom][i]) for i in runs.get(top, {}) if i in runs.get(bottom, {})]
    # Only runs of one invocation were interleaved (runs written before sessions were recorded count as one).
    pairs = [(a, b) for a, b in pairs if a.get("session") == b.get("session")]
    timed = metric in TIME_METRICS  # a process's own peak memory does not depend on the others'
    usable = [(a, b) for a, b in pairs if not (timed and (busy(a) or busy(b))) and a.get(metric) and b.get(metric)]
    return sorted(a[metric] / b[metric] for a, b in usable), len(pairs)


def step_ratio(rows: list[dict], top: str, bottom: str, warmup: int = 1) -> float:
    """Median step seconds of every measured step of ``top``'s runs over ``bottom``'s (``warmup`` steps
    of each run left out): the ratio of a pair measured over several alternating runs."""
    import statistics

    def steps(name: str) -> list[float]:
        return [t for r in rows if r["config"] == name and "error" not in r for t in r["seconds"][warmup:]]

    return statistics.median(steps(top)) / statistics.median(steps(bottom))


def target_lines(rows: list[dict]) -> list[str]:
    """The targets table: each ratio the median over interleaved pairs (same repeat), with its range."""
    import statistics

    lines = ["| target | ratio | range over pairs | pairs used | limit | result |", "|---|---:|---|---:|---:|---|"]
    for what, top, bottom, metric, limit in TARGETS:
        ratios, pairs = target_ratios(rows, top, bottom, metric)
        name = f"{what} (`{top}` / `{bottom}`)"
        if not pairs:
            continue
        if not ratios:
            lines.append(f"| {name} | busy machine: no ratio | | 0 of {pairs} | {limit or '-'} | - |")
            continue
        ratio = statistics.median(ratios)
        spread = f"{ratios[0]:.3f}-{ratios[-1]:.3f}" if len(ratios) > 1 else "one run each"
        result = "-" if limit is None else ("met" if ratio <= limit else "missed")
        lines.append(f"| {name} | {ratio:.3f} | {spread} | {len(ratios)} | {limit or '-'} | {result} |")
    by_name = {name: representative(list(r.values())) for name, r in runs_of(rows).items()}
    passing = by_name.get("block_pass")
    if passing and passing.get("switches") and passing.get("mean_step_seconds"):
        per_switch = passing["switch_seconds"] / passing["switches"]
        share = per_switch / (50 * passing["mean_step_seconds"])
        lines.append(
            f"| block switch overhead per step at badam_switch_interval 50 ({per_switch:.3f} s a switch) | "
            f"{share:.3%} | | 1 | 5% | {'met' if share <= 0.05 else 'missed'} |"
        )
    block = by_name.get("block")
    if block and block.get("estimate_bytes"):
        ratio = block["peak_rise_bytes"] / block["estimate_bytes"]
        lines.append(
            f"| block peak / estimator ({_mib(block['peak_rise_bytes'])} / {_mib(block['estimate_bytes'])} MiB) | "
            f"{ratio:.2f} | | 1 | 1.15 | {'met' if ratio <= 1.15 else 'missed'} |"
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
        groups[(row["model"], row["cutoff_len"], row.get("task"), row.get("precision"))].append(row)
    for (model, length, task, precision), group in groups.items():
        shown = f", {precision}" if precision else ""
        if task:
            title = f"## {model}: trained as classification on `{task}`, cutoff_len {length}, batch {group[0]['batch']}"
            lines += [title, "", *task_table(collapse(group)), ""]
            targets = target_lines(group)
            if targets:
                lines += ["Targets:", "", *targets, ""]
            continue
        if "random" in MODELS[model] and len({r["config"] for r in group}) <= 4:
            continue  # scaling runs: in the scaling table
        lines += [f"## {model}, cutoff_len {length}, batch {group[0]['batch']}{shown}", "", *group_table(group), ""]
        targets = target_lines(group)
        if targets:
            lines += ["Targets:", "", *targets, ""]
    single = collapse(rows)
    scaling = scaling_table(single)
    if scaling:
        lines += ["## Scaling (random-initialised Llama shapes)", "", *scaling, ""]
    plots = (plot_scaling(single, out), *(plot_losses(single, out, m) for m in sorted({r["model"] for r in rows})))
    for path in plots:
        if path is not None:
            lines.append(f"![{path.stem}]({path.name})")
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    print(write_report(Path(sys.argv[1])).read_text())
