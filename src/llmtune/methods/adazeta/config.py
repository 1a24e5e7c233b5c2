"""Options of ``finetuning_type: adazeta`` (AdaZeta, Yang et al., EMNLP 2024): the query schedule.

The adapters are shaped by the ``loretta_*`` options and the zeroth-order estimate by the ``zo_*``
ones (``zo_eps``, ``zo_objective``, ``zo_max_grad_ratio``, ``zo_max_skips``); this class holds
only what AdaZeta adds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmtune.errors import ConfigError


@dataclass
class AdaZetaArguments:
    """The adaptive query schedule ``Q(e) = min(max(int(alpha * e**beta), 1), Q_max)`` for epoch ``e`` (0-based)."""

    adazeta_alpha: float = field(
        default=0.85, metadata={"help": "alpha of the query schedule (the reference code's SHRINK)."}
    )
    adazeta_beta: float | None = field(
        default=None,
        metadata={
            "help": "beta of the query schedule (the reference code's RATE); default: derived so that "
            "alpha * E**beta = adazeta_target_queries at the last epoch E. beta 0 with alpha Q: Q queries throughout."
        },
    )
    adazeta_target_queries: int = field(
        default=20, metadata={"help": "The query count the derived beta reaches at the last epoch (the reference NUM)."}
    )
    adazeta_max_queries: int = field(
        default=15, metadata={"help": "Q_max: the most queries per step (the reference NUM_MAX)."}
    )

    def __post_init__(self):
        if not 0 < self.adazeta_alpha < math.inf:
            raise ConfigError(f"adazeta_alpha: {self.adazeta_alpha} must be > 0")
        if self.adazeta_beta is not None and not 0 <= self.adazeta_beta < math.inf:
            raise ConfigError(f"adazeta_beta: {self.adazeta_beta} must be >= 0 (or unset, to derive it)")
        for name in ("adazeta_target_queries", "adazeta_max_queries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)} must be a positive integer")
