"""Ready a model for BAdam (``finetuning_type: block`` and ``sparse``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from llmtune.methods.block.config import BlockArguments
from llmtune.methods.block.partition import ParamBlock, freeze_outside, partition_blocks, scope_parameters

logger = logging.getLogger("llmtune")

SETUP_ATTRIBUTE = "llmtune_badam"  # where prepare leaves the BadamSetup for the trainer


@dataclass
class BadamSetup:
    """What ``prepare_block``/``prepare_sparse`` leave on the model for the trainer to build its optimizer.

    The training path hands a trainer the model and the TrainingArguments only, so the method's own
    options travel on the model (a plain attribute: never saved with the weights).
    """

    kind: str  # "block" or "sparse"
    blocks: list[ParamBlock]
    block: BlockArguments
    sparse: Any = None  # SparseArguments for kind == "sparse"
    seed: int = 0


def badam_setup(model: torch.nn.Module) -> BadamSetup:
    """The :class:`BadamSetup` that prepare left on ``model``."""
    setup = getattr(model, SETUP_ATTRIBUTE, None)
    if setup is None:
        raise RuntimeError("this model was not prepared by prepare_block or prepare_sparse")
    return setup


def prepare_badam(model: Any, args: Any, kind: str) -> Any:
    """Cast, partition and freeze ``model`` for BAdam; leave a :class:`BadamSetup` on it.

    With ``bf16: true`` the weights are kept in bfloat16 (BAdam's 2 bytes per parameter): the
    optimizers hold an fp32 master of what they update. Otherwise the weights are fp32 (with
    ``fp16: true`` too, so that the gradient scaler works). The parameters of every block train
    (``requires_grad``) until the optimizer narrows them to the active block; all others are frozen.
    """
    options: BlockArguments = args.methods["block"]
    model = model.to(torch.bfloat16) if args.training.bf16 else model.float()
    blocks = partition_blocks(
        model,
        include_embedding=options.badam_include_embedding,
        include_lm_head=options.badam_include_lm_head,
        active_modules=options.active_modules,
    )
    freeze_outside(model, blocks)
    for _, param in scope_parameters(blocks):
        param.requires_grad_(True)
    setattr(
        model,
        SETUP_ATTRIBUTE,
        BadamSetup(kind, blocks, options, args.methods.get("sparse") if kind == "sparse" else None, args.training.seed),
    )
    largest = max(blocks, key=lambda b: b.numel)
    logger.info(
        "BAdam (%s): %d blocks (%s ... %s), the largest %s parameters (%s); weights in %s",
        kind,
        len(blocks),
        blocks[0].name,
        blocks[-1].name,
        f"{largest.numel:,}",
        largest.name,
        str(next(model.parameters()).dtype).replace("torch.", ""),
    )
    return model


def prepare_block(model: Any, args: Any) -> Any:
    """``finetuning_type: block``: see :func:`prepare_badam`."""
    return prepare_badam(model, args, "block")
