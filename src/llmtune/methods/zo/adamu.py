"""ZO-AdaMU (``zo_optimizer: adamu``): MeZO with momentum and uncertainty in the perturbation."""

from __future__ import annotations

import math

import torch

from llmtune.methods.zo.optimizer import ZerothOrderSGD

ADAMU_EPS = 1e-8


class ZerothOrderAdaMU(ZerothOrderSGD):
    """ZO-AdaMU (Jiang et al., AAAI 2024, arXiv:2312.15184): the method section's equations.

    The perturbation mixes a zero-centred Gaussian and one centred on the previous perturbation
    (the paper's simulated momentum and uncertainty), with a second moment that scales the step::

        z_c ~ N(0, alpha_t),   z_h ~ N(h_{t-1}, 1 - alpha_t)          (variances)
        m_t = beta1_t * z_c + (1 - beta1_t) * z_h                        (the perturbation: w +- eps * m_t)
        v_t = beta2_t * z_c**2 + (1 - beta2_t) * z_h**2                  (its second moment)
        w  <- w - lr * (g_t * m_t / sqrt(v_t + 1e-8) + weight_decay * w)
        h_t = sign(g_t) * m_t                                            (as the reference code orients it)

    with ``g_t`` the SPSA projected gradient along ``m_t``. ``alpha, beta1, beta2`` are 1 for
    ``t < warmup_steps`` (plain MeZO perturbations), follow a cosine from 1 to their final values
    until ``anneal_end``, then stay there (:func:`adamu_weight`). Unlike the reference code the
    schedule is a pure function of the step, the perturbation and the update use the same weights,
    and ``h`` is kept for trainable parameters only: one float32 buffer per trainable parameter
    (``momentum_bytes``), saved in ``state_dict()``.

    Args:
        alpha, beta1, beta2: the final (post-annealing) weights; the paper's 0.5, 0.9, 0.01.
        warmup_steps: T1. anneal_end: T2, a fraction (<= 1) of ``total_steps`` or a step count.
        total_steps: the run's optimizer steps (needed when ``anneal_end`` is a fraction).
        Other arguments as :class:`ZerothOrderSGD` (one query per step).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        max_grad_ratio: float = 50.0,
        alpha: float = 0.5,
        beta1: float = 0.9,
        beta2: float = 0.01,
        warmup_steps: int = 1024,
        anneal_end: float = 0.8,
        total_steps: int | None = None,
    ):
        super().__init__(params, lr, eps, weight_decay, 1, seed, max_grad_ratio)
        if anneal_end <= 1:
            if not total_steps or total_steps <= 0:
                raise ValueError("anneal_end as a fraction needs total_steps")
            anneal_end = anneal_end * total_steps
        self.finals = (float(alpha), float(beta1), float(beta2))
        self.warmup_steps = int(warmup_steps)
        self.anneal_end = int(round(anneal_end))

    def weights(self, step: int) -> tuple[float, float, float]:
        """``(alpha, beta1, beta2)`` at optimizer step ``step``."""
        return tuple(adamu_weight(step, final, self.warmup_steps, self.anneal_end) for final in self.finals)

    @property
    def momentum_bytes(self) -> int:
        """Memory of the momentum buffers ``h`` (one per trainable parameter, same dtype)."""
        return sum(p.numel() * p.element_size() for p in self.params)

    def _parts(self, index: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        alpha, beta1, beta2 = self.weights(self.step_count)
        param = self.params[index]
        state = self.state[param]
        if "momentum" not in state:
            state["momentum"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        centred, around_history = self.normal(index, 0, draws=2)
        centred.mul_(math.sqrt(alpha))
        around_history.mul_(math.sqrt(1 - alpha)).add_(state["momentum"])
        return centred, around_history, beta1, beta2

    def direction(self, index: int, query: int) -> torch.Tensor:
        centred, around_history, beta1, _ = self._parts(index)
        return centred.mul_(beta1).add_(around_history, alpha=1 - beta1)

    def _update(self, param, index, grads, lr, weight_decay) -> None:
        projected = grads[0]
        centred, around_history, beta1, beta2 = self._parts(index)
        momentum = centred * beta1 + around_history * (1 - beta1)
        second = centred.square_().mul_(beta2).add_(around_history.square_(), alpha=1 - beta2)
        update = second.add_(ADAMU_EPS).rsqrt_().mul_(momentum).mul_(projected)
        if weight_decay:
            update.add_(param, alpha=weight_decay)
        param.add_(update, alpha=-lr)
        self.state[param]["momentum"].copy_(momentum).mul_(math.copysign(1.0, projected))


def adamu_weight(step: int, final: float, warmup_steps: int, anneal_end: int) -> float:
    """ZO-AdaMU's simulated annealing of a weight: 1 before ``warmup_steps``, a cosine from 1 down to
    ``final`` until ``anneal_end``, then ``final``."""
    if step < warmup_steps:
        return 1.0
    if step >= anneal_end:
        return final
    progress = (step - warmup_steps) / (anneal_end - warmup_steps)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
