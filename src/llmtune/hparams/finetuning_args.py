"""Arguments that choose the training stage and the finetuning method.

Options that belong to one method (``lora_rank``, later ``badam_*``) live in that method's
folder (``llmtune/methods/<name>/config.py``); this dataclass holds only what every method shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STAGES = ("sft",)
LM_HEAD_LOSSES = ("auto", "fused", "logits")
# Stages LLaMA-Factory offers that llmtune does not (yet): named so the error can say so.
FOREIGN_STAGES = ("pt", "rm", "ppo", "dpo", "kto")


@dataclass
class FinetuningArguments:
    """The training stage, the finetuning method, and what every method shares."""

    stage: str = field(default="sft", metadata={"choices": STAGES, "help": "Training stage. llmtune supports: sft."})
    finetuning_type: str = field(
        default="lora",
        metadata={"help": "How to train; the registered methods (llmtune.methods):", "choices_from": "methods"},
    )
    train_as_classification: bool = field(
        default=False,
        metadata={
            "help": "For choice tasks (sst2, rte, ... in tasks.json): train with cross-entropy over the options' "
            "mean log-probabilities (MeZO) instead of prompt/completion SFT."
        },
    )
    plot_loss: bool = field(
        default=False, metadata={"help": "Write training_loss.png (and eval_loss.png) into output_dir."}
    )
    lm_head_loss: str = field(
        default="auto",
        metadata={
            "choices": LM_HEAD_LOSSES,
            "help": "How the SFT loss is computed. fused: TRL's fused LM head (the head in tiles, no full "
            "logits; with Triton on a GPU only the labelled positions). logits: the model's forward with the LM "
            "head run at the labelled positions only, then transformers' cross-entropy (the same loss as over "
            "full logits; logs mean_token_accuracy, not entropy). auto: fused where Triton runs it, logits "
            "elsewhere (on a CPU TRL's tiles score every position and recompute the head in the backward pass, "
            "which is slower; the cpu benchmark suite pairs full with full_fused to measure by how much).",
        },
    )
    stop_on_nan: bool = field(
        default=True,
        metadata={"help": "Stop the run when the loss becomes NaN or infinite, keeping the last good checkpoint."},
    )
