"""``llmtune kernel``: k-shot split -> eNTK (cached) -> kernel solver -> accuracy, in ``llmtune eval``'s result format.

arguments (validated) -> task rows read, k examples per class drawn with ``seed`` -> kernels looked
up in the cache -> (only when one is missing) model loaded, Jacobians streamed block by block,
tiles split across torchrun processes and summed -> solver -> ``results.json``, ``predictions.jsonl``
in ``<output_dir>/<task>/`` -> optionally the same split fine-tuned with ``compare`` methods.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from llmtune.data.kshot import k_shot_split
from llmtune.data.tasks import Task, TaskExample, load_task_examples, load_tasks
from llmtune.kernel.config import KernelRun

logger = logging.getLogger("llmtune")

KERNEL_CONFIG_FILE = "kernel_args.yaml"


@dataclass
class KernelData:
    """The task, its k-shot training examples and the examples the accuracy is measured on."""

    task: Task
    train: list[TaskExample]
    eval: list[TaskExample]
    skipped_rows: int


def load_kernel_data(run: KernelRun) -> KernelData:
    """Read the task's train split (drawing the k-shot set) and its eval split (the first ``max_samples``)."""
    task = load_tasks(run.data.dataset_dir)[run.kernel.task]
    pool, train_count = load_task_examples(task, "train", None, run.data.skip_bad_rows)
    train = k_shot_split(pool, run.data.k_shot, run.kernel.seed, task.name)
    evals, eval_count = load_task_examples(task, "eval", run.data.max_samples, run.data.skip_bad_rows)
    skipped = sum(train_count.skipped.values()) + sum(eval_count.skipped.values())
    return KernelData(task, train, evals, skipped)


# ---------------------------------------------------------------------------------------------
# The cache


