"""The one training path every finetuning type follows.

arguments (validated) -> output_dir checked -> datasets checked -> tokenizer -> tokenised data
-> model -> the method prepares it -> trainer -> train -> verified save -> log, plot.

Everything a user can get wrong is found before the model's weights load.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from llmtune.data import check_datasets, get_dataset
from llmtune.data.packing import PackedCollator, prepare_model_for_packing
from llmtune.errors import ConfigError, NumericalError, TrainingInterrupted
from llmtune.hparams.parser import RUN_CONFIG, RunArguments
from llmtune.hparams.training_args import gradient_checkpointing_setting
from llmtune.launch import is_main_process
from llmtune.methods import get_method
from llmtune.model import count_parameters, load_model, load_tokenizer
from llmtune.model.loader import training_load_dtype
from llmtune.train import checkpoint as ckpt
from llmtune.train.callbacks import GracefulStop, JsonlLogCallback
from llmtune.train.classification import classification_trainer_kwargs, get_classification_dataset
from llmtune.train.estimate import warn_if_over_gpu
from llmtune.train.memory import out_of_memory_error
from llmtune.train.plot import plot_loss
from llmtune.train.status import mark_running, tracks_status

logger = logging.getLogger("llmtune")


@dataclass
class TrainResult:
    """What a finished run produced."""

    output_dir: Path
    metrics: dict[str, Any]
    log_history: list[dict[str, Any]]
    model: Any = None  # the trained model (a PeftModel for adapter methods)


def resolve_resume(args: RunArguments) -> str | None:
    """``resume_from_checkpoint``: a path, or true for the newest complete checkpoint in output_dir."""
    value = args.training.resume_from_checkpoint
    if value is None or (isinstance(value, str) and value.strip().lower() in ("false", "no", "")):
        return None
    out = Path(args.training.output_dir)
    if value is True or str(value).strip().lower() in ("true", "yes", "latest"):
        latest = ckpt.latest_complete_checkpoint(out)
        if latest is None:
            raise ConfigError(f"resume_from_checkpoint: no complete checkpoint in {out} to resume from")
        return str(latest)
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"resume_from_checkpoint: {value!r} is not a folder")
    if not ckpt.is_complete(path):
        raise ConfigError(f"resume_from_checkpoint: {value!r} is incomplete (no valid {ckpt.COMPLETE_MARKER})")
    return str(path)


def check_output_dir(args: RunArguments, resume: str | None) -> None:
    """Refuse a non-empty output_dir unless the user asked to resume or to overwrite it.

    Only rank 0 checks: the other ranks would race it, seeing the folder rank 0 has just begun.
    """
    if not is_main_process():
        return
    out = Path(args.training.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {str(out)!r} is a file, not a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries or resume is not None or args.training.overwrite_output_dir:
        return
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise ConfigError(
        f"output_dir: {str(out)!r} is not empty ({len(entries)} entries: {shown}); set overwrite_output_dir: true "
        "to replace it, resume_from_checkpoint: true to continue it, or choose another output_dir"
    )


def prepare_output_dir(args: RunArguments, resume: str | None) -> Path:
    """Create output_dir; with overwrite_output_dir (and no resume) empty it first, saying so."""
    out = Path(args.training.output_dir)
    if not is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        return out
    if resume is None and args.training.overwrite_output_dir and out.is_dir() and any(out.iterdir()):
        logger.warning("overwrite_output_dir: emptying %s", out)
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def describe_gradient_checkpointing(args: RunArguments, method: Any) -> str:
    """``on (why)`` or ``off (why)``: what the run does, and the key or default that decided it."""
    on = bool(args.training.activation_checkpointing)
    setting, why = gradient_checkpointing_setting(args.given, method.name, method.backward)
    return f"{'on' if on else 'off'} ({why if setting == on else 'set on the arguments'})"


def save_config(out: Path, args: RunArguments) -> None:
    """Write the keys the user set (no secrets) as ``training_args.yaml``, to rerun the same job."""
    if not is_main_process():
        return
    with (out / RUN_CONFIG).open("w", encoding="utf-8") as handle:
        yaml.safe_dump(args.public_config(), handle, sort_keys=False, allow_unicode=True)


@tracks_status  # the end state (finished / interrupted / failed) goes into output_dir/run_status.json
def run_sft(args: RunArguments, callbacks: list | None = None) -> TrainResult:
    """Train with ``args`` and save the result into ``output_dir``. See the module docstring."""
    from transformers import set_seed

    method = get_method(args.finetuning.finetuning_type)
    resume = resolve_resume(args)
    check_output_dir(args, resume)
    logger.info("gradient checkpointing: %s", describe_gradient_checkpointing(args, method))
    report = check_datasets(args.data)  # every row checked before any model loads
    logger.info("data: %s", report.summary())

    tokenizer = load_tokenizer(args.model)
    extra: dict[str, Any] = {}
    own = method.own_data(args, tokenizer)
    if own is not None:
        prepared, extra = own
    elif args.finetuning.train_as_classification:
        prepared = get_classification_dataset(args.data, tokenizer, seed=args.training.seed)
        extra = classification_trainer_kwargs(args.training, tokenizer)
    else:
        prepared = get_dataset(args.data, tokenizer, seed=args.training.seed)
        if args.data.neat_packing:
            extra = {"data_collator": PackedCollator(pad_token_id=tokenizer.pad_token_id)}
    logger.info("tokenised: %s", prepared.report.summary())
    out = prepare_output_dir(args, resume)
    save_config(out, args)
    mark_running(out)  # run_status.json: readers (the web UI) find the run from here on

    warn_if_over_gpu(args)  # advice from the model's config alone, before the weights load
    set_seed(args.training.seed)  # adapters and method state are initialised from this seed, reproducibly
    model = load_model(args.model, training_load_dtype(args.training.bf16, args.training.fp16))
    model = method.prepare_model(model, args)  # frozen weights stay in the compute dtype, trained ones fp32
    if args.data.neat_packing:
        prepare_model_for_packing(model)  # refuse rather than let packed rows attend to each other
    trainable, total = count_parameters(model)
    logger.info(
        "finetuning_type=%s: %s of %s parameters trainable (%.4f%%)",
        method.name,
        f"{trainable:,}",
        f"{total:,}",
        100.0 * trainable / max(total, 1),
    )
    if method.report is not None:  # a method's own line about what it trains (e.g. the ratio to LoRA)
        logger.info("%s", method.report_fn()(model, args))

    args.training.max_length = None  # rows are already cut to cutoff_len (and counted): TRL must not re-cut
    stop = GracefulStop()
    trainer = method.trainer_class()(
        model=model,
        args=args.training,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        processing_class=tokenizer,
        callbacks=[JsonlLogCallback(out), stop, *(callbacks or [])],
        finetuning_type=method.name,
        stop_on_nan=args.finetuning.stop_on_nan,
        lm_head_loss=args.finetuning.lm_head_loss,
        **method.trainer_arguments(args),  # the method's own options, as constructor arguments
        **extra,
    )
    with stop.installed():
        try:
            result = trainer.train(resume_from_checkpoint=resume)
        except torch.OutOfMemoryError as err:
            raise out_of_memory_error(trainer.model, method.name, err) from err

    if trainer.nonfinite_loss is not None:
        step, loss = trainer.nonfinite_loss
        last = ckpt.latest_complete_checkpoint(out, warn=False)
        keep = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
        raise NumericalError(
            f"the loss became {loss} at step {step}; training stopped and {keep}. Lower learning_rate, "
            "set max_grad_norm, or use bf16 instead of fp16"
        )
    finished = trainer.state.global_step >= trainer.state.max_steps
    if stop.signum is not None and not finished:
        last = ckpt.latest_complete_checkpoint(out, warn=False)
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(stop.signum).name} after step {stop.stopped_at}; checkpoint saved in {last}. "
            f"Resume with: llmtune train {out / RUN_CONFIG} --resume_from_checkpoint true",
            stop.signum,
        )

    trainer.save_final_model()
    metrics = dict(result.metrics)
    if prepared.eval is not None:
        metrics.update(trainer.evaluate())
    if trainer.args.should_save:
        trainer.save_state()
        (out / "all_results.json").write_text(json.dumps(metrics, indent=2))
        if args.finetuning.plot_loss:
            for path in plot_loss(out):
                logger.info("wrote %s", path)
    return TrainResult(out, metrics, list(trainer.state.log_history), trainer.model)
