"""One seed's kernels -> dev and test accuracy; all seeds -> mean and standard deviation, ``results.json``.

The protocol is LM-BFF's and LM-Kernel-FT's (Malladi et al., 2023): every seed draws k examples per
class for training and another k as the dev set, the test set is the same for all seeds, and a
result is the mean and the (population, as their ``gather_result.py``) standard deviation over seeds.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from llmtune.data.tasks import Task, TaskExample
from llmtune.eval.metrics import choice_metrics
from llmtune.kernel.config import KernelRun
from llmtune.kernel.solvers import predict, solve

KERNEL_CONFIG_FILE = "kernel_args.yaml"
SCORED = ("dev", "eval")  # the splits with an accuracy; "eval" is the test set


@dataclass
class KernelData:
    """One seed's k-shot draw: the training and dev examples, and the test examples (the same for every seed)."""

    task: Task
    seed: int
    train: list[TaskExample]
    dev: list[TaskExample]
    eval: list[TaskExample]
    skipped_rows: int


@dataclass
class SeedScore:
    """One seed's outputs ``{split: [n, C]}`` (train, dev, eval), its metrics on dev and eval, and the seconds
    its kernels took (0 when they all came from the cache)."""

    data: KernelData
    outputs: dict[str, torch.Tensor]
    metrics: dict[str, dict[str, float]]
    train_accuracy: float
    kernel_seconds: float


def score_seed(run: KernelRun, data: KernelData, kernels: dict[str, dict[str, torch.Tensor]]) -> SeedScore:
    """Fit the solver on the training kernel; predict the dev and the test examples (one fit for both)."""
    args = run.kernel

    def f0(split: str) -> torch.Tensor:
        initial = kernels[split]["f0"]
        return initial if args.kernel_subtract_init else torch.zeros_like(initial)

    labels = torch.tensor([e.label for e in data.train])
    train_out, out = solve(
        args.kernel_solver,
        kernels["train"]["kernel"],
        torch.cat([kernels["dev"]["kernel"], kernels["eval"]["kernel"]], dim=2),
        labels,
        f0("train"),
        torch.cat([f0("dev"), f0("eval")]),
        ridge=args.kernel_ridge,
        c_reg=args.kernel_c,
        epsilon=args.kernel_svr_epsilon,
        symmetric=args.kernel_formula != "asymmetric_signgd",
    )
    outputs = {"train": train_out, "dev": out[: len(data.dev)], "eval": out[len(data.dev) :]}
    task = data.task
    metrics = {
        split: choice_metrics(
            task.metrics, predict(outputs[split]).tolist(), [e.label for e in getattr(data, split)], len(task.options)
        )
        for split in SCORED
    }
    seconds = round(max(float(k.get("seconds", 0.0)) for k in kernels.values()), 2)
    return SeedScore(data, outputs, metrics, float((predict(train_out) == labels).double().mean()), seconds)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.pstdev(values)


def summarise(run: KernelRun, scored: list[SeedScore], seconds: float) -> dict[str, Any]:
    """``results.json``: llmtune eval's keys (``metrics`` is the test metrics' mean over seeds), their standard
    deviation, the dev set's, each seed's, and the kernel's settings."""
    first = scored[0].data
    summary: dict[str, dict[str, float]] = {}
    for split, key in (("eval", "metrics"), ("dev", "dev_metrics")):
        stats = {name: mean_std([s.metrics[split][name] for s in scored]) for name in scored[0].metrics[split]}
        summary[key] = {name: mean for name, (mean, _) in stats.items()}
        summary[f"{key}_std"] = {name: std for name, (_, std) in stats.items()}
    args = run.kernel
    return {
        "task": first.task.name,
        "model_id": run.model_id,
        "split": "eval",
        "examples": len(first.eval),
        "skipped_rows": first.skipped_rows,
        "num_demos": 0,
        "format": "plain",
        "template": None,
        "length_normalization": None,
        **summary,
        "eval_seconds": round(seconds, 2),
        "kernel": {
            "formula": args.kernel_formula,
            "solver": args.kernel_solver,
            "params": args.kernel_params,
            "k_shot": run.data.k_shot,
            "seeds": [s.data.seed for s in scored],
            "train_examples": len(first.train),
            "dev_examples": len(first.dev),
            "subtract_init": args.kernel_subtract_init,
        },
        "per_seed": [
            {
                "seed": s.data.seed,
                "test": s.metrics["eval"],
                "dev": s.metrics["dev"],
                "train_accuracy": s.train_accuracy,
                "kernel_seconds": s.kernel_seconds,
            }
            for s in scored
        ],
    }


def summary_line(result: dict[str, Any]) -> str:
    """``demo_sst2 kernel sgd/lstsq (16-shot, seed 42; 128 test examples): accuracy 0.8750 (dev 0.8125)``, or
    with several seeds ``... accuracy 0.8750 ± 0.0120 (dev 0.8125 ± 0.0200) over 5 seeds (13, 21, 42, 87, 100)``."""
    kernel, seeds = result["kernel"], result["kernel"]["seeds"]
    several = len(seeds) > 1

    def value(key: str, name: str) -> str:
        text = f"{result[key][name]:.4f}"
        return f"{text} ± {result[f'{key}_std'][name]:.4f}" if several else text

    metrics = ", ".join(f"{name} {value('metrics', name)}" for name in result["metrics"])
    dev = ", ".join(value("dev_metrics", name) for name in result["dev_metrics"])
    where = f"{kernel['k_shot']}-shot" + ("" if several else f", seed {seeds[0]}")
    line = (
        f"{result['task']} kernel {kernel['formula']}/{kernel['solver']} ({where}; {result['examples']} test examples)"
    )
    over = f" over {len(seeds)} seeds ({', '.join(map(str, seeds))})" if several else ""
    return f"{line}: {metrics} (dev {dev}){over}"


def write_results(run: KernelRun, result: dict[str, Any], scored: list[SeedScore]) -> None:
    """``<output_dir>/<task>/``: ``results.json``, ``predictions.jsonl`` (each test example per seed), the config."""
    out = run.output_dir / result["task"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as handle:
        for s in scored:
            outputs = s.outputs["eval"]
            for example, row, guess in zip(s.data.eval, outputs.tolist(), predict(outputs).tolist(), strict=True):
                record = {
                    "seed": s.data.seed,
                    "where": example.where,
                    "prediction": guess,
                    "label": example.label,
                    "correct": guess == example.label,
                    "scores": [round(v, 4) for v in row],
                }
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    with (out / KERNEL_CONFIG_FILE).open("w", encoding="utf-8") as handle:
        yaml.safe_dump(run.public_config(), handle, sort_keys=False, allow_unicode=True)
