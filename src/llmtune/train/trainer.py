"""``LlmtuneTrainer``: TRL's ``SFTTrainer`` with saves you can trust and a loss you can trust.

It overrides four hooks and nothing else:

* ``_save_checkpoint`` writes each ``checkpoint-N`` into a staging folder, verifies the weights,
  marks it complete and renames it into place (see :mod:`llmtune.train.checkpoint`);
* ``save_model`` verifies every weight file it writes;
* ``training_step`` stops the run on a NaN/inf loss before the bad gradient reaches the weights;
* ``compute_loss`` scores classification batches (``train_as_classification``, see
  :mod:`llmtune.train.classification`) by cross-entropy over the options, and computes the SFT loss
  either with TRL's fused LM head or with the LM head run at the labelled positions only (``lm_head_loss``).

Method trainers (BAdam, ZO, ...) subclass this one.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from transformers import TrainerCallback
from trl import SFTTrainer

from llmtune.model.head import causal_lm_loss
from llmtune.model.loader import upcast_trainable
from llmtune.train import checkpoint as ckpt
from llmtune.train.classification import compute_classification_loss, is_classification_batch

logger = logging.getLogger("llmtune")


class LlmtuneTrainer(SFTTrainer):
    """SFTTrainer with atomic, verified checkpoints and a non-finite-loss guard."""

    def __init__(
        self,
        *args,
        finetuning_type: str = "full",
        stop_on_nan: bool = True,
        lm_head_loss: str = "auto",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.lm_head_loss = resolve_lm_head_loss(lm_head_loss, self.args.device)
        if getattr(self.model, "is_loaded_in_4bit", False) or getattr(self.model, "is_loaded_in_8bit", False):
            # TRL casts the trainable parameters of a quantised (QLoRA) model to bfloat16; train them in
            # float32 instead, as PEFT and LLaMA-Factory do, so that Adam's small updates are not rounded away.
            upcast_trainable(self.model)
        self.finetuning_type = finetuning_type
        self.stop_on_nan = stop_on_nan
        self.nonfinite_loss: tuple[int, float] | None = None  # (step, loss) of the first NaN/inf loss
        self._staging_dir: str | None = None
        self.add_callback(_OverflowLogger(self))

    # -- classification batches (train_as_classification) ------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Cross-entropy over the options for classification batches, else the SFT loss (``lm_head_loss``)."""
        if is_classification_batch(inputs):
            return compute_classification_loss(self, model, inputs, return_outputs)
        if self.lm_head_loss == "logits":
            return self._logits_loss(model, inputs, return_outputs, num_items_in_batch)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _logits_loss(self, model, inputs, return_outputs, num_items_in_batch):
        """transformers' causal-LM loss with the LM head run only at labelled positions
        (:func:`llmtune.model.head.causal_lm_loss`), normalised as HF's ``Trainer.compute_loss`` does
        (by ``num_items_in_batch``), with TRL's token-accuracy and token-count metrics."""
        inputs = {**inputs, "use_cache": False}
        items = num_items_in_batch if self.model_accepts_loss_kwargs else None
        loss, logits, targets = causal_lm_loss(model, inputs, items)
        if self.args.average_tokens_across_devices and items is not None:
            # as Trainer.compute_loss: the gradients are averaged over processes, the token count was summed
            processes = self.accelerator.num_processes // (self.get_tp_size() if hasattr(self, "get_tp_size") else 1)
            loss = loss * (processes if self.args.n_gpu <= 1 else self.args.n_gpu)
        mode = "train" if self.model.training else "eval"
        with torch.no_grad():
            correct = self.accelerator.gather_for_metrics((logits.argmax(-1) == targets).sum()).sum()
            valid = self.accelerator.gather_for_metrics(torch.tensor(targets.numel(), device=logits.device)).sum()
        self._metrics[mode]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                tokens = inputs["attention_mask"].sum()
            else:  # padding-free rows (packing): one row of real tokens
                tokens = torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
            self._total_train_tokens += self.accelerator.gather_for_metrics(tokens).sum().item()
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, SimpleNamespace(loss=loss, logits=logits)) if return_outputs else loss

    # -- numerical health ------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.stop_on_nan and not torch.isfinite(loss).all():
            # Drop this step's gradients so the optimizer leaves the weights as they were.
            model.zero_grad(set_to_none=True)
            if self.nonfinite_loss is None:
                self.nonfinite_loss = (self.state.global_step + 1, float(loss.detach().float().mean()))
            self.control.should_training_stop = True
        return loss

    # -- checkpoints -----------------------------------------------------------------------------

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is being written, Trainer writes into the staging folder.
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        if self.nonfinite_loss is not None:
            return  # never save the step that produced a NaN/inf loss
        run_dir = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"
        staging = ckpt.staging_root(run_dir)
        final = run_dir / name
        previous = ckpt.latest_complete_checkpoint(run_dir, warn=False) if self.args.should_save else None
        if self.args.should_save:
            shutil.rmtree(staging / name, ignore_errors=True)
            staging.mkdir(parents=True, exist_ok=True)
        _barrier()
        self._staging_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        except OSError as err:
            shutil.rmtree(staging / name, ignore_errors=True)
            raise ckpt.describe_save_error(err, final, previous) from err
        finally:
            self._staging_dir = None
        _barrier()
        if self.args.should_save:
            ckpt.write_marker(staging / name, step=self.state.global_step, finetuning_type=self.finetuning_type)
            ckpt.publish(staging / name, final)
            for path in ckpt.rotate_checkpoints(run_dir, self.args.save_total_limit):
                logger.info("deleted %s (save_total_limit=%s)", path, self.args.save_total_limit)
        _barrier()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model (or adapter), then check every weight file before calling it saved."""
        output_dir = output_dir or self.args.output_dir
        super().save_model(output_dir, _internal_call=_internal_call)
        _barrier()
        if self.args.should_save:
            count = ckpt.verify_saved_weights(Path(output_dir), self.model)
            logger.debug("verified %d tensors in %s", count, output_dir)

    def save_final_model(self) -> Path:
        """Save the trained model (or adapter) into ``output_dir`` atomically and verified."""
        out = Path(self.args.output_dir)
        staged = ckpt.staging_root(out) / "final"
        if self.args.should_save:
            shutil.rmtree(staged, ignore_errors=True)
        try:
            self.save_model(str(staged))
        except OSError as err:
            shutil.rmtree(staged, ignore_errors=True)
            raise ckpt.describe_save_error(err, out, ckpt.latest_complete_checkpoint(out, warn=False)) from err
        if self.args.should_save:
            ckpt.write_marker(staged, step=self.state.global_step, finetuning_type=self.finetuning_type)
            ckpt.publish_into(staged, out)
            shutil.rmtree(ckpt.staging_root(out), ignore_errors=True)
        _barrier()
        return out


def resolve_lm_head_loss(choice: str, device: torch.device) -> str:
    """``fused`` or ``logits`` for ``lm_head_loss: auto|fused|logits`` on ``device``.

    ``auto`` keeps TRL's fused LM head where its Triton kernel runs (it then scores only the labelled
    positions); elsewhere TRL folds every position's tiles in torch and recomputes the head in the
    backward pass, slower than the model's own loss (measured: docs/benchmarks.md), so ``logits``.
    """
    if choice != "auto":
        return choice
    try:
        from trl.kernels.chunked_logprob import _use_triton

        return "fused" if _use_triton(device) else "logits"
    except ImportError:  # a TRL without that module: Triton runs on CUDA devices
        return "fused" if device.type == "cuda" else "logits"


class _OverflowLogger(TrainerCallback):
    """fp16: say so when the gradient scaler skips a step because the gradients overflowed."""

    def __init__(self, trainer: LlmtuneTrainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        if args.fp16 and getattr(self.trainer.accelerator, "optimizer_step_was_skipped", False):
            logger.warning(
                "fp16 overflow at step %d: the update was skipped and the loss scale lowered", state.global_step + 1
            )


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.barrier()
