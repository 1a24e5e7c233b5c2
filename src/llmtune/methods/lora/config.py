"""Options of ``finetuning_type: lora`` (LLaMA-Factory's names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmtune.errors import ConfigError


@dataclass
class LoraArguments:
    """LoRA adapter shape and placement."""

    lora_rank: int = field(default=8, metadata={"help": "Rank r of the LoRA update B @ A."})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA scale numerator (default: 2 x lora_rank)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target: str = field(
        default="all",
        metadata={
            "help": "Comma-separated module names to adapt (e.g. q_proj,v_proj), or 'all' for every "
            "linear layer except the output head."
        },
    )
    additional_target: str | None = field(
        default=None,
        metadata={"help": "Comma-separated modules trained fully beside the adapters (e.g. embed_tokens,lm_head)."},
    )
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA scaling (alpha / sqrt(r))."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})

    def __post_init__(self):
        if self.lora_rank <= 0:
            raise ConfigError(f"lora_rank: {self.lora_rank} must be a positive integer")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout: {self.lora_dropout} must be in [0, 1)")
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_rank
