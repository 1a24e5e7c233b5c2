"""``--compare full,zo``: fine-tune the kernel's k-shot split through ``llmtune train``, score it, tabulate.

The k-shot split is written as a task of its own (``<output_dir>/<task>/kshot/``: ``tasks.json`` and
the rows as rendered prompts and options), so training (``train_as_classification``) and scoring
(``llmtune eval``'s choice scoring) see exactly the kernel's examples. Each method trains with the
defaults below (meant for the tiny model), overridden by ``compare_config``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmtune.arguments import parse_args
from llmtune.data.tasks import TaskExample
from llmtune.eval.config import parse_eval_args
from llmtune.eval.model import load_eval_model
from llmtune.eval.task_eval import evaluate_task, prepare_task
from llmtune.hparams.parser import read_config_file
from llmtune.kernel.config import KernelRun
from llmtune.train.run import run_sft

# Training defaults per method (tiny model: about a minute each on 2 CPU cores); compare_config overrides.
DEFAULTS: dict[str, dict[str, Any]] = {
    "full": {"learning_rate": 3e-3, "max_steps": 40},
    "zo": {"learning_rate": 1e-3, "max_steps": 200, "zo_eps": 1e-3},
}


def write_split(folder: Path, name: str, train: list[TaskExample], evals: list[TaskExample]) -> None:
    """``folder/tasks.json`` declaring task ``name`` over the rendered examples (and an empty dataset_info.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    count = len(train[0].options)
    for split, examples in (("train", train), ("eval", evals)):
        with (folder / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for e in examples:
                row = {"prompt": e.prompt, "label": e.label, **{f"option_{i}": o for i, o in enumerate(e.options)}}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    entry = {
        "kind": "choice",
        "prompt": "{prompt}",
        "options": [f"{{option_{i}}}" for i in range(count)],
        "label": "label",
        "metrics": ["accuracy"],
        "file_name": {"train": "train.jsonl", "eval": "eval.jsonl"},
    }
    (folder / "tasks.json").write_text(json.dumps({name: entry}, indent=2) + "\n", encoding="utf-8")
    (folder / "dataset_info.json").write_text("{}\n", encoding="utf-8")


def training_config(run: KernelRun, method: str, dataset: str, dataset_dir: Path, output_dir: Path) -> dict[str, Any]:
    """The ``llmtune train`` keys of one compared run."""
    extra = read_config_file(run.kernel.compare_config) if run.kernel.compare_config else {}
    shared = {k: v for k, v in extra.items() if not isinstance(v, dict)}
    own = extra.get(method) if isinstance(extra.get(method), dict) else {}
    config = {
        "model_name_or_path": run.model.model_name_or_path,
        "stage": "sft",
        "finetuning_type": method,
        "train_as_classification": True,
        "dataset": dataset,
        "dataset_dir": str(dataset_dir),
        "cutoff_len": run.data.cutoff_len,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": min(16, run.data.k_shot * 2),
        "lr_scheduler_type": "constant",
        "logging_steps": 10,
        "save_strategy": "no",
        "seed": run.seeds[0],
        "report_to": "none",
        "disable_tqdm": True,
        **DEFAULTS[method],
        **shared,
        **own,
    }
    return config


def run_compare(run: KernelRun, data: Any, kernel_result: dict, say: Callable[[str], None]) -> dict[str, Any]:
    """Train and score every ``compare`` method on the kernel's split; write ``compare.md``/``compare.json``."""

    out = run.output_dir / data.task.name
    name = f"{data.task.name}_k{run.data.k_shot}_seed{data.seed}"
    split_dir = out / "kshot"
    write_split(split_dir, name, data.train, data.eval)
    rows = {"kernel": kernel_result["metrics"]["accuracy"]}
    for method in run.compare_methods:
        run_dir = out / "compare" / method
        say(f"compare: training {method} on {len(data.train)} examples ({split_dir})")
        run_sft(parse_args(training_config(run, method, name, split_dir, run_dir)))
        eval_run = parse_eval_args(
            {
                "model_name_or_path": str(run_dir),
                "task": name,
                "dataset_dir": str(split_dir),
                "task_format": "plain",
                "output_dir": str(run_dir / "eval"),
            }
        )
        scored = evaluate_task(eval_run, prepare_task(eval_run, name), *load_eval_model(eval_run))
        rows[method] = scored["metrics"]["accuracy"]
    kernel = kernel_result["kernel"]
    table = [
        f"| {data.task.name}, {run.data.k_shot}-shot, seed {data.seed} | accuracy ({len(data.eval)} eval examples) |",
        "|---|---|",
        f"| kernel ({kernel['formula']}, {kernel['solver']}) | {rows['kernel']:.4f} |",
        *[f"| {method} fine-tuning | {rows[method]:.4f} |" for method in run.compare_methods],
    ]
    text = "\n".join(table) + "\n"
    (out / "compare.md").write_text(text, encoding="utf-8")
    (out / "compare.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    say(text.rstrip())
    return rows
