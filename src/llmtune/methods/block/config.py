"""Options of ``finetuning_type: block`` (BAdam), under LLaMA-Factory's ``badam_*`` names.

The partition options (which parameters may train at all) apply to ``finetuning_type: sparse``
too; the options of the ratio mode alone live in :mod:`llmtune.methods.sparse.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmtune.errors import ConfigError, one_of

SWITCH_MODES = ("random", "ascending", "descending", "fixed")


@dataclass
class BlockArguments:
    """How BAdam splits the model into blocks and moves from one block to the next."""

    badam_switch_mode: str = field(
        default="random",
        metadata={
            "choices": SWITCH_MODES,
            "help": "Order in which blocks train: random (a new permutation every pass over the blocks), "
            "ascending, descending, or fixed (the start block only). block only.",
        },
    )
    badam_switch_interval: int = field(
        default=100,
        metadata={
            "help": "Optimizer steps on each block (block) or each mask (sparse) before moving on; every block "
            "gets exactly this many. -1: never move on. BAdam suggests max(n / (batch x blocks), 50)."
        },
    )
    badam_start_block: int | None = field(
        default=None,
        metadata={
            "help": "Index of the first block to train (blocks are numbered embedding, layers 0..L-1, head). "
            "Default: the first block of the switch order. block only."
        },
    )
    badam_include_embedding: bool = field(
        default=False, metadata={"help": "Make the input embedding a block of its own (block) or trainable (sparse)."}
    )
    badam_include_lm_head: bool = field(
        default=False,
        metadata={
            "help": "Make the output head, the final norm and any other parameter outside the layers a block of "
            "its own (block) or trainable (sparse)."
        },
    )
    badam_active_modules: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated module names trained with every block (e.g. model.norm); their Adam state "
            "restarts at every switch."
        },
    )
    badam_verbose: int = field(
        default=0,
        metadata={"help": "0: log nothing per switch; 1: log each switch; 2: also list the parameters trained."},
    )

    def __post_init__(self):
        if self.badam_switch_mode not in SWITCH_MODES:
            raise one_of("badam_switch_mode", self.badam_switch_mode, SWITCH_MODES)
        if self.badam_switch_interval == 0 or self.badam_switch_interval < -1:
            raise ConfigError(
                f"badam_switch_interval: {self.badam_switch_interval} must be a positive number of steps, "
                "or -1 to never switch"
            )
        if self.badam_start_block is not None and self.badam_start_block < 0:
            raise ConfigError(f"badam_start_block: {self.badam_start_block} must be >= 0")
        if self.badam_verbose not in (0, 1, 2):
            raise ConfigError(f"badam_verbose: {self.badam_verbose} is not one of 0, 1, 2")

    @property
    def switch_every(self) -> int:
        """Steps per block; 0 means never switch."""
        return max(self.badam_switch_interval, 0)

    @property
    def active_modules(self) -> list[str]:
        return [name.strip() for name in (self.badam_active_modules or "").split(",") if name.strip()]
