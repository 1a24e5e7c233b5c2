"""Training arguments: TRL's ``SFTConfig`` with LLaMA-Factory's defaults and names.

Every field of ``transformers.TrainingArguments`` and ``trl.SFTConfig`` is accepted under its
own name (``learning_rate``, ``per_device_train_batch_size``, ``save_steps``, ``deepspeed``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from llmtune.errors import ConfigError


@dataclass
class TrainingArguments(SFTConfig):
    """``SFTConfig`` plus ``overwrite_output_dir``, with precision and checkpointing off by default.

    TRL turns bf16 and gradient checkpointing on by default; LLaMA-Factory configs (and llmtune)
    ask for them explicitly, so a config means the same thing in both tools.
    """

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Empty a non-empty output_dir before training. Without it llmtune refuses to touch it."},
    )
    bf16: bool | None = field(default=False, metadata={"help": "Train in bfloat16 mixed precision (GPU only)."})
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Recompute activations in the backward pass to save memory."}
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
        from llmtune.hparams.parser import is_secret

        state = self.__dict__.copy()
        for key, value in state.items():
            if value and isinstance(value, str) and is_secret(key):
                state[key] = "<redacted>"
        return state
