"""Prepare a model for full fine-tuning."""

from __future__ import annotations

from typing import Any


def prepare_full(model: Any, args: Any) -> Any:
    """Make every parameter trainable and keep the master weights in fp32.

    Mixed precision (bf16/fp16) is applied by the Trainer's autocast; the weights themselves stay
    fp32 so Adam's update is not lost to rounding.
    """
    for param in model.parameters():
        param.requires_grad_(True)
    return model.float()
