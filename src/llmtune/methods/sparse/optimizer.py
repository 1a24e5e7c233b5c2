"""``RatioBlockOptimizer``: Adam on a sliding fraction of the entries of every parameter (BAdam's ratio mode).

A plain ``torch.optim.Optimizer``, usable without a Trainer::

    scope = scope_parameters(partition_blocks(model))  # llmtune.methods.block.partition
    optimizer = RatioBlockOptimizer(scope, lr=1e-5, update_ratio=0.05, switch_every=100)
    for batch in batches:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

Each parameter gets its own selection of ``k = int(update_ratio * numel)`` entries (at least one):

* ``adjacent``: a window of k consecutive entries (row-major), starting at 0;
* ``scatter``: k entries of a seeded random permutation of the parameter's entries (each parameter
  its own seed).

Every ``switch_every`` steps each window moves on by k entries (wrapping round), so successive
windows are disjoint until the whole tensor has been covered, and the Adam moments restart.
Parameters with fewer than ``min_masked_numel`` entries are updated whole.

Memory: when a parameter's gradient is complete (a post-accumulate-grad hook), the selected entries
are copied into a compact fp32 buffer and the dense ``.grad`` is freed, so gradients cost
``4 * k`` bytes per parameter instead of a dense tensor. Adam moments (``8 * k`` bytes) exist for the
selected entries only; half-precision weights get an fp32 master of the selected entries only
(``4 * k``); ``scatter`` keeps the k int64 indices (``8 * k``). Because the dense gradients are gone
after backward, gradient clipping is :meth:`clip_grad_norm_` on the compact buffers (a trainer calls
it instead of ``torch.nn.utils.clip_grad_norm_``), and fp16 loss scaling cannot see them: use bf16 or
fp32.

Differences from the reference ``BlockOptimizerRatio``: one selection per tensor (the reference
shares one mask among all tensors of the same shape); small tensors really are updated whole (the
reference masks them anyway); dense gradients are never turned into sparse tensors (which broke
``clip_grad_norm_`` and DeepSpeed); decoupled weight decay applies to matrices as in AdamW; and
half-precision weights keep an fp32 master of the selected entries.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from llmtune.errors import ConfigError, one_of
from llmtune.methods.block.optimizer import HALF_DTYPES, saved_schedule
from llmtune.methods.block.partition import NamedParameter, is_no_decay
from llmtune.methods.sparse.config import MASK_MODES

logger = logging.getLogger("llmtune")


class RatioBlockOptimizer(torch.optim.Optimizer):
    """AdamW on a moving selection of ``update_ratio`` of each parameter's entries (see the module docstring).

    Args:
        named_params: ``(name, parameter)`` pairs to train; each gets a gradient hook.
        lr, betas, eps, weight_decay: as in ``torch.optim.AdamW`` (no decay for biases and norms).
        update_ratio: the fraction of each parameter's entries updated at a time, in (0, 1].
        mask_mode: ``adjacent`` or ``scatter``.
        switch_every: steps before every selection moves on and the moments restart; 0 never.
        seed: seeds the ``scatter`` permutations.
        min_masked_numel: parameters smaller than this are updated whole.
    """

    def __init__(
        self,
        named_params: Sequence[NamedParameter],
        *,
        lr: float = 1e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        update_ratio: float = 0.05,
        mask_mode: str = "adjacent",
        switch_every: int = 100,
        seed: int = 0,
        min_masked_numel: int = 100,
        verbose: int = 0,
    ):
        if not 0.0 < update_ratio <= 1.0:
            raise ConfigError(f"badam_update_ratio: {update_ratio} must be in (0, 1]")
        if mask_mode not in MASK_MODES:
            raise one_of("badam_mask_mode", mask_mode, MASK_MODES)
        self.names = [name for name, _ in named_params]
        self.update_ratio = float(update_ratio)
        self.mask_mode = mask_mode
        self.switch_every = max(int(switch_every), 0)
        self.seed = int(seed)
        self.min_masked_numel = min_masked_numel
        self.verbose = verbose
        decay = [p for n, p in named_params if not is_no_decay(n, p)]
        no_decay = [p for n, p in named_params if is_no_decay(n, p)]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        super().__init__(groups, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

        self.global_step = 0
        self.steps_in_window = 0
        self.switches = 0
        self._params = [p for _, p in named_params]
        self._hooks = []
        for index, param in enumerate(self._params):
            param.requires_grad_(True)
            self.state[param].update({"index_in_model": index, "offset": 0})
            self._select(param)
            self._hooks.append(param.register_post_accumulate_grad_hook(self._collect_gradient))

    # -- selections ----------------------------------------------------------------------------

    def selected_count(self, param: torch.Tensor) -> int:
        """How many entries of ``param`` are updated at a time."""
        numel = param.numel()
        return numel if numel < self.min_masked_numel else max(1, int(numel * self.update_ratio))

    def selected_indices(self, param: torch.Tensor) -> torch.Tensor:
        """The flat indices of ``param``'s selected entries (int64), for inspection and tests."""
        state = self.state[param]
        if state["index"] is not None:
            return state["index"]
        return torch.cat([torch.arange(lo, hi, device=param.device) for lo, hi in state["ranges"]])

    def _select(self, param: torch.Tensor) -> None:
        """(Re)build ``param``'s selection at its offset, with zero moments and a fresh master."""
        state = self.state[param]
        numel, count, offset = param.numel(), self.selected_count(param), state["offset"]
        state["index"] = state["ranges"] = None
        if self.mask_mode == "scatter" and count < numel:
            generator = torch.Generator(device=param.device).manual_seed(self.seed * 100_003 + state["index_in_model"])
            order = torch.randperm(numel, generator=generator, device=param.device)
            state["index"] = torch.cat([order[offset : offset + count], order[: max(0, offset + count - numel)]])
        else:
            end = offset + count
            state["ranges"] = [(offset, min(end, numel))] + ([(0, end - numel)] if end > numel else [])
        values = self._gather(param.detach(), state)
        state["master"] = values if param.dtype in HALF_DTYPES else None
        state["exp_avg"] = torch.zeros_like(values)
        state["exp_avg_sq"] = torch.zeros_like(values)
        state["step"] = 0
        state["grad"] = None

    @staticmethod
    def _gather(tensor: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        """The selected entries of ``tensor`` as a new fp32 vector."""
        flat = tensor.reshape(-1)
        if state["index"] is not None:
            picked = flat.index_select(0, state["index"])
        else:
            picked = torch.cat([flat[lo:hi] for lo, hi in state["ranges"]])
        return picked.to(torch.float32)

    @staticmethod
    def _scatter(param: torch.Tensor, state: dict[str, Any], values: torch.Tensor) -> None:
        flat = param.data.view(-1)
        values = values.to(param.dtype)
        if state["index"] is not None:
            flat.index_copy_(0, state["index"], values)
            return
        start = 0
        for lo, hi in state["ranges"]:
            flat[lo:hi].copy_(values[start : start + hi - lo])
            start += hi - lo

    def _collect_gradient(self, param: torch.Tensor) -> None:
        # Runs when param.grad is complete: keep the selected entries, free the dense gradient.
        state = self.state[param]
        picked = self._gather(param.grad, state)
        state["grad"] = picked if state["grad"] is None else state["grad"].add_(picked)
        param.grad = None

    def remove_hooks(self) -> None:
        """Detach the gradient hooks (when this optimizer is discarded but the model is not)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # -- clipping and the step -----------------------------------------------------------------

    def compact_gradients(self) -> list[torch.Tensor]:
        """The collected gradients of the selected entries, one fp32 tensor per parameter that has one."""
        return [self.state[p]["grad"] for p in self._params if self.state[p]["grad"] is not None]

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale the selected gradients so their joint 2-norm is at most ``max_norm``; return the norm before."""
        grads = self.compact_gradients()
        if not grads:
            return torch.tensor(0.0)
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if math.isfinite(max_norm):
            scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
            for grad in grads:
                grad.mul_(scale)
        return total

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW step on every parameter's selected entries; move the selections every ``switch_every``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [self.state[p]["grad"] for p in self._params if self.state[p]["grad"] is not None]
        if not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):  # one device sync
            for group in self.param_groups:
                for param in group["params"]:
                    self._update(param, group)
        else:
            logger.warning("sparse: non-finite gradient at step %d; the update was skipped", self.global_step + 1)
        for param in self._params:
            self.state[param]["grad"] = None
        self.global_step += 1
        self.steps_in_window += 1
        if self.switch_every and self.steps_in_window >= self.switch_every:
            self._move_windows()
        return loss

    def _update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[param]
        grad = state["grad"]
        if grad is None:
            return
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        state["step"] += 1
        state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1 = 1 - beta1 ** state["step"]
        bias2 = 1 - beta2 ** state["step"]
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(bias2)).add_(eps)
        values = state["master"] if state["master"] is not None else self._gather(param.detach(), state)
        if weight_decay:
            values.mul_(1 - lr * weight_decay)
        values.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)
        self._scatter(param, state, values)

    def _move_windows(self) -> None:
        for param in self._params:
            state = self.state[param]
            state["offset"] = (state["offset"] + self.selected_count(param)) % param.numel()
            self._select(param)
        self.steps_in_window = 0
        self.switches += 1
        if self.verbose:
            logger.info("sparse: selections moved on (switch %d) after step %d", self.switches, self.global_step)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the dense gradients and the collected selected ones."""
        super().zero_grad(set_to_none=set_to_none)
        for param in self._params:
            self.state[param]["grad"] = None

    def optimizer_state_bytes(self) -> int:
        """Bytes of the moments, masters, indices and compact gradients of every parameter."""
        total = 0
        for param in self._params:
            state = self.state[param]
            for key in ("exp_avg", "exp_avg_sq", "master", "index", "grad"):
                value = state.get(key)
                if torch.is_tensor(value):
                    total += value.numel() * value.element_size()
        return total

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Moments, masters, window offsets and step counters (the selections follow from the offsets)."""
        return {
            "badam": {
                "kind": "ratio",
                "names": list(self.names),
                "update_ratio": self.update_ratio,
                "mask_mode": self.mask_mode,
                "global_step": self.global_step,
                "steps_in_window": self.steps_in_window,
                "switches": self.switches,
                "seed": self.seed,
            },
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups],
            "state": [
                {
                    "offset": self.state[p]["offset"],
                    "step": self.state[p]["step"],
                    "exp_avg": self.state[p]["exp_avg"],
                    "exp_avg_sq": self.state[p]["exp_avg_sq"],
                    "master": self.state[p]["master"],
                }
                for p in self._params
            ],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the same selections, moments and step counters."""
        schedule = saved_schedule(state_dict, "ratio", self.names)
        if (schedule["update_ratio"], schedule["mask_mode"]) != (self.update_ratio, self.mask_mode):
            raise ConfigError(
                f"resume_from_checkpoint: saved with badam_update_ratio {schedule['update_ratio']} and badam_mask_mode "
                f"{schedule['mask_mode']}; this run has {self.update_ratio} and {self.mask_mode}"
            )
        for key in ("global_step", "steps_in_window", "switches", "seed"):
            setattr(self, key, int(schedule[key]))
        for group, saved in zip(self.param_groups, state_dict["param_groups"], strict=True):
            group.update(saved)
        for param, saved in zip(self._params, state_dict["state"], strict=True):
            state = self.state[param]
            state["offset"] = int(saved["offset"])
            self._select(param)
            state["step"] = int(saved["step"])
            for key in ("exp_avg", "exp_avg_sq", "master"):
                if saved[key] is not None:
                    state[key].copy_(saved[key])
