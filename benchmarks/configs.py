"""What the benchmarks run, as data: configurations, models and suites.

A *configuration* says who trains (``runner``) and how: ``llmtune`` runs ``llmtune.train.run.run_sft``
with the llmtune options given; ``trl`` runs plain TRL ``SFTTrainer`` (optionally with a PEFT LoRA, or
with an optimizer of the ``badam`` package); ``llamafactory`` runs LLaMA-Factory in its own virtual
environment on the equivalent YAML; ``inference`` runs forward passes only (the reference for ``zo``).
Every configuration of one run shares the model, data, batch size, sequence length and seed.
"""

from __future__ import annotations

LORA = {"lora_rank": 8, "lora_alpha": 16, "lora_target": "all"}
BLOCK = {"badam_switch_mode": "ascending", "badam_switch_interval": 50}
RATIO = {"badam_update_ratio": 0.05, "badam_switch_interval": 50}
FUSED = {"lm_head_loss": "fused"}  # TRL's fused LM head: the loss path of the TRL-based baselines

# name -> configuration. ``options`` are llmtune keys (LLaMA-Factory's names); ``lr`` is the learning
# rate of that configuration (a row and its baselines use the same).
CONFIGS: dict[str, dict] = {
    "full": {"runner": "llmtune", "options": {"finetuning_type": "full"}, "lr": 1e-5},
    # `full` on TRL's own loss path (its fused LM head, as trl_full): llmtune's overhead over TRL alone
    "full_fused": {"runner": "llmtune", "options": {"finetuning_type": "full", **FUSED}, "lr": 1e-5},
    # the same for the types compared with TRL-based baselines (trl_lora, badam_block, badam_ratio): like for like
    "lora_fused": {"runner": "llmtune", "options": {"finetuning_type": "lora", **LORA, **FUSED}, "lr": 1e-4},
    "block_fused": {"runner": "llmtune", "options": {"finetuning_type": "block", **BLOCK, **FUSED}, "lr": 1e-5},
    "sparse_fused": {"runner": "llmtune", "options": {"finetuning_type": "sparse", **RATIO, **FUSED}, "lr": 1e-5},
    "lora": {"runner": "llmtune", "options": {"finetuning_type": "lora", **LORA}, "lr": 1e-4},
    "block": {"runner": "llmtune", "options": {"finetuning_type": "block", **BLOCK}, "lr": 1e-5},
    "sparse": {"runner": "llmtune", "options": {"finetuning_type": "sparse", **RATIO}, "lr": 1e-5},
    # BAdam over a whole pass of the blocks: a switch every step, each block in turn (the block_pass suite)
    "block_pass": {
        "runner": "llmtune",
        "options": {"finetuning_type": "block", "badam_switch_mode": "ascending", "badam_switch_interval": 1},
        "lr": 1e-5,
    },
    "zo": {"runner": "llmtune", "options": {"finetuning_type": "zo"}, "lr": 1e-6},
    "zo_master": {"runner": "llmtune", "options": {"finetuning_type": "zo", "zo_master_weights": True}, "lr": 1e-6},
    "zo_lora": {"runner": "llmtune", "options": {"finetuning_type": "zo", "zo_target": "lora", **LORA}, "lr": 1e-4},
    "loretta_adp": {
        "runner": "llmtune",
        "options": {"finetuning_type": "loretta", "loretta_mode": "adapter"},
        "lr": 1e-4,
    },
    "loretta_rep": {
        "runner": "llmtune",
        "options": {"finetuning_type": "loretta", "loretta_mode": "reparam"},
        "lr": 1e-4,
    },
    "adazeta": {"runner": "llmtune", "options": {"finetuning_type": "adazeta"}, "lr": 1e-4},
    "qlora": {  # LoRA over a 4-bit nf4 base (bitsandbytes)
        "runner": "llmtune",
        "options": {"finetuning_type": "lora", "quantization_bit": 4, **LORA},
        "lr": 1e-4,
    },
    "inference": {"runner": "inference", "options": {"finetuning_type": "full"}, "lr": 0.0},
    "zero_shot": {"runner": "zero_shot", "options": {"finetuning_type": "full"}, "lr": 0.0},  # a task's "before"
    "trl_full": {"runner": "trl", "options": {"finetuning_type": "full"}, "lr": 1e-5, "baseline_of": "full"},
    "trl_lora": {"runner": "trl", "options": {"finetuning_type": "lora", **LORA}, "lr": 1e-4, "baseline_of": "lora"},
    "badam_block": {
        "runner": "trl",
        "optimizer": "badam_block",
        "options": {"finetuning_type": "full", **BLOCK},
        "lr": 1e-5,
        "baseline_of": "block",
    },
    "badam_ratio": {
        "runner": "trl",
        "optimizer": "badam_ratio",
        # its gradients are torch sparse tensors, which the Trainer's clipping (linalg_vector_norm) refuses
        "options": {"finetuning_type": "full", **RATIO, "max_grad_norm": 0.0},
        "lr": 1e-5,
        "baseline_of": "sparse",
    },
    "lf_full": {"runner": "llamafactory", "options": {"finetuning_type": "full"}, "lr": 1e-5, "baseline_of": "full"},
    "lf_lora": {
        "runner": "llamafactory",
        "options": {"finetuning_type": "lora", **LORA},
        "lr": 1e-4,
        "baseline_of": "lora",
    },
    "lf_badam": {
        "runner": "llamafactory",
        "options": {"finetuning_type": "block", **BLOCK},
        "lr": 1e-5,
        "baseline_of": "block",
    },
}

