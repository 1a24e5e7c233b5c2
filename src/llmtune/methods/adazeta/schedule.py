"""AdaZeta's adaptive query schedule (Yang et al., EMNLP 2024, Sec. 3.2), as pure functions of the epoch.

More queries per step as training goes on keep the zeroth-order estimate's variance shrinking with
the step size, which is what stops ZO fine-tuning from diverging (the paper's Theorem 1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def adaptive_query_count(epoch: int, alpha: float, beta: float, max_queries: int) -> int:
    """``Q = min(max(int(alpha * epoch**beta), 1), max_queries)`` for 0-based ``epoch``.

    Example (alpha 0.85, beta 0.6223, cap 15): epochs 0, 10, 40, 80, 120 -> 1, 3, 8, 12, 15.
    """
    return min(max(int(alpha * float(epoch) ** beta), 1), int(max_queries))


def derived_beta(alpha: float, target_queries: int, total_epochs: float) -> float:
    """The ``beta`` with ``alpha * total_epochs**beta == target_queries`` (the reference code's RATE).

    With at most one epoch only epoch 0 is ever reached, where any ``beta > 0`` gives one query: 1.0.
    """
    if total_epochs <= 1:
        return 1.0
    return max(math.log(target_queries / alpha) / math.log(total_epochs), 0.0)


@dataclass(frozen=True)
class QuerySchedule:
    """The schedule of one run: ``queries(epoch)``; saved in the optimizer state, so a resumed run keeps it."""

    alpha: float
    beta: float
    max_queries: int

    @classmethod
    def from_arguments(cls, options, total_epochs: float) -> QuerySchedule:
        """From :class:`~llmtune.methods.adazeta.config.AdaZetaArguments` and the run's length in epochs."""
        beta = options.adazeta_beta
        if beta is None:
            beta = derived_beta(options.adazeta_alpha, options.adazeta_target_queries, total_epochs)
        return cls(float(options.adazeta_alpha), float(beta), int(options.adazeta_max_queries))

    def queries(self, epoch: int) -> int:
        return adaptive_query_count(epoch, self.alpha, self.beta, self.max_queries)

    def to_dict(self) -> dict:
        return asdict(self)
