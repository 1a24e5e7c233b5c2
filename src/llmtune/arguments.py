"""The setup step: a config becomes a run's validated arguments.

:mod:`llmtune.hparams` reads the file and the flags, coerces each value to its field's type and checks
the values on their own. What needs the other layers happens here, top to bottom, before any model
loads: the methods' own spellings (LLaMA-Factory's ``use_badam``), the compatibility table
(finetuning type x engine x accumulation x precision), the precision this machine can run, the
machine-dependent defaults of ``TrainingArguments`` (the CPU, the DeepSpeed process group on a CPU,
pinned memory, gradient checkpointing where a backward pass runs), and the checks of the template, the
model, quantisation and the method's own combinations. Every mistake is one line.
"""

from __future__ import annotations

import os
from typing import Any

from llmtune.compat import check_config
from llmtune.data import TEMPLATES
from llmtune.errors import one_of
from llmtune.hparams.data_args import DataArguments
from llmtune.hparams.finetuning_args import FinetuningArguments
from llmtune.hparams.model_args import ModelArguments
from llmtune.hparams.parser import (
    CHECKPOINTING_KEYS,
    RunArguments,
    check_stage,
    check_values,
    coerce_config,
    construct,
    read_file_and_flags,
)
from llmtune.launch import check_deepspeed_build_lock, is_torchrun_worker, join_cpu_deepspeed_group
from llmtune.methods import METHODS, get_method, method_argument_classes
from llmtune.methods.registry import normalise_config
from llmtune.model import check_model_args, check_precision
from llmtune.model.dtypes import compute_dtype_name
from llmtune.model.quantization import check_quantization


def argument_classes() -> list[type]:
    """Every dataclass whose fields are config keys, in the order they are documented."""
    from llmtune.hparams.training_args import TrainingArguments  # imports TRL: only when asked for

    return [ModelArguments, DataArguments, FinetuningArguments, *method_argument_classes(), TrainingArguments]


def parse_args(config: dict[str, Any], *, for_training: bool = True) -> RunArguments:
    """Validate a merged ``{key: value}`` config and build the argument dataclasses.

    Raises a one-line :class:`~llmtune.errors.LlmtuneError` for any unknown key, bad value or
    unsupported combination. Loads no model, tokenizer or dataset.
    """
    config = normalise_config(dict(config))
    classes = argument_classes()
    given, owners = coerce_config(config, classes)
    # The compatibility table (finetuning_type x engine x accumulation x precision) and the packages and
    # devices its cell needs: refused here, before TrainingArguments imports DeepSpeed or anything loads.
    cell = check_config(given)
    _check_precision(given)
    if cell.engine in ("zero2", "zero3") and not _has_accelerator():
        check_deepspeed_build_lock()  # DeepSpeed on a CPU builds an op behind a lock a killed run can leave

    built: dict[type, Any] = {}
    for cls in classes:
        kwargs = {k: v for k, v in given.items() if cls in owners[k]}
        if cls is classes[-1]:  # TrainingArguments
            kwargs.setdefault("output_dir", "saves/llmtune")
            if not _has_accelerator() and cell.engine in ("zero2", "zero3") and is_torchrun_worker(os.environ):
                # DeepSpeed on CPU: join its process group before TrainingArguments counts the processes.
                join_cpu_deepspeed_group()
                kwargs.setdefault("accelerator_config", {"use_configured_state": True})
            elif not _has_accelerator():
                # accelerate only runs torchrun ranks as one job (MULTI_CPU) when told the
                # device is the CPU; without it every rank would train alone, unaware of the others.
                kwargs.setdefault("use_cpu", True)
            kwargs.setdefault("dataloader_pin_memory", _has_cuda())  # pinning without a GPU only warns
            if not any(key in given for key in CHECKPOINTING_KEYS):  # on where a backward pass runs, unless disabled
                kwargs["gradient_checkpointing"] = _default_checkpointing(given, built[FinetuningArguments])
        built[cls] = construct(cls, kwargs)

    methods = {name: built[m.arguments] for name, m in METHODS.items() if m.arguments is not None}
    args = RunArguments(
        model=built[ModelArguments],
        data=built[DataArguments],
        finetuning=built[FinetuningArguments],
        training=built[classes[-1]],
        methods=methods,
        given=given,
    )
    if args.training.packing:  # TRL's own packing lets rows attend to each other: llmtune packs them itself
        args.data.neat_packing, args.training.packing = True, False
    validate(args, for_training=for_training)
    return args


def validate(args: RunArguments, *, for_training: bool = True) -> None:
    """Every check that needs no model: the stage, the method and the template (a misspelt name first), the
    values on their own (:func:`~llmtune.hparams.parser.check_values`), the model's name and options,
    quantisation and the method's own checks."""
    check_stage(args.finetuning.stage)  # what the run is comes first: a misspelt name is named before any value
    method = get_method(args.finetuning.finetuning_type)
    if args.data.template not in TEMPLATES:
        raise one_of("template", args.data.template, TEMPLATES)
    check_values(args, for_training=for_training)
    check_model_args(args.model)
    check_quantization(args)
    method.check_run(args)  # the method's own combinations of options
    args.model.compute_dtype = compute_dtype_name(bool(args.training.bf16), bool(args.training.fp16))


def load_run_arguments(tokens: list[str], *, for_training: bool = True) -> RunArguments:
    """``llmtune train`` argv (after the subcommand) -> validated :class:`RunArguments`."""
    return parse_args(read_file_and_flags(tokens), for_training=for_training)


def _default_checkpointing(given: dict[str, Any], finetuning: FinetuningArguments) -> bool:
    from llmtune.hparams.training_args import gradient_checkpointing_setting

    method = METHODS.get(finetuning.finetuning_type)  # an unknown name is refused in validate()
    return gradient_checkpointing_setting(given, finetuning.finetuning_type, method is None or method.backward)[0]


def _check_precision(given: dict[str, Any]) -> None:
    if given.get("bf16") or given.get("fp16"):
        check_precision(bool(given.get("bf16")), bool(given.get("fp16")))


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_accelerator() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available())
