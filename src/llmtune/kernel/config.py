"""``llmtune kernel`` arguments: YAML file + flags -> validated dataclasses, as ``llmtune eval`` parses its own.

The keys are ``ModelArguments``', the ``KERNEL_DATA_KEYS`` of ``DataArguments`` and ``KernelArguments``'.
Every check here needs no model: a wrong key or value is one line before anything loads.
"""

from __future__ import annotations

import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune.errors import ConfigError, DataFileNotFoundError, one_of, suggest
from llmtune.hparams.data_args import DataArguments
from llmtune.hparams.kernel_args import (
    COMPARE_METHODS,
    KERNEL_DATA_KEYS,
    KERNEL_DTYPES,
    KERNEL_FORMULAS,
    KERNEL_PARAMS,
    KERNEL_SOLVERS,
    KernelArguments,
)
from llmtune.hparams.model_args import ModelArguments
from llmtune.hparams.parser import coerce, read_file_and_flags
from llmtune.hparams.secrets import is_secret


@dataclass
class KernelRun:
    """One validated ``llmtune kernel`` invocation; ``given`` holds the keys the user set."""

    model: ModelArguments
    data: DataArguments
    kernel: KernelArguments
    given: dict[str, Any] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        """The model's name in files and tables."""
        if self.kernel.model_id:
            return self.kernel.model_id
        source = self.model.model_name_or_path or "model"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", str(source).rstrip("/").split("/")[-1]) or "model"

    @property
    def output_dir(self) -> Path:
        """``output_dir``, else ``saves/kernel/<model>``; results go into ``<output_dir>/<task>/``."""
        return Path(self.kernel.output_dir) if self.kernel.output_dir else Path("saves") / "kernel" / self.model_id

    @property
    def cache_dir(self) -> Path:
        """Where kernels are cached: ``kernel_cache_dir``, else ``$LLMTUNE_HOME/kernel_cache``."""
        if self.kernel.kernel_cache_dir:
            return Path(self.kernel.kernel_cache_dir)
        from llmtune.model.tiny import llmtune_home

        return llmtune_home() / "kernel_cache"

    @property
    def seeds(self) -> list[int]:
        """The k-shot seeds, in the order given (``seed: 42`` or ``seed: 13,21,42``)."""
        return parse_seeds(self.kernel.seed)

    @property
    def compare_methods(self) -> list[str]:
        """The finetuning types of ``compare``, in the order given."""
        return [m.strip() for m in (self.kernel.compare or "").split(",") if m.strip()]

    def public_config(self) -> dict[str, Any]:
        """The keys set, minus secrets."""
        return {k: v for k, v in self.given.items() if not is_secret(k)}


def kernel_owners() -> dict[str, type]:
    """Kernel config key -> the dataclass that defines it."""
    from llmtune.hparams.docs import owners_of

    return owners_of(((ModelArguments, None), (DataArguments, KERNEL_DATA_KEYS), (KernelArguments, None)))


def load_kernel_arguments(tokens: list[str]) -> KernelRun:
    """``llmtune kernel`` argv (after the subcommand) -> a validated :class:`KernelRun`."""
    return parse_kernel_args(read_file_and_flags(tokens))


def parse_kernel_args(config: dict[str, Any]) -> KernelRun:
    """Validate ``{key: value}`` into a :class:`KernelRun`; loads nothing."""
    owners = kernel_owners()
    unknown = [key for key in config if key not in owners]
    if unknown:
        key = unknown[0]
        more = f" (and {len(unknown) - 1} more unknown keys)" if len(unknown) > 1 else ""
        raise ConfigError(f"unknown kernel key {key!r}{suggest(key, owners)}{more}; see `llmtune kernel --help`")
    hints = {cls: typing.get_type_hints(cls) for cls in set(owners.values())}
    given = {key: coerce(key, value, hints[owners[key]][key]) for key, value in config.items()}
    built = {
        cls: cls(**{k: v for k, v in given.items() if owners[k] is cls})
        for cls in (ModelArguments, DataArguments, KernelArguments)
    }
    run = KernelRun(built[ModelArguments], built[DataArguments], built[KernelArguments], given)
    validate_kernel(run)
    return run


def parse_seeds(value: int | list[Any]) -> list[int]:
    """``42`` or ``[13, "21", ...]`` (YAML list or comma-separated flag) -> distinct integer seeds."""
    seeds = []
    for item in value if isinstance(value, list) else [value]:
        text = str(item).strip()
        if isinstance(item, bool) or not text.lstrip("-").isdigit():
            raise ConfigError(f"seed: {item!r} is not an integer; give one seed (42) or several (13,21,42,87,100)")
        seeds.append(int(text))
    if not seeds:
        raise ConfigError("seed: no seed given; give one seed (42) or several (13,21,42,87,100)")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ConfigError(f"seed: {twice[0]} is given twice in {seeds}; each seed draws one k-shot split")
    return seeds


