"""Ready a model for BAdam (``finetuning_type: block`` and ``sparse``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from llmtune.methods.block.config import BlockArguments
from llmtune.methods.block.partition import ParamBlock, freeze_outside, partition_blocks, scope_parameters

logger = logging.getLogger("llmtune")


@dataclass
class BadamSetup:
    """What a BAdam optimizer is built from: the model's blocks and the method's options (the trainer
    gets the options as constructor arguments, the registry's ``trainer_kwargs``, and partitions the
    model it trains the way ``prepare`` did)."""

    kind: str  # "block" or "sparse"
    blocks: list[ParamBlock]
    block: BlockArguments
    sparse: Any = None  # SparseArguments for kind == "sparse"
    seed: int = 0


def badam_setup(
    model: torch.nn.Module, kind: str, options: BlockArguments, sparse: Any = None, seed: int = 0
) -> BadamSetup:
    """The blocks of ``model`` under ``options`` (the same partition for ``prepare`` and the trainer)."""
    blocks = partition_blocks(
        model,
        include_embedding=options.badam_include_embedding,
        include_lm_head=options.badam_include_lm_head,
        active_modules=options.active_modules,
    )
    return BadamSetup(kind, blocks, options, sparse if kind == "sparse" else None, seed)


def setup_of_run(model: torch.nn.Module, args: Any, kind: str) -> BadamSetup:
    """:func:`badam_setup` with a run's arguments."""
    return badam_setup(model, kind, args.methods["block"], args.methods.get("sparse"), args.training.seed)


def trainer_kwargs(args: Any) -> dict[str, Any]:
    """The registry's ``trainer_kwargs`` of ``block`` and ``sparse``: their options for the trainer."""
    return {"block_arguments": args.methods["block"], "sparse_arguments": args.methods.get("sparse")}


def prepare_badam(model: Any, args: Any, kind: str) -> Any:
    """Cast, partition and freeze ``model`` for BAdam.

    With ``bf16: true`` the weights are kept in bfloat16 (BAdam's 2 bytes per parameter): the
    optimizers hold an fp32 master of what they update. Otherwise the weights are fp32 (with
    ``fp16: true`` too, so that the gradient scaler works). The parameters of every block train
    (``requires_grad``) until the optimizer narrows them to the active block; all others are frozen.
    """
    model = model.to(torch.bfloat16) if args.training.bf16 else model.float()
    blocks = setup_of_run(model, args, kind).blocks
    freeze_outside(model, blocks)
    for _, param in scope_parameters(blocks):
        param.requires_grad_(True)
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
