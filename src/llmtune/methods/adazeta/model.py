"""Prepare a model for ``finetuning_type: adazeta``: AdaZeta's TT adapters, norms frozen."""

from __future__ import annotations

from typing import Any

from llmtune.methods.loretta.model import build_loretta_model
from llmtune.methods.loretta.tuner.config import REFERENCE_ADAPTER_PLACEMENT
from llmtune.methods.zo.model import set_zo_dtypes

ADAZETA_RANK = 5  # the reference run_all_large_exp.sh (RANK=5) and LorettaAdpConfig's default


def prepare_adazeta(model: Any, args: Any) -> Any:
    """Return ``model`` wrapped with tensor-train adapters (the ``loretta_*`` options) for zeroth-order training.

    By default the adapters are AdaZeta's: TT rank 5, bottleneck 64, on the inputs of
    ``gate_proj``/``up_proj`` and the output of ``down_proj`` (Llama; ``fc1``/``fc2`` for OPT), as
    its reference code places them. As in AdaZeta, only the adapters train: the layer norms stay
    frozen (``loretta_train_norms`` is refused before anything loads, see
    :mod:`~llmtune.methods.adazeta.checks`). The trainable weights are in the compute dtype,
    or float32 with ``zo_master_weights`` (:func:`~llmtune.methods.zo.model.set_zo_dtypes`), and the model carries the ``zo_*`` and ``adazeta_*``
    options for :class:`~llmtune.methods.adazeta.trainer.AdaZetaTrainer`.
    """
    model = build_loretta_model(
        model,
        args.methods["loretta"],
        train_norms=False,
        adapter_path=args.model.adapter_name_or_path,
        default_rank=ADAZETA_RANK,
        placement=REFERENCE_ADAPTER_PLACEMENT,
    )
    set_zo_dtypes(model, args)
    return model