def cache_path(run: KernelRun, split: str, rows: list[TaskExample], cols: list[TaskExample]) -> Path:
    """The cache file of one kernel: named by task, split, k, seed, formula, parameters; hashed over all it depends on."""
    args = run.kernel
    key = {
        "model": run.model.model_name_or_path,
        "revision": run.model.model_revision,
        "adapter": run.model.adapter_name_or_path,
        "task": args.task,
        "split": split,
        "k_shot": run.data.k_shot,
        "seed": args.seed,
        "formula": args.kernel_formula,
        "params": args.kernel_params,
        "lora": [args.lora_rank, args.lora_target] if args.kernel_params == "lora" else None,
        "cutoff_len": run.data.cutoff_len,
        "dtype": args.kernel_dtype,
        "rows": [[e.prompt, e.options] for e in rows],
        "cols": [[e.prompt, e.options] for e in cols],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = (
        f"{args.task}-{split}-k{run.data.k_shot}-seed{args.seed}-{args.kernel_formula}-{args.kernel_params}-{digest}.pt"
    )
    return run.cache_dir / name


def _save(path: Path, content: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(content, partial)
    partial.replace(path)  # atomic: a reader never sees half a kernel


def _load(path: Path) -> dict[str, torch.Tensor] | None:
    try:
        return torch.load(path, weights_only=True) if path.is_file() else None
    except (OSError, RuntimeError, EOFError):
        logger.warning("kernel cache %s is unreadable: computing it again", path)
        return None


# ---------------------------------------------------------------------------------------------
# Computing


def _distributed() -> tuple[int, int]:
    """``(rank, world size)``; under torchrun the gloo process group is started here (CPU tensors)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), world


def compute_kernels(run: KernelRun, data: KernelData) -> dict[str, dict[str, torch.Tensor]]:
    """``{"train": {"kernel", "f0"}, "eval": {...}}`` from the cache, or computed (split across processes)."""
    rank, world = _distributed()
    paths = {
        "train": cache_path(run, "train", data.train, data.train),
        "eval": cache_path(run, "eval", data.train, data.eval),
    }
    found = {split: _load(path) for split, path in paths.items()}
    if world > 1:  # every process must agree on what to compute
        import torch.distributed as dist

        flags = torch.tensor([found[s] is None for s in paths], dtype=torch.long)
        dist.all_reduce(flags)
        found = {s: None if flags[i] else found[s] for i, s in enumerate(paths)}
    missing = [split for split, content in found.items() if content is None]
    for split in paths:
        if split not in missing:
            logger.info("kernel %s: from the cache %s", split, paths[split])
    if missing:
        found.update(_compute(run, data, missing, rank, world))
        if rank == 0:
            for split in missing:
                _save(paths[split], found[split])
                logger.info("kernel %s: cached in %s", split, paths[split])
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return found


def _compute(run: KernelRun, data: KernelData, splits: list[str], rank: int, world: int) -> dict[str, dict]:
    from llmtune.kernel.features import add_lora, batches, encode_examples, label_logits, select_parameters
    from llmtune.kernel.kernels import Progress, compute_kernel, initial_outputs, parameter_blocks
    from llmtune.model import load_model, load_tokenizer

    args = run.kernel
    tokenizer = load_tokenizer(run.model)
    model = load_model(run.model, args.kernel_dtype, for_training=False)
    if run.model.adapter_name_or_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, run.model.adapter_name_or_path).merge_and_unload()
    if args.kernel_params == "lora":
        model = add_lora(model, args.lora_rank, args.lora_target)
    if torch.cuda.is_available():
        model = model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    model.eval()
    device = next(model.parameters()).device
    output_fn = label_logits(model, difference=args.kernel_formula == "asymmetric_signgd")
    params = select_parameters(model, args.kernel_params)
    blocks = parameter_blocks(params, args.kernel_block_params)
    every = {n: p.detach() for n, p in model.named_parameters()}
    logger.info(
        "kernel: %s parameters (%s) in %d blocks, %d training and %d eval examples, %d process(es)",
        f"{sum(p.numel() for p in params.values()):,}",
        args.kernel_params,
        len(blocks),
        len(data.train),
        len(data.eval),
        world,
    )
    limit = min(run.data.cutoff_len, getattr(model.config, "max_position_embeddings", None) or run.data.cutoff_len)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def encoded(examples: list[TaskExample]) -> list:
        items = encode_examples(tokenizer, examples, data.task.name, limit)
        return [b.to(device) for b in batches(items, args.kernel_batch_size, pad)]

    def fn(part: dict, batch: Any) -> torch.Tensor:
        return output_fn({**every, **part}, batch)

    train_batches = encoded(data.train)
    results: dict[str, dict] = {}
    f0_train = initial_outputs(fn, params, train_batches)
    for split in splits:
        started = time.perf_counter()
        cols = None if split == "train" else encoded(data.eval)
        kernel = compute_kernel(
            fn, params, blocks, train_batches, cols, args.kernel_formula, rank, world, Progress(split)
        )
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(kernel)  # each entry was filled by exactly one process: the sum is exact
        f0 = f0_train if split == "train" else initial_outputs(fn, params, cols)
        results[split] = {"kernel": kernel, "f0": f0, "seconds": torch.tensor(time.perf_counter() - started)}
    return results


# ---------------------------------------------------------------------------------------------
# Solving and writing


def run_kernel(run: KernelRun, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Do what ``run`` asks; return (and, on the first process, write) the result."""
    from llmtune.eval.metrics import choice_metrics
    from llmtune.kernel.solvers import predict, solve

    args = run.kernel
    data = load_kernel_data(run)
    started = time.perf_counter()
    kernels = compute_kernels(run, data)
    labels = torch.tensor([e.label for e in data.train])
    train_out, eval_out = solve(
        args.kernel_solver,
        kernels["train"]["kernel"],
        kernels["eval"]["kernel"],
        labels,
        kernels["train"]["f0"] if args.kernel_subtract_init else torch.zeros_like(kernels["train"]["f0"]),
        kernels["eval"]["f0"] if args.kernel_subtract_init else torch.zeros_like(kernels["eval"]["f0"]),
        ridge=args.kernel_ridge,
        c_reg=args.kernel_c,
        epsilon=args.kernel_svr_epsilon,
        symmetric=args.kernel_formula != "asymmetric_signgd",
    )
    predictions = predict(eval_out).tolist()
    eval_labels = [e.label for e in data.eval]
    train_accuracy = float((predict(train_out) == labels).double().mean())
    result = {
        "task": data.task.name,
        "model_id": run.model_id,
        "split": "eval",
        "examples": len(data.eval),
        "skipped_rows": data.skipped_rows,
        "num_demos": 0,
        "format": "plain",
        "template": None,
        "length_normalization": None,
        "metrics": choice_metrics(data.task.metrics, predictions, eval_labels, len(data.task.options)),
        "eval_seconds": round(time.perf_counter() - started, 2),
        "kernel": {
            "formula": args.kernel_formula,
            "solver": args.kernel_solver,
            "params": args.kernel_params,
            "k_shot": run.data.k_shot,
            "seed": args.seed,
            "train_examples": len(data.train),
            "train_accuracy": train_accuracy,
            "subtract_init": args.kernel_subtract_init,
            "kernel_seconds": {s: round(float(k.get("seconds", 0.0)), 2) for s, k in kernels.items()},
        },
    }
    if int(os.environ.get("RANK", "0")) == 0:
        _write(run, result, data.eval, eval_out, predictions)
        say(summary_line(result))
    if run.compare_methods:
        from llmtune.kernel.compare import run_compare

        result["compare"] = run_compare(run, data, result, say)
    return result


def summary_line(result: dict[str, Any]) -> str:
    """``demo_sst2 kernel sgd/lstsq (16-shot, seed 42; 128 eval examples): accuracy 0.8750``."""
    kernel = result["kernel"]
    metrics = ", ".join(f"{name} {value:.4f}" for name, value in result["metrics"].items())
    return (
        f"{result['task']} kernel {kernel['formula']}/{kernel['solver']} ({kernel['k_shot']}-shot, seed "
        f"{kernel['seed']}; {result['examples']} eval examples): {metrics}"
    )


def _write(
    run: KernelRun, result: dict, examples: list[TaskExample], outputs: torch.Tensor, predicted: list[int]
) -> None:
    out = run.output_dir / result["task"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as handle:
        for example, row, guess in zip(examples, outputs.tolist(), predicted, strict=True):
            record = {
                "where": example.where,
                "prediction": guess,
                "label": example.label,
                "correct": guess == example.label,
                "scores": [round(v, 4) for v in row],
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    with (out / KERNEL_CONFIG_FILE).open("w", encoding="utf-8") as handle:
        yaml.safe_dump(run.public_config(), handle, sort_keys=False, allow_unicode=True)
