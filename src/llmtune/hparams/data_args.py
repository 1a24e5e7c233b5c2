"""Arguments that say which data to train on and how to turn it into tokens."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataArguments:
    """Which datasets to use, how to render them with a chat template, and how to cut them."""

    dataset: str | None = field(
        default=None,
        metadata={"help": "Comma-separated names from `dataset_dir/dataset_info.json` to train on."},
    )
    eval_dataset: str | None = field(
        default=None,
        metadata={"help": "Comma-separated names of datasets to evaluate on (else `val_size` splits one off)."},
    )
    dataset_dir: str = field(
        default="data",
        metadata={
            "help": "Folder holding `dataset_info.json` and local dataset files. 'data' falls back to "
            "llmtune's shipped demo data when there is no ./data folder."
        },
    )
    template: str = field(
        default="default",
        metadata={
            "help": "Chat template used to render prompts: default, alpaca, llama2, llama3, chatml, qwen, "
            "mistral, or auto (the tokenizer's own chat template)."
        },
    )
    cutoff_len: int = field(
        default=2048,
        metadata={"help": "Maximum tokens per example; longer ones are truncated (and counted)."},
    )
    train_on_prompt: bool = field(
        default=False, metadata={"help": "Also compute the loss on prompt tokens (default: response only)."}
    )
    mask_history: bool = field(
        default=False, metadata={"help": "Train only on the last turn of multi-turn conversations."}
    )
    neat_packing: bool = field(
        default=False,
        metadata={
            "help": "Pack several rows into each cutoff_len sequence; each row attends only to itself and keeps its "
            "own (response-only) labels. `packing: true` means the same in llmtune."
        },
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many examples from each dataset (for quick runs)."}
    )
    k_shot: int = field(
        default=0,
        metadata={
            "help": "Tasks only: k examples per class drawn with `seed` from each task's train split for training, and "
            "another k per class as the dev set (LM-BFF's and MeZO's protocol); the task's eval split stays the test "
            "set. Training (train_as_classification): 0 trains on every row; with no eval_dataset the dev set is "
            "evaluated during training. llmtune kernel: required (>= 1; the papers use 16)."
        },
    )
    val_size: float = field(
        default=0.0,
        metadata={"help": "Split off this fraction (<1) or number (>=1) of training examples for evaluation."},
    )
    skip_bad_rows: bool = field(
        default=False,
        metadata={"help": "Skip and count invalid rows (empty text, wrong types, bad bytes) instead of stopping."},
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes used to tokenise the dataset."}
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Accepted for LLaMA-Factory configs; llmtune keeps no tokenised cache."}
    )
    default_system: str | None = field(
        default=None, metadata={"help": "System prompt used when a row has none (overrides the template's)."}
    )
