"""``BlockOptimizer``: Adam on one block of parameters at a time (BAdam, Luo et al. 2024, Algorithm 1).

A plain ``torch.optim.Optimizer``, usable without a Trainer::

    blocks = partition_blocks(model)            # llmtune.methods.block.partition
    freeze_outside(model, blocks)
    optimizer = BlockOptimizer(blocks, lr=1e-5, switch_every=50)
    for batch in batches:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

Only the active block has ``requires_grad=True``; every other parameter of the blocks is frozen with
``.grad = None``. The base optimizer (AdamW unless told otherwise) holds state for the active block
only and is rebuilt, with fresh state, at every switch. Half-precision (bf16/fp16) weights of the
active block get an fp32 master copy that the base optimizer updates and that is copied back into the
weights after each step; fp32 weights are updated in place with no copy.

Switching: every block trains for exactly ``switch_every`` optimizer steps, the first one included.
(The reference implementation switches when ``(global_step + 1) % K == 0``, which gives the first
block K-1 steps; llmtune does not.) The block order, the position in it, the step counters and the
fp32 masters are part of :meth:`state_dict`, so a run resumed from a checkpoint continues with the
same block, the same Adam state and the same trajectory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from llmtune.errors import CheckpointError, ConfigError, one_of
from llmtune.methods.block.config import SWITCH_MODES
from llmtune.methods.block.partition import ParamBlock, is_no_decay, scope_parameters
from llmtune.methods.block.zero3 import repartition, zero3_optimizer

logger = logging.getLogger("llmtune")

HALF_DTYPES = (torch.float16, torch.bfloat16)
DECAY, NO_DECAY = 0, 1  # indices of this optimizer's two parameter groups


class BlockOptimizer(torch.optim.Optimizer):
    """Run ``base_optimizer`` on one :class:`ParamBlock` at a time, switching every ``switch_every`` steps.

    Args:
        blocks: the blocks, in their numbering (see :func:`~llmtune.methods.block.partition.partition_blocks`).
        lr: learning rate; an LR scheduler on this optimizer drives the base optimizer's.
        weight_decay: decoupled weight decay for matrices; biases and norm weights get none.
        switch_every: optimizer steps per block; 0 never switches.
        switch_mode: ``random`` (a new permutation of the blocks every pass), ``ascending``,
            ``descending`` or ``fixed`` (the start block for the whole run, its Adam state kept).
        start_block: the first block; default: the first of the order (block 0 ascending, the last
            descending, a random one in random mode).
        seed: seeds the random orders: the permutation of pass ``k`` depends on ``(seed, k)`` only.
        base_optimizer: the optimizer class run on the active block (``torch.optim.AdamW``).
        verbose: 0 silent, 1 log each switch, 2 also log the parameter names.
        zero3: the optimizer DeepSpeed ZeRO-3 wraps (:mod:`llmtune.methods.block.zero3`): DeepSpeed keeps
            the fp32 masters and calls :meth:`step` once per partition group with that group's fp32
            partition in ``param_groups``; the trainer calls :meth:`finish_step` after each optimizer
            step, and a switch rebuilds DeepSpeed's partitions for the new block.
        **base_kwargs: passed to ``base_optimizer`` (``betas``, ``eps``, ``fused``, ...).
    """

    def __init__(
        self,
        blocks: Sequence[ParamBlock],
        *,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        switch_every: int = 100,
        switch_mode: str = "random",
        start_block: int | None = None,
        seed: int = 0,
        base_optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
        verbose: int = 0,
        zero3: bool = False,
        **base_kwargs: Any,
    ):
        if not blocks:
            raise ValueError("BlockOptimizer needs at least one block")
        if switch_mode not in SWITCH_MODES:
            raise one_of("badam_switch_mode", switch_mode, SWITCH_MODES)
        if start_block is not None and not 0 <= start_block < len(blocks):
            raise ConfigError(
                f"badam_start_block: {start_block} must be in 0..{len(blocks) - 1} ({len(blocks)} blocks)"
            )
        self.blocks = list(blocks)
        self.switch_every = max(int(switch_every), 0)
        self.switch_mode = switch_mode
        self.start_block = start_block
        self.seed = int(seed)
        self.verbose = verbose
        self.base_optimizer_class = base_optimizer
        self.zero3 = zero3

        scope = scope_parameters(self.blocks)
        self._scope = [param for _, param in scope]
        self._group_of = {id(p): NO_DECAY if is_no_decay(n, p) else DECAY for n, p in scope}
        groups = [
            {"params": [p for _, p in scope if self._group_of[id(p)] == DECAY], "weight_decay": weight_decay},
            {"params": [p for _, p in scope if self._group_of[id(p)] == NO_DECAY], "weight_decay": 0.0},
        ]
        if zero3:  # DeepSpeed drops empty groups when it wraps this optimizer: their indices must not move
            groups = [group for group in groups if group["params"]]
            self._group_of = {id(p): i for i, group in enumerate(groups) for p in group["params"]}
        self._group_params = [list(group["params"]) for group in groups]  # every scope parameter, by group
        super().__init__(groups, {"lr": lr, "weight_decay": weight_decay, **base_kwargs})

        self.global_step = 0  # optimizer steps taken
        self.steps_in_block = 0  # steps taken on the active block
        self.switches = 0
        self.switch_seconds = 0.0  # time spent switching blocks (new base optimizer, masters), for benchmarks
        self.pass_index = 0  # which pass over the blocks this is (random mode draws a new order for each)
        self.order = self._order_for_pass(0)
        self.position = 0  # index into self.order of the active block
        self.base: torch.optim.Optimizer
        self._masters: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self._activate(self.order[0])

    # -- what is active ------------------------------------------------------------------------

    @property
    def current_block(self) -> int:
        """Index (in ``blocks``) of the block being trained."""
        return self.order[self.position]

    @property
    def active_block(self) -> ParamBlock:
        return self.blocks[self.current_block]

    def fp32_masters(self) -> dict[str, torch.Tensor]:
        """The fp32 master copies, by parameter name: the active block's half-precision weights only."""
        masters = {id(param): master for param, master in self._masters}
        return {name: masters[id(param)] for name, param in self.active_block.params if id(param) in masters}

    def optimizer_state_bytes(self) -> int:
        """Bytes held by the base optimizer's state and the fp32 masters (the active block's only)."""
        total = sum(m.numel() * m.element_size() for _, m in self._masters)
        for state in self.base.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
        return total

    # -- the step ------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """One base-optimizer step on the active block; switch blocks after ``switch_every`` of them."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.zero3:  # one partition group's step; DeepSpeed copies the fp32 partition back itself
            self._sync_zero3()
            self.base.step()
            return loss
        self._sync_hyperparameters()
        for param, master in self._masters:
            if param.grad is not None:
                master.grad = param.grad.to(torch.float32)
                param.grad = None  # the fp32 copy is the one used from here on
        self.base.step()
        for param, master in self._masters:
            param.copy_(master)
            master.grad = None
        self.finish_step()
        return loss

    def finish_step(self) -> None:
        """Count an optimizer step and switch blocks when the active one has had ``switch_every``.
        Called by :meth:`step`; under ZeRO-3 by the trainer once DeepSpeed's whole step is done."""
        self.global_step += 1
        self.steps_in_block += 1
        if self.switch_every and self.switch_mode != "fixed" and self.steps_in_block >= self.switch_every:
            self._advance()

    def _sync_zero3(self) -> None:
        # DeepSpeed puts a partition group's fp32 partition into this optimizer's groups (and the LR
        # scheduler its rates): the base optimizer's groups follow, index for index.
        for own, base in zip(self.param_groups, self.base.param_groups, strict=True):
            base.update(own)

    def _sync_hyperparameters(self) -> None:
        # The LR scheduler (and a user) change this optimizer's groups; the base optimizer follows them.
        for base_group in self.base.param_groups:
            own = self.param_groups[base_group["llmtune_group"]]
            base_group.update({k: v for k, v in own.items() if k != "params"})

    # -- switching -----------------------------------------------------------------------------

    def _order_for_pass(self, pass_index: int) -> list[int]:
        n = len(self.blocks)
        if self.switch_mode == "fixed":
            return [self.start_block or 0]
        if self.switch_mode == "ascending":
            start = self.start_block or 0
            return [(start + i) % n for i in range(n)]
        if self.switch_mode == "descending":
            start = n - 1 if self.start_block is None else self.start_block
            return [(start - i) % n for i in range(n)]
        generator = torch.Generator().manual_seed(self.seed * 100_003 + pass_index)
        order = torch.randperm(n, generator=generator).tolist()
        if pass_index == 0 and self.start_block is not None:
            order.remove(self.start_block)
            order.insert(0, self.start_block)
        return order

    def _advance(self) -> None:
        start = time.perf_counter()
        self.position += 1
        if self.position >= len(self.order):
            self.pass_index += 1
            self.order = self._order_for_pass(self.pass_index)
            self.position = 0
        self.steps_in_block = 0
        self.switches += 1
        self._activate(self.current_block)
        self.switch_seconds += time.perf_counter() - start

    def _activate(self, index: int) -> None:
        """Make block ``index`` the only trainable one, with fresh masters and fresh optimizer state."""
        self.__dict__.pop("base", None)  # free the previous block's state and masters before making new ones
        self._masters = []
        for param in self._scope:
            param.requires_grad_(False)
            param.grad = None
        self._active = index
        block = self.blocks[index]
        if self.zero3:
            self._activate_zero3(index)
            return
        targets: list[list[torch.Tensor]] = [[], []]
        for _, param in block.params:
            param.requires_grad_(True)
            target = param
            if param.dtype in HALF_DTYPES:
                target = param.detach().to(torch.float32, copy=True)
                self._masters.append((param, target))
            targets[self._group_of[id(param)]].append(target)
        groups = [
            {"params": params, "llmtune_group": i, **{k: v for k, v in self.param_groups[i].items() if k != "params"}}
            for i, params in enumerate(targets)
            if params
        ]
        self.base = self.base_optimizer_class(groups, **self.defaults)
        self._log_activation(index)

    def _activate_zero3(self, index: int) -> None:
        # DeepSpeed reads the trainable parameters from this optimizer's groups (decay, no decay: their
        # indices are how it maps its partitions back) and steps them through the base optimizer, which
        # follows (_sync_zero3); then DeepSpeed's partitions are rebuilt for them (none before the engine exists).
        for group, params in zip(self.param_groups, self._group_params, strict=True):
            group["params"] = list(params)  # DeepSpeed takes the trainable ones: never an empty group
        for _, param in self.blocks[index].params:
            param.requires_grad_(True)
        hyper = [{k: v for k, v in group.items() if k != "params"} for group in self.param_groups]
        self.base = self.base_optimizer_class([{**h, "params": []} for h in hyper], **self.defaults)
        ds = zero3_optimizer(self._scope)
        if ds is not None:
            repartition(ds)
        self._log_activation(index)

    def _log_activation(self, index: int) -> None:
        block = self.blocks[index]
        if self.verbose:
            logger.info(
                "BAdam: training block %d/%d (%s, %s parameters) from step %d",
                index + 1,
                len(self.blocks),
                block.name,
                f"{block.numel:,}",
                self.global_step + 1,
            )
        if self.verbose >= 2:
            logger.info("BAdam: trainable: %s", ", ".join(name for name, _ in block.params))

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state, the fp32 masters, and where the block schedule stands."""
        if self.zero3:  # DeepSpeed has put every partition group's fp32 partition into the groups
            self._sync_zero3()
        return {
            "badam": {
                "kind": "block",
                "names": [block.name for block in self.blocks],
                "switch_mode": self.switch_mode,
                "order": list(self.order),
                "position": self.position,
                "pass_index": self.pass_index,
                "steps_in_block": self.steps_in_block,
                "global_step": self.global_step,
                "switches": self.switches,
                "seed": self.seed,
            },
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups],
            "base": self.base.state_dict(),
            "masters": [master for _, master in self._masters],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the same block, step counters, masters and Adam state."""
        self.resume_schedule(state_dict.get("badam") if isinstance(state_dict, dict) else None)
        for group, saved in zip(self.param_groups, state_dict["param_groups"], strict=True):
            group.update(saved)
        if self.zero3:  # DeepSpeed has put the (now active) block's fp32 partitions into the groups
            self._sync_zero3()
            self.base.load_state_dict(state_dict["base"])
            return
        self._activate(self.current_block)
        for (_, master), saved in zip(self._masters, state_dict["masters"], strict=True):
            master.copy_(saved)
        self.base.load_state_dict(state_dict["base"])

    def resume_schedule(self, schedule: dict[str, Any] | None) -> None:
        """Take the block schedule of a saved state (its ``badam`` part). Under ZeRO-3, where DeepSpeed is
        loading the state, also make its block the active one now: the partitions are rebuilt for it and
        its fp32 partitions put into the groups, for DeepSpeed to copy the saved ones into."""
        schedule = saved_schedule({"badam": schedule}, "block", [block.name for block in self.blocks])
        self.switch_mode = schedule["switch_mode"]
        self.order = [int(i) for i in schedule["order"]]
        for key in ("position", "pass_index", "steps_in_block", "global_step", "switches", "seed"):
            setattr(self, key, int(schedule[key]))
        if self.zero3 and self._active != self.current_block:
            self._activate(self.current_block)
            ds = zero3_optimizer(self._scope)
            if ds is not None:  # DeepSpeed is loading this state: its groups hold the new fp32 partitions
                ds._set_fp32_optimizer_param_groups()


def saved_schedule(state_dict: dict[str, Any], kind: str, names: list[str]) -> dict[str, Any]:
    """The ``badam`` part of a saved optimizer state, checked against this run.

    ``kind`` is ``block`` or ``ratio``; ``names`` are the blocks (or parameters) the state must be for.
    Raises a one-line :class:`CheckpointError` when another optimizer or another partition wrote it.
    """
    schedule = state_dict.get("badam") if isinstance(state_dict, dict) else None
    if not schedule or schedule.get("kind") != kind:
        method = {"block": "block", "ratio": "sparse"}[kind]
        raise CheckpointError(
            f"resume_from_checkpoint: its optimizer state was not written by finetuning_type: {method}; "
            "resume with the finetuning_type that wrote it"
        )
    if list(schedule["names"]) != names:
        raise CheckpointError(
            f"resume_from_checkpoint: the optimizer state is for {_shorten(list(schedule['names']))}, but this run "
            f"trains {_shorten(names)}; resume with the same model and badam_* options"
        )
    return schedule


def _shorten(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])}, ... ({len(names)} in all)"
