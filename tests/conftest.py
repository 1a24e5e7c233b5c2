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
