"""The loss plot: ``training_loss.png`` (and ``eval_loss.png``) from ``trainer_log.jsonl``."""

from __future__ import annotations

import json
import math
from pathlib import Path

from llmtune.train.callbacks import LOG_FILE


def read_log(output_dir: str | Path) -> list[dict]:
    """The records of ``output_dir/trainer_log.jsonl``; a torn last line (run still writing) is ignored."""
    path = Path(output_dir) / LOG_FILE
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Exponential moving average; the weight grows with the number of points (TensorBoard-style)."""
    if not values:
        return []
    if weight is None:
        weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    out, last = [], values[0]
    for value in values:
        last = last * weight + (1 - weight) * value
        out.append(last)
    return out


def plot_loss(output_dir: str | Path, keys: tuple[str, ...] = ("loss", "eval_loss")) -> list[Path]:
    """Write ``training_loss.png`` / ``eval_loss.png`` into ``output_dir``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(output_dir)
    written = []
    for key in keys:
        points = [(r["current_steps"], r[key]) for r in records if isinstance(r.get(key), int | float)]
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(steps, values, color="#1f77b4", alpha=0.4, label="original")
        ax.plot(steps, smooth(list(values)), color="#1f77b4", label="smoothed")
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(f"{key} of {Path(output_dir).name}")
        ax.legend()
        name = "training_loss.png" if key == "loss" else f"{key}.png"
        path = Path(output_dir) / name
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
