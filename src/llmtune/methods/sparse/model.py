"""Ready a model for ``finetuning_type: sparse``: the same partition and precision as ``block``."""

from __future__ import annotations

from typing import Any

from llmtune.methods.block.model import prepare_badam


def prepare_sparse(model: Any, args: Any) -> Any:
    """Every parameter some BAdam block would train is trainable; see :func:`prepare_badam`."""
    return prepare_badam(model, args, "sparse")
