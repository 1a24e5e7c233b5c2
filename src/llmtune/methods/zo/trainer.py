"""``ZerothOrderTrainer``: llmtune's trainer with MeZO's two forward passes in place of the backward.

It overrides ``training_step`` (the SPSA estimate on each micro-batch) and ``create_optimizer``
(a :mod:`~llmtune.methods.zo.optimizer` optimizer, whose ``step()`` HF's loop calls as usual and
whose ``state_dict()`` carries the seed stream into ``optimizer.pt``). Gradient clipping and the
gradient norm do not apply (there are no gradients): ``_clip_grad_norm`` and ``_get_grad_norm``
return None, and the logs carry ``zo_projected_grad``, ``zo_loss_plus``, ``zo_loss_minus`` and
``zo_skipped`` (the share of skipped updates) instead.

The forwards run in eval mode (dropout off, so both see the same network) under ``torch.no_grad``,
with the run's mixed precision (``bf16``/``fp16`` autocast); the trainable weights are in that half
dtype too (updated with stochastic rounding), or float32 with ``zo_master_weights``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from llmtune.errors import NotImplementedYetError, NumericalError
from llmtune.methods.zo import objectives
from llmtune.methods.zo.adamu import ZerothOrderAdaMU
from llmtune.methods.zo.config import ZerothOrderArguments
from llmtune.methods.zo.optimizer import ZerothOrderSGD
from llmtune.methods.zo.rounding import HALF_DTYPES
from llmtune.train import checkpoint as ckpt
from llmtune.train.memory import estimate_training_bytes
from llmtune.train.trainer import LlmtuneTrainer

logger = logging.getLogger("llmtune")


class ZerothOrderTrainer(LlmtuneTrainer):
    """Forward-only fine-tuning: MeZO / ZO-AdaMU on the model's loss or a non-differentiable metric.

    The options come as the constructor's ``zo_arguments`` (the registry's ``trainer_kwargs``).
    """

    def __init__(self, *args, zo_arguments: ZerothOrderArguments | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.zo_args = zo_arguments or ZerothOrderArguments()
        _check_batch_contract(self.zo_args.zo_objective, self.train_dataset)
        # fp16's loss scaler would find no gradients to unscale and refuse to step; zo has nothing to scale.
        if getattr(self.accelerator, "scaler", None) is not None:
            self.accelerator.scaler = None
        self.zo_optimizer: ZerothOrderSGD | None = None
        self.add_callback(_ZerothOrderMonitor(self))

    # -- the optimizer --------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = self.zo_optimizer = build_optimizer(
                self.zo_args,
                _parameter_groups(self, model or self.model),
                lr=self.args.learning_rate,
                seed=self.args.seed,
                total_steps=self.state.max_steps,
            )
            if isinstance(self.zo_optimizer, ZerothOrderAdaMU):
                logger.info(
                    "zo_optimizer: adamu keeps momentum buffers of %.1f MiB", self.zo_optimizer.momentum_bytes / 2**20
                )
        return self.optimizer

    @classmethod
    def memory_estimate(cls, model: torch.nn.Module, args=None) -> dict[str, int]:
        """Weights in their own dtypes (half precision unless ``zo_master_weights``), no gradients, and as
        "optimizer" what a step holds besides them: the perturbation ``z`` of the largest trainable parameter
        (with half-precision weights also the perturbed copy :meth:`ZerothOrderSGD._seen_direction` makes),
        ZO-AdaMU's momentum buffers and its two draws."""
        trainable = [p for p in model.parameters() if p.requires_grad]
        estimate = estimate_training_bytes(model, optimizer_bytes_per_param=0, gradient_bytes_per_param=0)
        largest = max(trainable, key=lambda p: p.numel(), default=None)
        step, notes = 0, []
        if largest is not None:
            half = largest.dtype in HALF_DTYPES
            step = largest.numel() * largest.element_size() * (2 if half else 1)
            notes.append("z and a perturbed copy of the largest weight" if half else "z of the largest weight")
        zo = args.methods.get("zo") if args is not None else None
        if largest is not None and zo is not None and zo.zo_optimizer == "adamu":
            step += sum(p.numel() * p.element_size() for p in trainable)  # momentum h
            step += 2 * largest.numel() * largest.element_size()  # the draws z_c, z_h
            notes.append("adamu's momentum")
        estimate["optimizer"] = step
        estimate["total"] = estimate["weights"] + step
        estimate["optimizer_note"] = ", ".join(notes)
        return estimate

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # PEFT's load_adapter upcasts half-precision adapters to float32 (autocast_adapter_dtype): a resumed
        # bf16 run must keep training the bf16 weights it saved, so every trainable dtype is put back.
        target = model if model is not None else self.model
        dtypes = {name: p.dtype for name, p in target.named_parameters() if p.requires_grad}
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for name, param in target.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])

    def _clip_grad_norm(self, model):
        return None  # no gradients exist

    def _get_grad_norm(self, model, grad_norm=None):
        return None

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """QA batches (``zo_objective: f1``) are evaluated by the objective: the eval loss is minus the mean F1."""
        if objectives.GOLD_ANSWERS not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.zo_objective(model, inputs).to(self.args.device)
        return loss, None, None

    # -- one micro-batch ------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Estimate the projected gradient on ``inputs`` (2 forwards per query); return the mean loss."""
        optimizer = self.zo_optimizer
        self._start_queries(optimizer)
        inputs = self._prepare_inputs(inputs)
        scaled_by_tokens = self.zo_args.zo_objective == "loss" and (
            self.model_accepts_loss_kwargs and num_items_in_batch is not None
        )
        share = 1.0 if scaled_by_tokens else 1.0 / self.current_gradient_accumulation_steps
        if scaled_by_tokens and self.args.average_tokens_across_devices:
            # num_items_in_batch counts every process's tokens and step() averages the processes' estimates:
            # scale by the process count, as HF's compute_loss does before DDP averages gradients.
            share *= self.accelerator.num_processes

        def objective() -> torch.Tensor:
            with self.compute_loss_context_manager():
                return self.zo_objective(model, inputs, num_items_in_batch if scaled_by_tokens else None) * share

        model.eval()  # dropout off: both forwards see the same network
        try:
            estimates = [optimizer.estimate(model, objective, query) for query in self._queries(optimizer)]
        finally:
            model.train()  # as HF's training_step leaves it (logging reads the mode)
        return torch.tensor(self._mean_loss(estimates), device=self.args.device)

    # Hooks a multi-query subclass (AdaZeta) overrides; MeZO runs every query in this process.

    def _start_queries(self, optimizer) -> None:
        """Called once per micro-batch before its queries."""

    def _queries(self, optimizer):
        """The query indices this process evaluates."""
        return range(optimizer.num_queries)

    def _mean_loss(self, estimates) -> float:
        """The logged loss: the mean of (L+ + L-)/2 over the queries."""
        return sum((plus + minus) / 2 for plus, minus, _ in estimates) / len(estimates)

    def zo_objective(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """The value both forwards compute (see :mod:`~llmtune.methods.zo.objectives`)."""
        kind = self.zo_args.zo_objective
        if kind == "loss":
            return objectives.language_model_loss(model, inputs, num_items_in_batch)
        if kind == "accuracy":
            return objectives.negative_accuracy(model, inputs)
        return objectives.negative_f1(model, inputs, self.processing_class, self.zo_args.zo_max_new_tokens)


def trainer_kwargs(args) -> dict:
    """The registry's ``trainer_kwargs``: the ``zo_*`` options reach the trainer as a constructor argument."""
    return {"zo_arguments": args.methods["zo"]}


def build_optimizer(
    zo: ZerothOrderArguments, params, *, lr: float, seed: int, total_steps: int | None = None
) -> ZerothOrderSGD:
    """The optimizer ``zo_optimizer`` names, with the ``zo_*`` options."""
    common = {"lr": lr, "eps": zo.zo_eps, "seed": seed, "max_grad_ratio": zo.grad_ratio_guard}
    if zo.zo_optimizer == "adamu":
        return ZerothOrderAdaMU(
            params, **common, **zo.adamu_options(), total_steps=total_steps, cache_directions=zo.zo_cache_directions
        )
    return ZerothOrderSGD(params, **common, num_queries=zo.zo_num_queries, cache_directions=zo.zo_cache_directions)


def _parameter_groups(trainer: LlmtuneTrainer, model: torch.nn.Module) -> list[dict]:
    """Trainable parameters with ``weight_decay``, and biases/norms without (as HF's Trainer groups them)."""
    decay = set(trainer.get_decay_parameter_names(model))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if n in decay], "weight_decay": trainer.args.weight_decay},
        {"params": [p for n, p in trainable if n not in decay], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _check_batch_contract(objective: str, dataset) -> None:
    needed = objectives.BATCH_KEYS[objective]
    columns = set(getattr(dataset, "column_names", None) or ())
    if objective == "accuracy" and {"option_ids", "label"} <= columns:
        return  # train_as_classification features: the classification collator makes option batches
    if objective == "f1" and {"prompt_ids", "answers"} <= columns:
        return  # QA features (llmtune.methods.zo.qa): its collator adds the gold answers
    missing = [key for key in needed if key not in columns]
    if missing:
        raise NotImplementedYetError(
            f"zo_objective: {objective!r} needs batches with {' and '.join(needed)}"
            + (
                " or train_as_classification: true on a choice task"
                if objective == "accuracy"
                else " (QA tasks such as squad or demo_squad as dataset)"
            )
            + "; this training data has none: use zo_objective: loss"
        )


class LossTrend:
    """Whether a loss is climbing away: its exponential moving average (span ``window``) against the
    mean of its first ``window`` values.

    ``update(loss)`` returns True once the average exceeds ``factor`` times that start (after at least
    ``2 * window`` values). A single outsized step is the skip guard's business; this sees the slow
    climb of a learning rate that is too high (on the tiny model, ``zo`` at 1e-3 went from 4.1 to 12.2
    over 600 steps with every single update within bounds).
    """

    def __init__(self, factor: float, window: int = 20):
        self.factor, self.window = factor, window
        self.count, self.start, self.average = 0, 0.0, 0.0

    def update(self, loss: float) -> bool:
        self.count += 1
        if self.count <= self.window:
            self.start += (loss - self.start) / self.count
            self.average = self.start
            return False
        self.average += (loss - self.average) * 2 / (self.window + 1)
        return self.factor > 0 and self.count >= 2 * self.window and self.average > self.factor * self.start > 0


class _ZerothOrderMonitor(TrainerCallback):
    """After each optimizer step: log the estimate, warn about skipped updates, stop after too many, or when
    the loss climbs away (:class:`LossTrend`)."""

    def __init__(self, trainer: ZerothOrderTrainer):
        self.trainer = trainer
        zo = trainer.zo_args
        self.trend = LossTrend(zo.zo_divergence_factor if zo.zo_objective == "loss" else 0.0)

    def on_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        optimizer, report = trainer.zo_optimizer, trainer.zo_optimizer.last_report
        metrics = trainer._metrics["train"]
        metrics["zo_loss_plus"].append(report.loss_plus)
        metrics["zo_loss_minus"].append(report.loss_minus)
        metrics["zo_projected_grad"].append(sum(report.projected_grads) / len(report.projected_grads))
        metrics["zo_skipped"].append(float(report.skipped is not None))
        if report.skipped is None:
            if trainer.stop_on_nan and self.trend.update((report.loss_plus + report.loss_minus) / 2):
                step = state.global_step + 1
                last = ckpt.latest_complete_checkpoint(Path(args.output_dir), warn=False)
                kept = f"the last checkpoint is {last}" if last else "no checkpoint was saved"
                raise NumericalError(
                    f"zo: the loss is climbing: its moving average {self.trend.average:.4g} at step {step} is over "
                    f"{self.trend.factor:g}x its first {self.trend.window} steps' {self.trend.start:.4g}; training "
                    f"stopped and {kept}. Lower learning_rate (now {args.learning_rate:g}) or zo_eps, or set "
                    "zo_divergence_factor: 0 to train on"
                )
            return
        step = state.global_step + 1
        logger.warning("zo: step %d: update skipped: %s", step, report.skipped)
        skips = optimizer.consecutive_skips
        if trainer.stop_on_nan and skips >= trainer.zo_args.zo_max_skips:
            last = ckpt.latest_complete_checkpoint(Path(args.output_dir), warn=False)
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before them"
            raise NumericalError(
                f"zo: {skips} updates in a row were skipped (steps {step - skips + 1}-{step}; last: {report.skipped}); "
                f"training stopped with the weights of step {step - skips} and {kept}. Lower learning_rate or "
                "zo_eps, or raise zo_max_grad_ratio"
            )