# LLaMA-Factory's BAdam over a whole pass, as block_pass (its switch rule, (step + 1) % 1 == 0, also
# switches after every step)
CONFIGS["lf_badam_pass"] = {
    **CONFIGS["lf_badam"],
    "options": CONFIGS["block_pass"]["options"],
    "baseline_of": "block_pass",
}

# The "before" of computing the LM head only where a loss reads it (issue #19): the same type with every
# position's logits computed and the read ones picked afterwards (benchmarks.child.every_position's_logits).
HEAD_TYPES = ["full", "lora", "block", "sparse", "zo", "zo_lora", "loretta_adp", "adazeta"]
for _name in HEAD_TYPES:
    CONFIGS[f"{_name}_all_logits"] = {**CONFIGS[_name], "all_logits": True}

MEMORY_ONLY = ("zo_master", "block_pass")  # run by their own suites only
LLMTUNE_TYPES = [
    name
    for name, c in CONFIGS.items()
    if c["runner"] == "llmtune" and name not in MEMORY_ONLY and not c.get("all_logits")
]
BASELINES = [name for name, c in CONFIGS.items() if c["runner"] in ("trl", "llamafactory") and name != "lf_badam_pass"]
ALL_CONFIGS = [*LLMTUNE_TYPES, "inference", *BASELINES]
SCALING = ["full", "lora", "block", "zo"]
QUALITY = [c for c in LLMTUNE_TYPES if c != "qlora" and not c.endswith("_fused")]  # every finetuning type, same budget


