"""``BlockTrainer``: the training path's trainer with a :class:`BlockOptimizer`.

It overrides ``create_optimizer`` (and, when activation checkpointing is on, drops the hook that
makes the frozen embedding's output require a gradient), and under DDP ``training_step``: DDP's
reducer knows only the parameters trainable when it was built, so it is kept out of the way (every
micro-batch runs under ``no_sync``) and the active block's gradients are averaged across processes
here in one all-reduce at the end of each accumulation, before clipping and the step. Under
DeepSpeed ZeRO-3 DeepSpeed steps the optimizer and its partitions are rebuilt at each switch
(:mod:`llmtune.methods.block.zero3`). The
optimizer (and with it the block schedule, the fp32 masters and the Adam state of the active block)
is saved into every checkpoint's ``optimizer.pt`` by the Trainer as any optimizer is, and restored
from it on resume.
"""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

from llmtune.errors import ConfigError
from llmtune.methods.block.config import BlockArguments
from llmtune.methods.block.model import BadamSetup, badam_setup, setup_of_run
from llmtune.methods.block.normalise import refuse_unsupported
from llmtune.methods.block.optimizer import HALF_DTYPES, BlockOptimizer
from llmtune.methods.block.zero3 import check_supported, zero3_optimizer
from llmtune.train.memory import estimate_training_bytes
from llmtune.train.trainer import LlmtuneTrainer

logger = logging.getLogger("llmtune")

# Keys of Trainer.get_optimizer_cls_and_kwargs that mean the optimizer wants the whole model, not a block.
_WHOLE_MODEL_KEYS = ("params", "model", "optimizer_dict")


