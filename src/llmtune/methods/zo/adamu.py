"""ZO-AdaMU (``zo_optimizer: adamu``): MeZO with momentum and uncertainty in the perturbation."""

from __future__ import annotations

import math

import torch

from llmtune.methods.zo.optimizer import ZerothOrderSGD
from llmtune.methods.zo.schedule import PAPER_ANNEAL_END, PAPER_PHI, PAPER_WARMUP_END, adamu_anneal, as_step, phi_limit

ADAMU_EPS = 1e-8


class ZerothOrderAdaMU(ZerothOrderSGD):
    """ZO-AdaMU (Jiang et al., AAAI 2024, arXiv:2312.15184), the paper's Algorithm 1.

    The perturbation mixes a zero-centred Gaussian and one centred on the previous perturbation
    (the paper's simulated momentum and uncertainty, Eq. 4), with a second moment that scales the
    step (Eq. 6, as Algorithm 1 line 13 and the reference code write it)::

        z_c ~ N(0, alpha_t),   z_h ~ N(h_{t-1}, 1 - alpha_t)          (variances)
        m_t = beta1_t * z_c + (1 - beta1_t) * z_h                        (the perturbation: w +- eps * m_t)
        v_t = beta2_t * z_c**2 + (1 - beta2_t) * z_h**2                  (its second moment)
        w  <- w - lr * (g_t * m_t / sqrt(v_t + 1e-8) + weight_decay * w)
        h_t = sign(g_t) * m_t                                            (as the reference code orients it)

    with ``g_t`` the SPSA projected gradient along ``m_t``. ``alpha, beta1, beta2`` follow the
    simulated annealing of Eq. 7 (:func:`~llmtune.methods.zo.schedule.adamu_anneal`), one ``phi`` each. Unlike the reference code
    the schedule is a pure function of the step, the perturbation and the update use the same
    weights, and ``h`` is kept for trainable parameters only: one buffer per trainable parameter
    (``momentum_bytes``), saved in ``state_dict()``.

    Args:
        phi: ``(phi_alpha, phi_beta1, phi_beta2)`` of Eq. 7; the paper's ``(1, 0.1, 1.5)``.
        warmup_end: T1, where the warm-up (``alpha = beta1 = beta2 = 1``, MeZO's perturbation)
            ends: a fraction (<= 1) of ``total_steps`` or a step count (> 1).
        anneal_end: T2, where the annealing ends and the weights hold: a fraction or a step count.
        total_steps: T3, the run's optimizer steps (Eq. 7 depends on it).
        Other arguments as :class:`ZerothOrderSGD` (one query per step). With half-precision weights
        ``h`` is half precision too, and the update rounds stochastically as ZO-SGD's does.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        max_grad_ratio: float = 50.0,
        phi: tuple[float, float, float] = PAPER_PHI,
        warmup_end: float = PAPER_WARMUP_END,
        anneal_end: float = PAPER_ANNEAL_END,
        total_steps: int | None = None,
        **kwargs,
    ):
        super().__init__(params, lr, eps, weight_decay, 1, seed, max_grad_ratio, **kwargs)
        if not total_steps or total_steps <= 0:
            raise ValueError(f"total_steps: {total_steps} must be a positive step count (Eq. 7 depends on it)")
        self.total_steps = int(total_steps)
        self.warmup_end = as_step(warmup_end, self.total_steps)
        self.anneal_end = max(as_step(anneal_end, self.total_steps), self.warmup_end)
        self.phi = tuple(float(p) for p in phi)
        limit = phi_limit(min(self.anneal_end / self.total_steps, 1.0))
        for name, value in zip(("alpha", "beta1", "beta2"), self.phi, strict=True):
            if not 0 <= value < limit:
                raise ValueError(
                    f"phi of {name}: {value} must be in [0, {limit:.4g}) when the annealing ends at step "
                    f"{self.anneal_end} of {self.total_steps} (Eq. 7's period must stay positive)"
                )

    def weights(self, step: int) -> tuple[float, float, float]:
        """``(alpha, beta1, beta2)`` at optimizer step ``step`` (0-based, as the reference's ``global_step``)."""
        return tuple(adamu_anneal(step, p, self.warmup_end, self.anneal_end, self.total_steps) for p in self.phi)

    @property
    def momentum_bytes(self) -> int:
        """Memory of the momentum buffers ``h`` (one per trainable parameter, same dtype)."""
        return sum(p.numel() * p.element_size() for p in self.params)

    caches_its_draws = True  # cache_directions: the step's two draws per parameter, kept until its update

    def _draws(self, index: int, last: bool) -> list[torch.Tensor]:
        """The step's two N(0, 1) draws of parameter ``index`` (fresh tensors the caller may overwrite).

        With ``cache_directions`` they are drawn once a step (two more copies of the trainable weights
        while the step runs) and copied for each forward; the update, their ``last`` use, takes them.
        """
        if not self.cache_directions:
            return self.normal(index, 0, draws=2)
        key = (index, 0)
        if key not in self._cached:  # the two draws of normal(), written into one tensor (no stacked copy)
            param = self.params[index]
            pair = torch.empty((2, *param.shape), dtype=param.dtype, device=param.device)
            self._draw(index, 0, pair[0])
            pair[1].normal_(generator=self._generator(param.device))  # the same generator, drawn on
            self._cached[key] = pair
        pair = self._cached.pop(key) if last else self._cached[key].clone()
        return [pair[0], pair[1]]

    def _parts(self, index: int, last: bool = False) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        alpha, beta1, beta2 = self.weights(self.step_count)
        param = self.params[index]
        state = self.state[param]
        if "momentum" not in state:
            state["momentum"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        centred, around_history = self._draws(index, last)
        centred.mul_(math.sqrt(alpha))
        around_history.mul_(math.sqrt(1 - alpha)).add_(state["momentum"])
        return centred, around_history, beta1, beta2

    def direction(self, index: int, query: int) -> torch.Tensor:
        centred, around_history, beta1, _ = self._parts(index)
        return centred.mul_(beta1).add_(around_history, alpha=1 - beta1)

    def _update(self, param, index, grads, lr, weight_decay) -> None:
        projected = grads[0]
        centred, around_history, beta1, beta2 = self._parts(index, last=True)
        momentum = centred * beta1 + around_history * (1 - beta1)
        second = centred.square_().mul_(beta2).add_(around_history.square_(), alpha=1 - beta2)
        update = second.add_(ADAMU_EPS).rsqrt_().mul_(momentum).mul_(projected)
        self._apply(param, index, update, lr, weight_decay)
        self.state[param]["momentum"].copy_(momentum).mul_(math.copysign(1.0, projected))
