"""Finetuning methods: one folder each, all registered in :mod:`llmtune.methods.registry`."""

from llmtune.methods.adazeta.config import AdaZetaArguments
from llmtune.methods.block.config import BlockArguments
from llmtune.methods.lora.config import LoraArguments
from llmtune.methods.loretta.config import LorettaArguments
from llmtune.methods.registry import (
    METHODS,
    Method,
    finetuning_types,
    get_method,
    method_argument_classes,
    register,
)
from llmtune.methods.sparse.config import SparseArguments
from llmtune.methods.zo.config import ZerothOrderArguments

register(
    Method(
        "full", "all weights trained with AdamW", prepare="llmtune.methods.full.model:prepare_full", bnb_optimizers=True
    )
)
register(
    Method(
        "lora",
        "PEFT LoRA adapters on the chosen linear layers",
        arguments=LoraArguments,
        prepare="llmtune.methods.lora.model:prepare_lora",
        bnb_optimizers=True,
    )
)
register(
    Method(
        "block",
        "BAdam: Adam on one block of layers at a time",
        arguments=BlockArguments,
        prepare="llmtune.methods.block.model:prepare_block",
        trainer="llmtune.methods.block.trainer:BlockTrainer",
        keeps_half_weights=True,
        normalise="llmtune.methods.block.normalise:normalise_badam",  # also reads use_badam for sparse
        bnb_optimizers=True,  # the base optimizer of each block
        trainer_kwargs="llmtune.methods.block.model:trainer_kwargs",
    )
)
register(
    Method(
        "sparse",
        "BAdam ratio mode: Adam on a sliding fraction of every weight",
        arguments=SparseArguments,
        prepare="llmtune.methods.sparse.model:prepare_sparse",
        trainer="llmtune.methods.sparse.trainer:SparseTrainer",
        keeps_half_weights=True,
        also_uses=("block",),  # BAdam's partition and switch options
        trainer_kwargs="llmtune.methods.block.model:trainer_kwargs",
    )
)
register(
    Method(
        "zo",
        "MeZO zeroth-order SGD (ZO-AdaMU optional): forward passes only",
        arguments=ZerothOrderArguments,
        prepare="llmtune.methods.zo.model:prepare_zo",
        trainer="llmtune.methods.zo.trainer:ZerothOrderTrainer",
        keeps_half_weights=True,
        backward=False,
        data="llmtune.methods.zo.qa:answer_data",  # zo_objective: f1 trains on QA prompts and answers
        trainer_kwargs="llmtune.methods.zo.trainer:trainer_kwargs",
        check="llmtune.methods.zo.model:check_zo_run",
    )
)
register(
    Method(
        "adazeta",
        "AdaZeta: zeroth-order training of tensor-train adapters with an adaptive query schedule",
        arguments=AdaZetaArguments,
        prepare="llmtune.methods.adazeta.model:prepare_adazeta",
        trainer="llmtune.methods.adazeta.trainer:AdaZetaTrainer",
        normalise="llmtune.methods.adazeta.checks:check_adazeta_config",
        report="llmtune.methods.loretta.model:report_loretta",
        keeps_half_weights=True,
        backward=False,
        also_uses=("loretta", "zo"),  # LoRETTA's adapter shapes and the zo_* estimate
        trainer_kwargs="llmtune.methods.adazeta.trainer:trainer_kwargs",
    )
)
register(
    Method(
        "loretta",
        "LoRETTA tensor-train adapters (loretta_mode: adapter) or a tensor-train ΔW (reparam)",
        arguments=LorettaArguments,
        prepare="llmtune.methods.loretta.model:prepare_loretta",
        report="llmtune.methods.loretta.model:report_loretta",
        bnb_optimizers=True,
        peft_tuner="llmtune.methods.loretta.tuner",  # AdaZeta saves the same adapter type
    )
)

__all__ = ["METHODS", "Method", "finetuning_types", "get_method", "method_argument_classes", "register"]