def llama_shape(hidden: int, layers: int) -> dict:
    """A Llama-shaped config of the given width and depth (SmolLM2's vocabulary, untied head)."""
    return {
        "hidden_size": hidden,
        "intermediate_size": hidden * 8 // 3 // 64 * 64,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // 64,
        "num_key_value_heads": max(1, hidden // 256),
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    }


# name -> model: an llmtune model name, or a random-initialised Llama shape (tokenizer from SmolLM2).
MODELS: dict[str, dict] = {
    "tiny": {"name": "llmtune/tiny-llama"},
    "smollm2": {"name": "llmtune/smollm2-135m"},
    "llama-S": {"random": llama_shape(256, 4)},
    "llama-M": {"random": llama_shape(512, 8)},
    "llama-L": {"random": llama_shape(768, 12)},
    "llama-1B": {"random": llama_shape(2048, 16)},
    "llama-3B": {"random": llama_shape(3072, 26)},
}

# A suite: shared settings and groups; each group runs its ``configs`` on every (model, length) pair.
# ``dataset`` is a dataset_info name in ``dataset_dir`` (None: llmtune's own data/ folder);
# ``fill_rows``: every row is made longer than ``cutoff_len`` (``run.filled_rows``), so every batch is
# batch x cutoff_len tokens on every runner. A group's ``task`` trains on that choice task as
# classification instead, and scores the trained model on its eval split afterwards.
SUITES: dict[str, dict] = {
    "smoke": {  # one optimizer step of every configuration on the tiny model: the test that keeps this alive
        "warmup": 0,
        "steps": 1,
        "batch": 2,
        "bf16": False,
        "dataset": "demo_alpaca",
        "groups": [{"models": ["tiny"], "lengths": [32], "configs": [c for c in ALL_CONFIGS if c[:3] != "lf_"]}],
    },
    "cpu": {
        "warmup": 1,
        "steps": 4,
        "repeats": 3,  # every (model, length) group runs its configurations in turn, 3 times: A B C A B C A B C
        "batch": 4,
        "bf16": False,
        "dataset": "alpaca_en_demo",
        "fill_rows": True,
        "groups": [
            {"models": ["tiny"], "lengths": [128], "configs": ALL_CONFIGS},
            {"models": ["smollm2"], "lengths": [256], "configs": ALL_CONFIGS},
            {"models": ["llama-S", "llama-M", "llama-L"], "lengths": [256], "configs": SCALING},
            {"models": ["llama-M"], "lengths": [128, 512], "configs": SCALING},
        ],
    },
    # MeZO's headline: zeroth-order training in the memory of inference. bf16 weights (on a CPU this
    # needs LLMTUNE_ALLOW_CPU_BF16=1, which the runner sets for this suite) against bf16 inference of
    # the same batch, zo with fp32 master weights, and the fp32 pair.
    "memory": {
        "warmup": 1,
        "steps": 2,
        "repeats": 1,
        "batch": 4,
        "bf16": True,
        "cpu_bf16": True,
        "dataset": "alpaca_en_demo",
        "fill_rows": True,
        "groups": [
            {
                "models": ["smollm2"],
                "lengths": [256],
                "configs": ["inference", "zo", "zo_master", "zo_lora", "adazeta"],
            },
            {"models": ["smollm2"], "lengths": [256], "configs": ["inference", "zo"], "bf16": False},
        ],
    },
    # BAdam's step against full's over a whole pass of SmolLM2's 30 layers (warm-up 1, then 30 steps: every
    # block once), batch 2 x 256, interleaved and repeated; also what its switches cost (switch_seconds).
    # LLaMA-Factory's BAdam against its own full on the same batches (lf_badam_pass, lf_full).
    "block_pass": {
        "warmup": 1,
        "steps": 30,
        "repeats": 3,
        "batch": 2,
        "bf16": False,
        "dataset": "alpaca_en_demo",
        "fill_rows": True,
        "groups": [
            {"models": ["smollm2"], "lengths": [256], "configs": ["block_pass", "full", "lf_badam_pass", "lf_full"]}
        ],
    },
    # Each type's step with the LM head only at the positions its loss reads, against the same type
    # computing every position's logits (the code before issue #19), in turn: SFT on the demo rows as
    # they are (prompt and padding positions are not read), and classification on a task (a few option
    # positions per row are read). No scoring after training: the step is what is measured.
    "head": {
        "warmup": 1,
        "steps": 3,
        "repeats": 2,
        "batch": 4,
        "bf16": False,
        "dataset": "alpaca_en_demo",
        "groups": [
            {
                "models": ["smollm2"],
                "lengths": [256],
                "configs": [c for t in HEAD_TYPES for c in (t, f"{t}_all_logits")],
            },
            {
                "models": ["smollm2"],
                "lengths": [256],
                "configs": [c for t in ("full", "lora", "zo") for c in (t, f"{t}_all_logits")],
                "task": "demo_sst2",
                "score": False,
            },
        ],
    },
    "quality": {  # loss curves of every llmtune finetuning type on SmolLM2, on the same budget
        "warmup": 0,
        "steps": 30,
        "batch": 4,
        "bf16": False,
        "dataset": "alpaca_en_demo",
        "groups": [
            {"models": ["smollm2"], "lengths": [256], "configs": QUALITY},
            {"models": ["smollm2"], "lengths": [128], "configs": ["zero_shot", *QUALITY], "task": "demo_rte"},
        ],
    },
    "gpu": {
        "warmup": 2,
        "steps": 10,
        "repeats": 3,
        "batch": 8,
        "bf16": True,
        "dataset": "alpaca_en_demo",
        "fill_rows": True,
        "groups": [
            {"models": ["smollm2"], "lengths": [512], "configs": ALL_CONFIGS},
            {"models": ["llama-L", "llama-1B", "llama-3B"], "lengths": [512], "configs": SCALING},
            {"models": ["llama-1B"], "lengths": [256, 1024], "configs": SCALING},
        ],
    },
}
