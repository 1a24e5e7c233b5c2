"""``SparseTrainer``: the training path's trainer with a :class:`RatioBlockOptimizer`.

Besides the optimizer it overrides the two gradient-norm hooks: the dense gradients are freed as
soon as their selected entries are collected, so clipping and the logged ``grad_norm`` use the
optimizer's compact gradients. Under DDP (as for ``block``) the reducer never syncs; the compact
gradients are averaged across processes in one all-reduce at the end of each accumulation (every
process selects the same entries: the selections are seeded).
"""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

from llmtune.methods.block.model import BadamSetup, setup_of_run
from llmtune.methods.block.optimizer import HALF_DTYPES
from llmtune.methods.block.partition import scope_parameters
from llmtune.methods.block.trainer import BlockTrainer
from llmtune.methods.sparse.config import SparseArguments
from llmtune.methods.sparse.optimizer import RatioBlockOptimizer
from llmtune.train.memory import estimate_training_bytes

logger = logging.getLogger("llmtune")


class SparseTrainer(BlockTrainer):
    """``LlmtuneTrainer`` whose optimizer updates a sliding fraction of every weight (``finetuning_type: sparse``)."""

    KIND = "sparse"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.sparse_args is None:
            self.sparse_args = SparseArguments()
        self.add_callback(_DetachGradientHooks())

    @classmethod
    def build_optimizer(cls, setup: BadamSetup, args, zero3: bool = False) -> torch.optim.Optimizer:
        """A :class:`RatioBlockOptimizer` with the AdamW hyperparameters of ``args`` (the TrainingArguments);
        ``zero3`` is always false here: the compatibility table refuses sparse under ZeRO."""
        optim = str(getattr(args.optim, "value", args.optim))
        if not optim.startswith("adamw"):
            logger.warning("optim: %r is ignored: finetuning_type: sparse runs its own AdamW", optim)
        return RatioBlockOptimizer(
            scope_parameters(setup.blocks),
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
            update_ratio=setup.sparse.badam_update_ratio,
            mask_mode=setup.sparse.badam_mask_mode,
            switch_every=setup.block.switch_every,
            seed=setup.seed,
            verbose=setup.block.badam_verbose,
        )

    def _local_gradients(self) -> list[torch.Tensor]:
        """The compact gradients of the selected entries (the dense ones are freed as they complete)."""
        return self._ratio_optimizer().compact_gradients()

    def _ratio_optimizer(self) -> RatioBlockOptimizer:
        return getattr(self.optimizer, "optimizer", self.optimizer)  # unwrap accelerate's AcceleratedOptimizer

    def _clip_grad_norm(self, model):
        return self._ratio_optimizer().clip_grad_norm_(self.args.max_grad_norm)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None:
            grad_norm = self._ratio_optimizer().clip_grad_norm_(float("inf"))
        return super()._get_grad_norm(model, grad_norm)

    @classmethod
    def memory_estimate(cls, model: torch.nn.Module, args) -> dict[str, int]:
        """Weights; compact fp32 gradients of the selected entries plus one dense gradient at a time;
        moments (and fp32 masters for half-precision weights, indices for scatter) of the selected entries."""
        setup = setup_of_run(model, args, cls.KIND)
        scope = [param for _, param in scope_parameters(setup.blocks)]
        ratio = setup.sparse.badam_update_ratio
        half = any(param.dtype in HALF_DTYPES for param in scope)
        per_entry = 8 + (4 if half else 0) + (8 if setup.sparse.badam_mask_mode == "scatter" else 0)
        estimate = estimate_training_bytes(
            model, optimizer_bytes_per_param=ratio * per_entry, trainable=scope, gradient_bytes_per_param=4 * ratio
        )
        dense = max(param.numel() * param.element_size() for param in scope)  # the gradient being collected
        estimate["gradients"] += dense
        estimate["total"] += dense
        estimate["trainable_at_once"] = sum(param.numel() for param in scope)
        return estimate


class _DetachGradientHooks(TrainerCallback):
    """After training, take the optimizer's gradient hooks off the model, so that later backward passes
    on the trained model leave ordinary ``.grad`` tensors."""

    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        inner = getattr(optimizer, "optimizer", optimizer)
        if isinstance(inner, RatioBlockOptimizer):
            inner.remove_hooks()
