"""Training arguments: TRL's ``SFTConfig`` with LLaMA-Factory's defaults and names.

Every field of ``transformers.TrainingArguments`` and ``trl.SFTConfig`` is accepted under its
own name (``learning_rate``, ``per_device_train_batch_size``, ``save_steps``, ``deepspeed``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trl import SFTConfig

from llmtune.errors import ConfigError
from llmtune.hparams.secrets import is_secret


@dataclass
class TrainingArguments(SFTConfig):
    """``SFTConfig`` plus ``overwrite_output_dir`` and LLaMA-Factory's ``disable_gradient_checkpointing``.

    TRL turns bf16 on by default; LLaMA-Factory configs (and llmtune) ask for it explicitly. Gradient
    checkpointing is on by default in both TRL and LLaMA-Factory, and in llmtune where a backward pass
    runs: the parser fills it in from the finetuning type (:func:`gradient_checkpointing_setting`).
    """

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Empty a non-empty output_dir before training. Without it llmtune refuses to touch it."},
    )
    bf16: bool | None = field(default=False, metadata={"help": "Train in bfloat16 mixed precision (GPU only)."})
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Recompute activations in the backward pass to save memory (one more forward pass a step). Unset: "
            "on for finetuning types with a backward pass, as in LLaMA-Factory and TRL; off for zeroth-order ones "
            "(zo, adazeta). false turns it off."
        },
    )
    disable_gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "LLaMA-Factory's switch: true turns gradient checkpointing off (as gradient_checkpointing: false)."
        },
    )
    warmup_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Fraction of the training steps spent warming the learning rate up (LLaMA-Factory's "
            "name; transformers 5 spells it warmup_steps < 1)."
        },
    )
    resume_from_checkpoint: str | bool | None = field(
        default=None,
        metadata={
            "help": "A checkpoint folder to continue from, or true for the newest complete checkpoint "
            "in output_dir (incomplete ones are skipped)."
        },
    )
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Where to report metrics: none, tensorboard, wandb, ..."}
    )

    def __post_init__(self):
        if self.disable_gradient_checkpointing:
            if self.gradient_checkpointing or self.activation_checkpointing:
                raise ConfigError(
                    "gradient_checkpointing: true and disable_gradient_checkpointing: true contradict each other; "
                    "keep one"
                )
            self.gradient_checkpointing = False
        if self.gradient_checkpointing is not None:
            # transformers 5 renamed it; accept LLaMA-Factory's name without a deprecation warning.
            self.activation_checkpointing = self.gradient_checkpointing
            self.gradient_checkpointing = None
        if self.warmup_ratio is not None:
            if not 0.0 <= self.warmup_ratio < 1.0:
                raise ConfigError(f"warmup_ratio: {self.warmup_ratio} must be in [0, 1)")
            if self.warmup_steps:
                raise ConfigError("warmup_ratio and warmup_steps are both set; keep one")
            self.warmup_steps = self.warmup_ratio
        super().__post_init__()

    def __getstate__(self):
        # Trainer pickles these arguments into every checkpoint (training_args.bin): keep secrets out.

        state = self.__dict__.copy()
        for key, value in state.items():
            if value and isinstance(value, str) and is_secret(key):
                state[key] = "<redacted>"
        return state


def gradient_checkpointing_setting(given: Mapping[str, Any], finetuning_type: str, backward: bool) -> tuple[bool, str]:
    """Whether a run checkpoints activations, and why, from the keys the config set.

    As set (``gradient_checkpointing``, transformers' ``activation_checkpointing``, LLaMA-Factory's
    ``disable_gradient_checkpointing: true``), else on where ``finetuning_type`` runs a ``backward``
    pass, as LLaMA-Factory and TRL do; off where it does not. Off too when ``fsdp_config`` asks for
    FSDP's own activation checkpointing (transformers refuses both).
    """
    if given.get("disable_gradient_checkpointing"):
        return False, "disable_gradient_checkpointing: true"
    for key in ("gradient_checkpointing", "activation_checkpointing"):
        if given.get(key) is not None:
            return bool(given[key]), f"{key}: {str(bool(given[key])).lower()}"
    fsdp = given.get("fsdp_config")
    if isinstance(fsdp, Mapping) and fsdp.get("activation_checkpointing"):
        return False, "FSDP's own activation checkpointing (fsdp_config)"
    if backward:
        return (
            True,
            f"the default where a backward pass runs ({finetuning_type}); gradient_checkpointing: false turns it off",
        )
    return False, f"{finetuning_type} runs forward passes only"
