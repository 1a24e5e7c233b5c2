"""The dtypes a run computes and trains in (a leaf: the method registry and the loaders both use it)."""

from __future__ import annotations

import torch


def compute_dtype_name(bf16: bool, fp16: bool) -> str:
    """The dtype a run computes in (and quantised layers compute in): that of the mixed precision asked
    for, else float32."""
    return "bfloat16" if bf16 else "float16" if fp16 else "float32"


def compute_dtype(bf16: bool | None, fp16: bool | None) -> torch.dtype:
    """The dtype a model is loaded in for training: bfloat16 or float16 as asked, else float32."""
    return getattr(torch, compute_dtype_name(bool(bf16), bool(fp16)))


def set_training_dtypes(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Trainable parameters in float32; frozen floating-point ones in ``dtype`` (the compute dtype).

    With bf16/fp16 a LoRA base then costs 2 bytes per parameter while what is trained keeps fp32
    weights for the optimizer and the fp16 gradient scaler (as LLaMA-Factory and PEFT's QLoRA recipe do).
    Quantised weights (integer storage) are left alone.
    """
    for param in model.parameters():
        if not param.is_floating_point():
            continue
        target = torch.float32 if param.requires_grad else dtype
        if param.dtype != target:
            param.data = param.data.to(target)
