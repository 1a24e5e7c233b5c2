"""Finetuning methods: one folder each, all registered in :mod:`llmtune.methods.registry`."""

from llmtune.methods.lora.config import LoraArguments
from llmtune.methods.registry import METHODS, Method, get_method, method_argument_classes, register

register(Method("full", "all weights trained with AdamW", prepare="llmtune.methods.full.model:prepare_full"))
register(
    Method(
        "lora",
        "PEFT LoRA adapters on the chosen linear layers",
        arguments=LoraArguments,
        prepare="llmtune.methods.lora.model:prepare_lora",
    )
)
register(Method("block", "BAdam: Adam on one block of layers at a time", issue=3))
register(Method("sparse", "BAdam by parameter ratio", issue=3))
register(Method("zo", "MeZO zeroth-order SGD (ZO-AdaMU optional)", issue=4))
register(Method("adazeta", "tensor-train adapters with an adaptive query schedule", issue=5))
register(Method("loretta", "tensor-train adapters / reparameterisation", issue=5))

__all__ = ["METHODS", "Method", "get_method", "method_argument_classes", "register"]
