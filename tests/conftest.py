"""Shared fixtures: everything offline, on the CPU, with tiny models built locally."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def tiny_config(output_dir, finetuning_type: str = "lora", **overrides) -> dict:
    """A config for a few seconds of training of the embedded tiny model on the demo data."""
    config = {
        "model_name_or_path": "llmtune/tiny-llama",
        "stage": "sft",
        "finetuning_type": finetuning_type,
        "dataset": "demo_alpaca",
        "template": "default",
        "cutoff_len": 64,
        "max_samples": 160,
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 8,
        "learning_rate": {"full": 3e-3, "lora": 1e-2}.get(finetuning_type, 1e-3),
        "max_steps": 20,
        "logging_steps": 1,
        "save_steps": 10,
        "lr_scheduler_type": "constant",
        "seed": 0,
        "report_to": "none",
        "disable_tqdm": True,
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_config():
    """``make_config(output_dir, finetuning_type, **overrides)`` -> a tiny training config dict."""
    return tiny_config


@pytest.fixture(scope="session")
def bnb_logits():
    """``bnb_logits(model, ids)``: eval-mode logits with every bitsandbytes ``Linear4bit`` left in train mode.

    In eval mode on a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight for a bfloat16 kernel
    (unless the input requires a gradient), so two equal models could compute in different precisions.
    """
    import torch

    bnb = pytest.importorskip("bitsandbytes")

    def logits(model, ids):
        model.eval()
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.train()
        with torch.no_grad():
            return model(input_ids=ids).logits

    return logits


@pytest.fixture(scope="session")
def llama3_8b_config():
    """A ``LlamaConfig`` with meta-llama/Meta-Llama-3-8B's shapes (estimates need no download)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    )
