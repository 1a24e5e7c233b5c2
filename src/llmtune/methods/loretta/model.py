"""Prepare a model for ``finetuning_type: loretta``: wrap it with LoRETTA adapters (a ``PeftModel``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from llmtune.errors import ConfigError
from llmtune.methods.lora.model import linear_module_names
from llmtune.methods.loretta.tuner import LorettaConfig, LorettaLayer
from llmtune.methods.loretta.tuner.config import DEFAULT_TARGETS

NORM_CLASS_SUFFIXES = ("Norm", "RMSNorm", "LayerNorm")
DEFAULT_RANK = 8  # LoRETTA's (the paper's Llama-2-7B runs); adazeta passes its own

# {model type: (layers adapted on their output, layers adapted on their input)}
Placement = Mapping[str, tuple[Sequence[str], Sequence[str]]]


def _split(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def resolve_targets(model: Any, options: Any, placement: Placement | None = None) -> tuple[list[str], list[str]]:
    """``(targets, input_targets)``: the linear layers adapted on their output (or in parallel) and on their input.

    ``loretta_target: auto`` is the paper's placement for the model's type: ``placement`` (``{model
    type: (outputs, inputs)}``) for adapters when given, as ``adazeta`` gives it, else LoRETTA's
    (:data:`~llmtune.methods.loretta.tuner.config.DEFAULT_TARGETS`); ``loretta_input_target``, when
    set, replaces the placement's inputs. ``all`` is every linear layer but the head; a name
    matching no linear layer is an error listing those the model has.
    """

    available = linear_module_names(model)
    inputs = _split(options.loretta_input_target)
    targets = _split(options.loretta_target)
    if targets == ["auto"]:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if placement is not None and options.loretta_mode == "adapter":
            defaults, default_inputs = placement.get(model_type, (None, None))
            inputs = inputs or list(default_inputs or ())
        else:
            defaults = DEFAULT_TARGETS[options.loretta_mode].get(model_type)
        if defaults is None:
            raise ConfigError(
                f"loretta_target: auto has no default for model_type {model_type!r}; name the layers "
                f"(this model has: {', '.join(available)})"
            )
        targets = [name for name in defaults if name not in inputs]
    elif targets == ["all"]:
        targets = [name for name in available if name not in inputs]
    for option, names in (("loretta_target", targets), ("loretta_input_target", inputs)):
        missing = [name for name in names if name not in available]
        if missing:
            raise ConfigError(
                f"{option}: {', '.join(missing)} matches no linear layer; this model has: {', '.join(available)}"
            )
    both = sorted(set(targets) & set(inputs))
    if both:
        raise ConfigError(f"loretta_input_target: {', '.join(both)} is also in loretta_target; name each layer once")
    if not targets and not inputs:
        raise ConfigError("loretta_target: no layer to adapt; name at least one linear layer")
    return targets, inputs


def norm_module_names(model: torch.nn.Module) -> list[str]:
    """Short names of the normalisation layers (``input_layernorm``, ``post_attention_layernorm``, ``norm``...)."""
    return sorted(
        {
            name.split(".")[-1]
            for name, module in model.named_modules()
            if type(module).__name__.endswith(NORM_CLASS_SUFFIXES)
        }
    )


def build_loretta_model(
    model: Any,
    options: Any,
    *,
    train_norms: bool,
    adapter_path: str | None = None,
    default_rank: int = DEFAULT_RANK,
    placement: Placement | None = None,
) -> Any:
    """``model`` wrapped in a ``PeftModel`` with LoRETTA adapters shaped by ``options`` (:class:`LorettaArguments`).

    ``default_rank`` is the TT rank when ``loretta_rank`` is unset and ``placement`` where
    ``loretta_target: auto`` puts adapters (see :func:`resolve_targets`). With ``adapter_path``,
    that saved adapter is loaded (trainable) instead of a new one.
    """
    from peft import PeftModel, get_peft_model

    if adapter_path:
        return PeftModel.from_pretrained(model, adapter_path, is_trainable=True)
    targets, inputs = resolve_targets(model, options, placement)
    config = LorettaConfig(
        task_type="CAUSAL_LM",
        mode=options.loretta_mode,
        tensor_rank=options.loretta_rank or default_rank,
        bottleneck=options.loretta_bottleneck,
        scaling=options.scaling,
        activation=options.loretta_activation,
        init=options.loretta_init,
        target_modules=targets,
        input_target_modules=inputs or None,
        modules_to_save=norm_module_names(model) if train_norms else None,
    )
    return get_peft_model(model, config)


def prepare_loretta(model: Any, args: Any) -> Any:
    """Return ``model`` with LoRETTA adapters (and, with ``loretta_train_norms``, trainable norms), trained by
    backprop with the run's optimizer; ``adapter_name_or_path`` continues a saved adapter."""
    options = args.methods["loretta"]
    return build_loretta_model(
        model, options, train_norms=options.loretta_train_norms, adapter_path=args.model.adapter_name_or_path
    )


def adapter_parameter_count(model: torch.nn.Module) -> int:
    """Trainable numbers in the tensor-train adapters (not the norms) of ``model``."""

    total = 0
    for module in model.modules():
        if isinstance(module, LorettaLayer):
            for container in (module.loretta_down, module.loretta_up):
                total += sum(p.numel() for p in container.parameters() if p.requires_grad)
    return total


def lora_parameter_count(model: torch.nn.Module, rank: int) -> tuple[int, list[str]]:
    """Numbers LoRA of rank ``rank`` would train on the layers LoRETTA adapted, and their short names."""

    total, names = 0, set()
    for name, module in model.named_modules():
        if isinstance(module, LorettaLayer):
            total += rank * (module.in_features + module.out_features)
            names.add(name.split(".")[-1])
    return total, sorted(names)


def report_loretta(model: Any, args: Any) -> str:
    """The log line after the trainable-parameter count: adapters, norms, and the ratio to LoRA there."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapters = adapter_parameter_count(model)
    rank = args.methods["lora"].lora_rank
    lora, names = lora_parameter_count(model, rank)
    ratio = trainable / lora if lora else float("nan")
    return (
        f"tensor-train adapters: {adapters:,} parameters + trainable norms {trainable - adapters:,} = {trainable:,}, "
        f"{ratio:.3f}x LoRA r={rank} on the same layers ({', '.join(names)}: {lora:,})"
    )
