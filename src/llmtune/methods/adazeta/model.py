"""Prepare a model for ``finetuning_type: adazeta``: LoRETTA adapters, layer norms frozen, float32 trainables."""

from __future__ import annotations

from typing import Any

import torch

from llmtune.methods.adazeta.trainer import ADAZETA_ARGUMENTS_ATTR
from llmtune.methods.loretta.model import build_loretta_model
from llmtune.methods.zo.model import ZO_ARGUMENTS_ATTR


def prepare_adazeta(model: Any, args: Any) -> Any:
    """Return ``model`` wrapped with tensor-train adapters (the ``loretta_*`` options) for zeroth-order training.

    As in AdaZeta, only the adapters train: the layer norms stay frozen (``loretta_train_norms`` is
    refused before anything loads, see :mod:`~llmtune.methods.adazeta.checks`). The trainable
    weights are float32 (``bf16``/``fp16`` set the precision of the forwards only), and the model
    carries the ``zo_*`` and ``adazeta_*`` options for :class:`~llmtune.methods.adazeta.trainer.AdaZetaTrainer`.
    """
    model = build_loretta_model(
        model, args.methods["loretta"], train_norms=False, adapter_path=args.model.adapter_name_or_path
    )
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    setattr(model, ZO_ARGUMENTS_ATTR, args.methods["zo"])
    setattr(model, ADAZETA_ARGUMENTS_ATTR, args.methods["adazeta"])
    return model
