"""Arguments that say which model and tokenizer to load and how."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelArguments:
    """The model to fine-tune: a hub name, a local folder, or an embedded default (`llmtune/tiny-llama`)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub model id, local path, or `llmtune/tiny-llama` (a tiny model built locally)."},
    )
    adapter_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved adapter folder to load on top of the model."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models are stored."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run Python code shipped with the model repository. Off unless you trust its author."},
    )
    use_fast_tokenizer: bool = field(default=True, metadata={"help": "Use the fast (Rust) tokenizer."})
    flash_attn: str = field(default="auto", metadata={"help": "Attention implementation: auto, sdpa, eager or fa2."})
    low_cpu_mem_usage: bool = field(
        default=True,
        metadata={"help": "Accepted for LLaMA-Factory configs; transformers 5 always loads weights lazily."},
    )
