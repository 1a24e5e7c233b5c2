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
    quantization_bit: int | None = field(
        default=None,
        metadata={
            "help": "Load the base model's linear layers quantised to 4 or 8 bits with bitsandbytes (4: QLoRA). "
            "For lora, loretta, and zo/adazeta with adapters; the compute dtype follows bf16/fp16 (else fp32)."
        },
    )
    quantization_method: str = field(
        default="bnb", metadata={"help": "Quantisation library: bnb (bitsandbytes), the only one llmtune supports."}
    )
    quantization_type: str = field(
        default="nf4", metadata={"help": "4-bit data type: nf4 (NormalFloat, QLoRA's) or fp4."}
    )
    double_quantization: bool = field(
        default=True,
        metadata={"help": "4-bit only: quantise the quantisation constants too (about 0.37 bits per weight saved)."},
    )
    # Set by the parser from bf16/fp16 (not a config key): the dtype quantised layers compute in.
    compute_dtype: str | None = field(default=None, init=False, repr=False)