def _at_least(name: str, value: float | None, low: float) -> None:
    if value is not None and (value != value or value < low):
        raise ConfigError(f"{name}: {value} must be >= {low:g}")


def validate_kernel(run: KernelRun) -> None:
    """Cross-field checks that need no model: a choice task, known formula/solver/parameters, ranges."""
    from llmtune.data.tasks import load_tasks
    from llmtune.model import check_model_args

    args = run.kernel
    if not args.task:
        raise ConfigError("task: required; a choice task from tasks.json (e.g. sst2, rte, demo_sst2)")
    tasks = load_tasks(run.data.dataset_dir)
    if args.task not in tasks:
        raise ConfigError(
            f"task: {args.task!r} is not a task{suggest(args.task, tasks)}; tasks: {', '.join(sorted(tasks))}"
        )
    task = tasks[args.task]
    if task.kind != "choice":
        choice = ", ".join(sorted(n for n, t in tasks.items() if t.kind == "choice"))
        raise ConfigError(f"task: {args.task!r} is a generation task; the kernel needs label words: {choice}")
    if args.kernel_formula not in KERNEL_FORMULAS:
        raise one_of("kernel_formula", args.kernel_formula, KERNEL_FORMULAS)
    if args.kernel_solver not in KERNEL_SOLVERS:
        raise one_of("kernel_solver", args.kernel_solver, KERNEL_SOLVERS)
    if args.kernel_params not in KERNEL_PARAMS:
        raise one_of("kernel_params", args.kernel_params, KERNEL_PARAMS)
    if args.kernel_dtype not in KERNEL_DTYPES:
        raise one_of("kernel_dtype", args.kernel_dtype, KERNEL_DTYPES)
    if args.kernel_formula == "asymmetric_signgd" and len(task.options) != 2:
        raise ConfigError(
            f"kernel_formula: asymmetric_signgd works on binary tasks (one logit difference); "
            f"task {args.task!r} has {len(task.options)} options: use sgd or signgd"
        )
    if run.data.k_shot < 1:
        raise ConfigError(
            f"k_shot: {run.data.k_shot} (0 means every training row, for training only); the kernel needs k "
            "examples per class >= 1, e.g. --k_shot 16"
        )
    _at_least("kernel_batch_size", args.kernel_batch_size, 1)
    _at_least("kernel_block_params", args.kernel_block_params, 1)
    _at_least("kernel_ridge", args.kernel_ridge, 0)
    _at_least("kernel_c", args.kernel_c, 1e-12)
    _at_least("kernel_svr_epsilon", args.kernel_svr_epsilon, 0)
    _at_least("lora_rank", args.lora_rank, 1)
    _at_least("max_samples", run.data.max_samples, 1)
    _at_least("cutoff_len", run.data.cutoff_len, 1)
    seeds = run.seeds
    for method in run.compare_methods:
        if method not in COMPARE_METHODS:
            raise one_of("compare", method, COMPARE_METHODS)
    if run.compare_methods and len(seeds) > 1:
        raise ConfigError(
            f"compare: trains one k-shot split; seed gives {len(seeds)} ({', '.join(map(str, seeds))}): run compare "
            "once per seed"
        )
    if run.compare_methods and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("compare: runs training itself; start `llmtune kernel --compare` without torchrun")
    if args.compare_config:
        if not run.compare_methods:
            raise ConfigError("compare_config: only used with compare (e.g. --compare full,zo)")
        if not Path(args.compare_config).is_file():
            raise DataFileNotFoundError(f"compare_config: file {args.compare_config!r} does not exist")
    if not run.model.model_name_or_path:
        raise ConfigError("model_name_or_path: required (a hub id, a local folder, or llmtune/tiny-llama)")
    check_model_args(run.model)


def kernel_options_text() -> str:
    """Plain text for ``llmtune kernel --help``: every key with its default and help text."""
    header = [
        "usage: llmtune kernel [CONFIG.yaml] --task TASK --model_name_or_path M [--key value ...]",
        "",
        "The eNTK of the label-word logits on a k-shot split, solved as a kernel problem: the accuracy",
        "prompt-based fine-tuning would reach, without training (docs/kernel.md).",
    ]
    from llmtune.hparams.docs import owners_text

    return owners_text(header, kernel_owners())