class BlockTrainer(LlmtuneTrainer):
    """``LlmtuneTrainer`` whose optimizer trains one block at a time (``finetuning_type: block``).

    The ``badam_*`` options come as ``block_arguments`` (and ``sparse_arguments`` for the ratio mode):
    the registry's ``trainer_kwargs``.
    """

    KIND = "block"

    def __init__(self, *args, block_arguments: BlockArguments | None = None, sparse_arguments=None, **kwargs):
        self.block_args = block_arguments or BlockArguments()
        self.sparse_args = sparse_arguments
        training_args = kwargs.get("args")
        if training_args is not None and training_args.world_size > 1:
            # After a switch the block DDP registered gets no gradient: let DDP find it unused.
            training_args.ddp_find_unused_parameters = True
        super().__init__(*args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.args.world_size <= 1 or self.is_deepspeed_enabled or not hasattr(model, "no_sync"):
            return super().training_step(model, inputs, num_items_in_batch)
        with model.no_sync():  # DDP's reducer never syncs: it knows only the first block's parameters
            loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:  # the last micro-batch of the accumulation
            average_across_processes(self._local_gradients())
        return loss

    def _local_gradients(self) -> list[torch.Tensor]:
        """The gradients this process accumulated for the coming step (the active block's)."""
        inner = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps the optimizer
        if not isinstance(inner, BlockOptimizer):
            return []
        return [param.grad for _, param in inner.active_block.params if param.grad is not None]

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            setup = badam_setup(self.model, self.KIND, self.block_args, self.sparse_args, self.args.seed)
            # Checked when the config was read; again here for trainers built by hand.
            refuse_unsupported(
                setup.kind,
                {"deepspeed": self.args.deepspeed, "fsdp": self.args.fsdp, "fp16": self.args.fp16},
                world_size=self.args.world_size,
            )
            zero3 = self._zero3()
            self.optimizer = self.build_optimizer(setup, self.args, zero3=zero3)
            if zero3:  # DeepSpeed runs the step; the block schedule moves on after it
                self.add_callback(FinishStepAfterDeepSpeed(self.optimizer))
            self._stop_backward_at_the_active_block()
            self._warn_about_untrained_blocks(setup)
        return self.optimizer

    def _zero3(self) -> bool:
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None) if self.is_deepspeed_enabled else None
        return plugin is not None and plugin.zero_stage == 3

    @classmethod
    def build_optimizer(cls, setup: BadamSetup, args, zero3: bool = False) -> torch.optim.Optimizer:
        """A :class:`BlockOptimizer` running ``args.optim`` (AdamW by default) on each block; ``args``
        are the TrainingArguments (usable without a trainer, e.g. by the benchmark). ``zero3``: the
        optimizer DeepSpeed ZeRO-3 wraps (see :mod:`llmtune.methods.block.zero3`)."""
        base_class, base_kwargs = cls.get_optimizer_cls_and_kwargs(args)
        if any(key in base_kwargs for key in _WHOLE_MODEL_KEYS) or not isinstance(base_class, type):
            optim = str(getattr(args.optim, "value", args.optim))
            raise ConfigError(f"optim: {optim!r} needs the whole model and cannot run block by block; use adamw_torch")
        options = setup.block
        return BlockOptimizer(
            setup.blocks,
            weight_decay=args.weight_decay,
            switch_every=options.switch_every,
            switch_mode=options.badam_switch_mode,
            start_block=options.badam_start_block,
            seed=setup.seed,
            base_optimizer=base_class,
            verbose=options.badam_verbose,
            zero3=zero3,
            **base_kwargs,
        )

    def _warn_about_untrained_blocks(self, setup: BadamSetup) -> None:
        # BAdam's known pitfall on small datasets: too few steps for every block to get its turn.
        every, blocks, steps = setup.block.switch_every, len(setup.blocks), self.state.max_steps
        if setup.kind != "block" or not every or setup.block.badam_switch_mode == "fixed":
            return
        trained = -(-steps // every)  # blocks that get at least one step
        if 0 < trained < blocks:
            logger.warning(
                "finetuning_type: block: %d steps at badam_switch_interval %d train only %d of the %d blocks; "
                "lower badam_switch_interval to about %d to train them all",
                steps,
                every,
                trained,
                blocks,
                max(1, steps // blocks),
            )

    def _stop_backward_at_the_active_block(self) -> None:
        # With activation checkpointing on, transformers makes the embedding output require a gradient
        # so that reentrant checkpointed layers get one. Non-reentrant checkpointing (its default) does
        # not need that; without it the backward pass stops at the lowest trainable layer instead of
        # running down to the frozen embedding, which is where BAdam saves backward time.
        kwargs = getattr(self.args, "activation_checkpointing_kwargs", None) or {}
        if getattr(self.model, "_require_grads_hook", None) is not None and not kwargs.get("use_reentrant", False):
            self.model.disable_input_require_grads()

    @classmethod
    def memory_estimate(cls, model: torch.nn.Module, args) -> dict[str, int]:
        """Weights, and gradients and optimizer state of the largest block (fp32 master and its gradient
        on top of AdamW's two moments when the weights are half precision)."""
        largest = max(setup_of_run(model, args, cls.KIND).blocks, key=lambda block: block.numel)
        half = any(param.dtype in HALF_DTYPES for _, param in largest.params)
        estimate = estimate_training_bytes(
            model, optimizer_bytes_per_param=16 if half else 8, trainable=[p for _, p in largest.params]
        )
        estimate["trainable_at_once"] = largest.numel
        estimate["optimized_numels"] = [param.numel() for _, param in largest.params]  # for 8-bit state sizes
        return estimate


class FinishStepAfterDeepSpeed(TrainerCallback):
    """Under ZeRO-3 DeepSpeed steps the optimizer partition group by partition group: the step is counted,
    and the block switched, once the whole step is done."""

    def __init__(self, optimizer: BlockOptimizer):
        self.optimizer = optimizer

    def on_train_begin(self, args, state, control, **kwargs):
        ds = zero3_optimizer(self.optimizer._scope)
        if ds is not None:
            check_supported(ds)

    def on_step_end(self, args, state, control, **kwargs):
        self.optimizer.finish_step()


def average_across_processes(grads: list[torch.Tensor]) -> None:
    """Average ``grads`` (in place) across the processes, in one flat all-reduce.

    Called once per optimizer step, on the gradients each process accumulated over its micro-batches:
    the same mean over the global batch that DDP's reducer computes for the parameters it knows.
    """
    import torch.distributed as dist

    if not grads or not dist.is_available() or not dist.is_initialized():
        return
    flat = torch.cat([grad.reshape(-1).float() for grad in grads])
    dist.all_reduce(flat)  # gloo has no AVG: sum, then divide
    flat /= dist.get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()
