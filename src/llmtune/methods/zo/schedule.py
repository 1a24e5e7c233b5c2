"""ZO-AdaMU's simulated annealing (the paper's Eq. 7) as a pure function of the step."""

from __future__ import annotations

import math

PAPER_PHI = (1.0, 0.1, 1.5)  # phi of alpha, beta1, beta2 (the sentence after the paper's Eq. 7)
PAPER_WARMUP_END = 1024 / 20000  # T1 = 1024 of the paper's (and MeZO's) 20,000 steps
PAPER_ANNEAL_END = 0.8  # T2 = 16,000 of 20,000 (the reference code: int(0.8 * max_steps))


def adamu_anneal(step: int, phi: float, warmup_end: int, anneal_end: int, total_steps: int) -> float:
    """The weight alpha, beta1 or beta2 of ZO-AdaMU at optimizer step ``step`` (the paper's Eq. 7).

    The paper: "Anneal(t) = 1 for t in [1, T1); 0.5 + 0.5 cos(pi (T3 - T1) / (T3 - t phi (T3 - T2) /
    (T2 - T1))) for t in [T1, T2); 0.9 for t in [T2, T3), where phi = 1 for alpha, phi = 0.1 for
    beta1 and phi = 1.5 for beta2." As printed, the cosine jumps from 1 to about 0 at T1 and the last
    phase is 0.9 for all three weights. This follows what the reference code computes and the
    paper's Figure 1 plots: the cosine starts at 1 at T1, its period shrinks by
    ``phi (T3 - T2) / (T2 - T1)`` per step after T1, and the value reached at T2 holds until T3::

        Anneal(t) = 0.5 + 0.5 cos(pi (t - T1) / (T3 - phi (t - T1) (T3 - T2) / (T2 - T1))),  T1 <= t < T2

    With the paper's T1, T2, T3 = 1024, 16000, 20000 the weights end at alpha 0.010, beta1 0.131
    and beta2 0.012 (the text's "fixes alpha = 0.5, beta1 = 0.9 and beta2 = 0.01" matches neither
    the equation nor the figure, whose curves swap the phi of alpha and beta1). ``step`` counts from
    0, as the reference's ``global_step``; ``warmup_end`` (T1), ``anneal_end`` (T2) and
    ``total_steps`` (T3) are step counts.
    """
    if step < warmup_end or anneal_end <= warmup_end:
        return 1.0
    elapsed = min(step, anneal_end) - warmup_end
    period = total_steps - phi * elapsed * (total_steps - anneal_end) / (anneal_end - warmup_end)
    return 0.5 + 0.5 * math.cos(math.pi * elapsed / period)


def phi_limit(anneal_fraction: float) -> float:
    """The largest phi (exclusive) for which Eq. 7's period ``T3 - phi (T3 - T2)`` stays positive up to T2."""
    return 1.0 / (1.0 - anneal_fraction) if anneal_fraction < 1 else math.inf


def as_step(value: float, total_steps: int) -> int:
    """A fraction (<= 1) of ``total_steps`` or a step count (> 1), as a step count."""
    return int(round(value * total_steps)) if value <= 1 else int(round(value))
