"""The LM head only where a loss or a metric reads it.

A causal LM computes ``[N, T, V]`` logits, but an SFT loss reads only the positions that predict a
labelled token, classification (``train_as_classification``, ``llmtune eval``, ``zo``) only those that
predict an option's tokens, and a label-word metric one position per row. With SmolLM2's vocabulary
(49,152 x 576, tied) the head is about a fifth of a forward, and most of it is thrown away.

:func:`logits_at` runs the model with a forward pre-hook on its output embedding (``lm_head``) that
hands the head the hidden states at the chosen positions only, so the head computes ``[M, V]``
logits for the ``M`` positions read, in row-major order (the order of ``hidden[positions]``). The
hook works through PEFT wrappers, prefix tuning (the prefix lives in the cache, not in the hidden
states), zeroth-order perturbation hooks and DeepSpeed's parameter gathering, since it changes only
the head's input. :func:`causal_lm_loss` is transformers' ``ForCausalLMLoss`` on those positions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module that computes the logits (a transformers model's ``get_output_embeddings()``), or None."""
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if callable(getter) else None


@contextmanager
def head_only_at(model: torch.nn.Module, positions: torch.Tensor) -> Iterator[None]:
    """While the block runs, ``model``'s LM head computes logits only at ``positions`` (bool ``[N, T]``).

    The model's ``.logits`` are then ``[M, V]`` with ``M = positions.sum()``. Raises ``ValueError``
    when the hidden states reaching the head are not ``[N, T, H]`` (a model that prepends tokens).
    """
    head = output_head(model)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embedding to restrict")

    def gather(module: torch.nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        if hidden.shape[:2] != positions.shape:
            raise ValueError(
                f"the LM head received hidden states of shape {tuple(hidden.shape)}, positions are "
                f"{tuple(positions.shape)}"
            )
        return (hidden[positions.to(hidden.device)], *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def logits_at(model: torch.nn.Module, inputs: dict[str, Any], positions: torch.Tensor) -> torch.Tensor:
    """``[M, V]`` logits of ``model(**inputs)`` at the ``M`` true entries of ``positions`` (``[N, T]``).

    A model without an output-embedding module computes every position and is indexed afterwards.
    """
    if output_head(model) is None:
        logits = model(**inputs).logits
        return logits[positions.to(logits.device)]
    with head_only_at(model, positions):
        return model(**inputs).logits


def label_positions(labels: torch.Tensor) -> torch.Tensor:
    """Bool ``[N, T]``: the positions whose logits predict a labelled token (position ``t`` predicts ``t + 1``)."""
    read = torch.zeros_like(labels, dtype=torch.bool)
    read[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return read


def causal_lm_loss(
    model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, logits, targets)``: the causal-LM loss on ``inputs["labels"]`` from the head at labelled positions only.

    The same number as transformers' ``ForCausalLMLoss`` over the full logits: the cross-entropy of the
    float32 logits, the mean over labelled tokens, or with ``num_items_in_batch`` their sum divided by it
    (so the micro-batches of an accumulated batch add up to its loss). ``logits`` ``[M, V]`` and
    ``targets`` ``[M]`` are the labelled positions' (for token accuracy).
    """
    labels = inputs["labels"]
    positions = label_positions(labels)
    logits = logits_at(model, {k: v for k, v in inputs.items() if k != "labels"}, positions)
    targets = labels[:, 1:][labels[:, 1:] != IGNORE_INDEX].to(logits.device)
    if num_items_in_batch is None:
        loss = F.cross_entropy(logits.float(), targets, reduction="mean")
    else:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(logits.device)
        loss = F.cross_entropy(logits.float(), targets, reduction="sum") / num_items_in_batch
    return loss, logits, targets
