"""``llmtune kernel``: k-shot splits -> eNTK (cached) -> kernel solver -> accuracy, in ``llmtune eval``'s result format.

arguments (validated) -> task rows read; for every seed, k examples per class drawn for training and
another k as the dev set (``llmtune.data.kshot``), the eval split as the test set -> kernels looked
up in the cache -> (only when one is missing) model loaded once for all seeds, Jacobians streamed
block by block, column batches split across torchrun processes and summed -> solver -> per-seed dev and test
accuracy, their mean and standard deviation (``report``) -> optionally the split fine-tuned with
``compare`` methods.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llmtune.data.kshot import k_shot_splits
from llmtune.data.tasks import TaskExample, load_task_examples, load_tasks
from llmtune.kernel.compare import run_compare
from llmtune.kernel.config import KernelRun, parse_kernel_args
from llmtune.kernel.features import add_lora, batches, encode_examples, label_logits, select_parameters
from llmtune.kernel.kernels import FORMULAS, Progress, compute_kernel, initial_of, initial_outputs, parameter_blocks
from llmtune.kernel.report import KernelData, score_seed, summarise, summary_line, write_results
from llmtune.model import load_model, load_tokenizer

logger = logging.getLogger("llmtune")

SPLITS = ("train", "dev", "eval")  # the kernel's columns: the training set itself, the dev set, the test set


def load_kernel_data(run: KernelRun) -> list[KernelData]:
    """One :class:`KernelData` per seed: the task's train split read once and drawn per seed; the eval split's
    first ``max_samples`` rows are the test set of every seed."""
    task = load_tasks(run.data.dataset_dir)[run.kernel.task]
    pool, train_count = load_task_examples(task, "train", None, run.data.skip_bad_rows)
    evals, eval_count = load_task_examples(task, "eval", run.data.max_samples, run.data.skip_bad_rows)
    skipped = sum(train_count.skipped.values()) + sum(eval_count.skipped.values())
    draws = []
    for seed in run.seeds:
        train, dev = k_shot_splits(pool, run.data.k_shot, seed, task.name)
        draws.append(KernelData(task, seed, train, dev, evals, skipped))
    return draws


# ---------------------------------------------------------------------------------------------
# The cache


def cache_path(
    run: KernelRun, split: str, seed: int, rows: list[TaskExample], cols: list[TaskExample], formula: str | None = None
) -> Path:
    """The cache file of one kernel (``formula``: the run's by default): named by task, split, k, seed, formula,
    parameters; hashed over all it depends on."""
    args = run.kernel
    formula = formula or args.kernel_formula
    key = {
        "model": run.model.model_name_or_path,
        "revision": run.model.model_revision,
        "adapter": run.model.adapter_name_or_path,
        "task": args.task,
        "split": split,
        "k_shot": run.data.k_shot,
        "seed": seed,
        "formula": formula,
        "params": args.kernel_params,
        "lora": [args.lora_rank, args.lora_target] if args.kernel_params == "lora" else None,
        "cutoff_len": run.data.cutoff_len,
        "dtype": args.kernel_dtype,
        "rows": [[e.prompt, e.options] for e in rows],
        "cols": [[e.prompt, e.options] for e in cols],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = f"{args.task}-{split}-k{run.data.k_shot}-seed{seed}-{formula}-{args.kernel_params}-{digest}.pt"
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


class KernelModel:
    """The model, the parameters the Jacobians are taken over and the output function, loaded on first use
    and shared by every seed; the test set's batches and initial outputs are computed once for all seeds."""

    def __init__(self, run: KernelRun):
        self.run = run
        self.rank, self.world = _distributed()
        self._loaded: dict[str, Any] | None = None
        self._outputs: dict[tuple, tuple[list, torch.Tensor]] = {}

    def _load(self) -> dict[str, Any]:
        if self._loaded is not None:
            return self._loaded

        run, args = self.run, self.run.kernel
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
        output_fn = label_logits(model)  # every formula is a product of these logits' Jacobians
        params = select_parameters(model, args.kernel_params)
        every = {n: p.detach() for n, p in model.named_parameters()}

        def fn(part: dict, batch: Any) -> torch.Tensor:
            return output_fn({**every, **part}, batch)

        positions = getattr(model.config, "max_position_embeddings", None) or run.data.cutoff_len
        self._loaded = {
            "tokenizer": tokenizer,
            "fn": fn,
            "params": params,
            "blocks": parameter_blocks(params, args.kernel_block_params),
            "device": next(model.parameters()).device,
            "limit": min(run.data.cutoff_len, positions),
            "pad": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        }
        logger.info(
            "kernel: %s parameters (%s) in %d blocks, %d process(es)",
            f"{sum(p.numel() for p in params.values()):,}",
            args.kernel_params,
            len(self._loaded["blocks"]),
            self.world,
        )
        return self._loaded

    def encoded(self, examples: list[TaskExample], task_name: str) -> tuple[list, torch.Tensor]:
        """``(batches, initial outputs [N, C])`` of ``examples`` (remembered: the test set serves every seed)."""
        key = tuple((e.prompt, tuple(e.options)) for e in examples)
        if key not in self._outputs:
            loaded = self._load()
            items = encode_examples(loaded["tokenizer"], examples, task_name, loaded["limit"])
            encoded = [b.to(loaded["device"]) for b in batches(items, self.run.kernel.kernel_batch_size, loaded["pad"])]
            self._outputs[key] = (encoded, initial_outputs(loaded["fn"], loaded["params"], encoded))
        return self._outputs[key]

    def compute(
        self, data: KernelData, splits: list[str], formulas: tuple[str, ...]
    ) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
        """``{formula: {split: {"kernel", "f0", "seconds"}}}`` of the training examples against each split of
        ``splits``, for every formula of ``formulas``, in one pass over the parameter blocks (``seconds``: the
        whole pass, the same for every formula)."""

        loaded = self._load()
        started = time.perf_counter()
        rows, f0_train = self.encoded(data.train, data.task.name)
        encoded = {split: self.encoded(getattr(data, split), data.task.name) for split in splits if split != "train"}
        logger.info(
            "kernel seed %d: %d training examples against %s (%s)",
            data.seed,
            len(data.train),
            ", ".join(f"{split} ({len(getattr(data, split))})" for split in splits),
            ", ".join(formulas),
        )
        kernels = compute_kernel(
            loaded["fn"],
            loaded["params"],
            loaded["blocks"],
            rows,
            {split: None if split == "train" else encoded[split][0] for split in splits},
            formulas,
            self.rank,
            self.world,
            Progress(f"seed {data.seed}"),
        )
        seconds = torch.tensor(time.perf_counter() - started)
        results: dict[str, dict[str, dict]] = {formula: {} for formula in formulas}
        for formula in formulas:
            for split in splits:
                if self.world > 1:
                    import torch.distributed as dist

                    dist.all_reduce(kernels[formula][split])  # each entry was filled by one process: the sum is exact
                f0 = f0_train if split == "train" else encoded[split][1]
                results[formula][split] = {
                    "kernel": kernels[formula][split],
                    "f0": initial_of(formula, f0),
                    "seconds": seconds,
                }
        return results


def formulas_of(run: KernelRun, task_options: int) -> tuple[str, ...]:
    """The run's formula first, then every other one this task allows: one pass over the Jacobians computes
    (and caches) them all for the price of their products."""
    allowed = [f for f in FORMULAS if f != "asymmetric_signgd" or task_options == 2]
    return (run.kernel.kernel_formula, *[f for f in allowed if f != run.kernel.kernel_formula])


def compute_kernels(run: KernelRun, data: KernelData, model: KernelModel | None = None) -> dict[str, dict]:
    """``{split: {"kernel", "f0"}}`` of the run's formula for ``SPLITS`` of one seed, from the cache or computed
    (split across processes).

    A pass that has to run computes every formula's kernel of the missing splits (:func:`formulas_of`) and
    caches those not cached yet, so a later run with another ``kernel_formula`` reads them. ``model`` is
    loaded only when a kernel is missing; pass the same one for every seed.
    """
    model = model or KernelModel(run)
    formulas = formulas_of(run, len(data.task.options))
    paths = {
        (formula, split): cache_path(run, split, data.seed, data.train, getattr(data, split), formula)
        for formula in formulas
        for split in SPLITS
    }
    found = {key: _load(path) for key, path in paths.items()}
    if model.world > 1:  # every process must agree on what to compute
        import torch.distributed as dist

        flags = torch.tensor([found[key] is None for key in paths], dtype=torch.long)
        dist.all_reduce(flags)
        found = {key: None if flags[i] else found[key] for i, key in enumerate(paths)}
    formula = run.kernel.kernel_formula
    missing = [split for split in SPLITS if found[(formula, split)] is None]
    for split in SPLITS:
        if split not in missing:
            logger.info("kernel %s (seed %d): from the cache %s", split, data.seed, paths[(formula, split)])
    if missing:
        computed = model.compute(data, missing, formulas)
        for other in formulas:
            for split in missing:
                key = (other, split)
                if found[key] is None:
                    found[key] = computed[other][split]
                    if model.rank == 0:
                        _save(paths[key], found[key])
                        logger.info("kernel %s %s (seed %d): cached in %s", other, split, data.seed, paths[key])
    if model.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return {split: found[(formula, split)] for split in SPLITS}


def run_kernel(run: KernelRun, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Do what ``run`` asks for every seed; return (and, on the first process, write) the result."""

    started = time.perf_counter()
    model = KernelModel(run)
    scored = []
    for data in load_kernel_data(run):
        kernels = compute_kernels(run, data, model)
        scored.append(score_seed(run, data, kernels))
    result = summarise(run, scored, time.perf_counter() - started)
    if model.rank == 0:
        write_results(run, result, scored)
        say(summary_line(result))
    if run.compare_methods:
        result["compare"] = run_compare(run, scored[0].data, result, say)
    return result


def run_kernel_config(config: dict[str, Any], say: Callable[[str], None] = print) -> dict[str, Any]:
    """``llmtune kernel`` in-process: ``{key: value}`` with the CLI's keys (``seed`` a list or ``"13,21"``) ->
    the result also written to ``<output_dir>/<task>/results.json``. Raises a one-line ``ConfigError``
    for a bad key or value before anything loads."""

    return run_kernel(parse_kernel_args(config), say)
