"""Wrap a model with PEFT LoRA adapters."""

from __future__ import annotations

from typing import Any

import torch

from llmtune.errors import ConfigError


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names of every ``nn.Linear`` in ``model`` except the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {
        name.split(".")[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }
    return sorted(names)


def _split(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def prepare_lora(model: Any, args: Any) -> Any:
    """Return ``model`` wrapped in a ``PeftModel`` with LoRA on ``lora_target``.

    ``lora_target: all`` adapts every linear layer but the head. A named target that matches no
    module is an error listing the linear layers the model has. Loading ``adapter_name_or_path``
    continues training that adapter instead of starting a new one.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    lora = args.methods["lora"]
    available = linear_module_names(model)
    targets = _split(lora.lora_target)
    if targets == ["all"]:
        targets = available
    else:
        missing = [t for t in targets if t not in available]
        if missing:
            raise ConfigError(
                f"lora_target: {', '.join(missing)} matches no linear layer; this model has: {', '.join(available)}"
            )
    if args.model.adapter_name_or_path:
        return PeftModel.from_pretrained(model, args.model.adapter_name_or_path, is_trainable=True)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.lora_rank,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=targets,
        modules_to_save=_split(lora.additional_target) or None,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
    )
    return get_peft_model(model, config)
