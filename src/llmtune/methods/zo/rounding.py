"""Stochastic rounding of a zeroth-order update into half-precision weights.

MeZO trains OPT-13B with fp16 weights (Malladi et al., 2023, Section 3), but an update
``lr * g * z`` of 1e-6..1e-7 is usually below one bf16/fp16 ulp of the weight, so rounding to
nearest drops it. Stochastic rounding (Gupta et al., 2015, "Deep Learning with Limited Numerical
Precision", Eq. 3) rounds ``x`` up to the next representable value with probability equal to its
distance from the one below, divided by their spacing: ``E[round(x)] = x``, so an update too small
to move a weight moves it in expectation. The uniforms come from the caller's seeded generator, so
a run is reproducible and a resumed run rounds as an uninterrupted one.
"""

from __future__ import annotations

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)
CHUNK_NUMEL = 2**24  # elements rounded at a time: 64 MiB of float32 temporaries per tensor, never a whole weight


def stochastic_round(exact: torch.Tensor, dtype: torch.dtype, generator: torch.Generator | None) -> torch.Tensor:
    """``exact`` (float32) rounded to ``dtype`` with ``E[result] = exact``: a new tensor of ``exact``'s shape.

    The nearest ``dtype`` value ``r`` and its neighbour ``n`` on the other side of ``exact``; the
    result is ``n`` with probability ``(exact - r) / (n - r)``, else ``r``.
    """
    nearest = exact.to(dtype)
    error = exact - nearest.float()
    towards = torch.where(error >= 0, torch.inf, -torch.inf).to(dtype)
    neighbour = torch.nextafter(nearest, towards)
    spacing = neighbour.float().sub_(nearest.float())
    chance = error.div_(spacing).nan_to_num_(nan=0.0)  # 0/0 where exact is representable (or at +-inf)
    uniform = torch.rand(exact.shape, generator=generator, device=exact.device, dtype=torch.float32)
    return torch.where(uniform < chance, neighbour, nearest)


@torch.no_grad()
def add_stochastic_(
    param: torch.Tensor,
    update: torch.Tensor,
    lr: float,
    weight_decay: float,
    generator: torch.Generator | None,
    chunk_numel: int = CHUNK_NUMEL,
    scale: float = 1.0,
) -> None:
    """``param <- round(param - lr * (scale * update + weight_decay * param))``, the right side in float32, rounded
    stochastically into ``param``'s half dtype, ``chunk_numel`` elements at a time (at most one chunk of
    float32 lives). ``update`` has ``param``'s shape (any floating dtype)."""
    flat_param = param.detach().view(-1)
    flat_update = update.reshape(-1)
    for start in range(0, flat_param.numel(), chunk_numel):
        weights = flat_param[start : start + chunk_numel]
        exact = weights.float()
        if weight_decay:
            exact.mul_(1 - lr * weight_decay)
        exact.add_(flat_update[start : start + chunk_numel].float(), alpha=-lr * scale)
        weights.copy_(stochastic_round(exact, param.dtype, generator))
