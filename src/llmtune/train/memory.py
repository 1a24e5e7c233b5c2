"""A first-order memory figure for a training run, and the message an out-of-memory error gets."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from llmtune.errors import LlmtuneError
from llmtune.parameters import full_numel

GIB = 2**30


class OutOfMemory(LlmtuneError, MemoryError):
    """The GPU ran out of memory; the message says how much the run needs and how to need less."""


def estimate_training_bytes(
    model: torch.nn.Module,
    optimizer_bytes_per_param: float = 8,
    *,
    trainable: Iterable[torch.nn.Parameter] | None = None,
    gradient_bytes_per_param: float | None = None,
) -> dict[str, int]:
    """Bytes for weights, gradients and optimizer state (AdamW: two fp32 moments), no activations.

    Returns ``{"weights", "gradients", "optimizer", "total"}``. Activations depend on batch size and
    ``cutoff_len`` and come on top; this is the floor, not the peak.

    ``trainable`` names the parameters that hold gradients and optimizer state at the same time
    (default: those with ``requires_grad``; BAdam passes its largest block). A gradient costs the
    parameter's element size unless ``gradient_bytes_per_param`` says otherwise.
    """
    trainable_ids = None if trainable is None else {id(p) for p in trainable}
    weights = 0
    gradients = optimizer = 0.0
    seen: set[int] = set()
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        numel = full_numel(param)
        weights += numel * param.element_size()
        if param.requires_grad if trainable_ids is None else id(param) in trainable_ids:
            gradients += numel * (
                param.element_size() if gradient_bytes_per_param is None else gradient_bytes_per_param
            )
            optimizer += numel * optimizer_bytes_per_param
    return {
        "weights": weights,
        "gradients": int(gradients),
        "optimizer": int(optimizer),
        "total": weights + int(gradients) + int(optimizer),
    }


def out_of_memory_error(model: torch.nn.Module, finetuning_type: str, err: BaseException) -> OutOfMemory:
    """One line: what ran out, the estimate for this run, and the options that need less memory."""
    est = estimate_training_bytes(model)
    where = str(err).strip().splitlines()[0][:160] if str(err).strip() else "CUDA out of memory"
    return OutOfMemory(
        f"out of GPU memory ({where}). This {finetuning_type} run needs at least {est['total'] / GIB:.1f} GiB for "
        f"weights ({est['weights'] / GIB:.1f}), gradients ({est['gradients'] / GIB:.1f}) and optimizer state "
        f"({est['optimizer'] / GIB:.1f}) before activations. To need less: finetuning_type: block (BAdam) or zo "
        "(forward passes only), lora with quantization_bit: 4 (QLoRA), a smaller cutoff_len or "
        "per_device_train_batch_size, or gradient_checkpointing: true"
    )
