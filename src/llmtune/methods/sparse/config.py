"""Options of ``finetuning_type: sparse`` (BAdam's ratio mode), under LLaMA-Factory's names.

Which parameters may train and how often the selection moves on come from the shared ``badam_*``
options of :class:`llmtune.methods.block.config.BlockArguments` (``badam_switch_interval``,
``badam_include_embedding``, ``badam_include_lm_head``, ``badam_active_modules``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmtune.errors import ConfigError, one_of

MASK_MODES = ("adjacent", "scatter")


@dataclass
class SparseArguments:
    """The fraction of every weight that BAdam's ratio mode updates, and how it is picked."""

    badam_update_ratio: float = field(
        default=0.05,
        metadata={
            "help": "Fraction of the entries of every trainable tensor updated at a time, in (0, 1]. sparse only."
        },
    )
    badam_mask_mode: str = field(
        default="adjacent",
        metadata={
            "choices": MASK_MODES,
            "help": "Which entries: adjacent (a window of consecutive entries that slides on at every switch) or "
            "scatter (a seeded random subset per tensor, also sliding). sparse only.",
        },
    )

    def __post_init__(self):
        if not 0.0 < self.badam_update_ratio <= 1.0:
            raise ConfigError(f"badam_update_ratio: {self.badam_update_ratio} must be in (0, 1]")
        if self.badam_mask_mode not in MASK_MODES:
            raise one_of("badam_mask_mode", self.badam_mask_mode, MASK_MODES)
