"""Quantised training with bitsandbytes: 4/8-bit base weights (QLoRA) and 8-bit optimizer states.

Three things live here, so that the rules are written once:

* :func:`check_quantization`: every combination of ``quantization_*`` keys, ``finetuning_type``,
  ``zo_target`` and ``optim`` that cannot work, refused in one line before anything loads;
* :func:`quantized_load_kwargs`: what ``from_pretrained`` needs to load the base quantised
  (a ``BitsAndBytesConfig``; the layers that are not quantised load in the compute dtype);
* the byte counts ``llmtune estimate`` uses: :func:`quantized_bytes_per_weight` and
  :func:`adam_8bit_state_bytes`.

A quantised weight is stored as integers and has no gradient, so only methods that train something
next to it can use it: LoRA (QLoRA, Dettmers et al. 2023), LoRETTA's tensor-train adapters, and the
zeroth-order methods when they perturb adapters (the base is only read by their forward passes).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from llmtune.errors import ConfigError, one_of

QUANTIZATION_BITS = (4, 8)
QUANTIZATION_TYPES = ("nf4", "fp4")
QUANTIZATION_METHODS = ("bnb", "bitsandbytes")
# Methods that train adapters beside a read-only base, so the base may be quantised.
ADAPTER_METHODS = ("lora", "loretta", "zo", "adazeta")
# Methods whose optimizer is built from ``optim`` (HF's name), so bitsandbytes' optimizers can run there.
INSTALL = "pip install bitsandbytes"


def bnb_optim_methods() -> tuple[str, ...]:
    """The finetuning types a bitsandbytes optimizer runs inside (the registry's ``bnb_optimizers``)."""
    from llmtune.methods import METHODS  # methods.registry -> model -> model.loader -> this module

    return tuple(name for name, method in METHODS.items() if method.bnb_optimizers)


# bitsandbytes' constants (bitsandbytes/optim/optimizer.py, nn/modules.py), used by the estimator.
BNB_4BIT_BLOCKSIZE = 64  # values per absmax constant of a 4-bit weight
BNB_NESTED_BLOCKSIZE = 256  # absmax constants per fp32 constant under double quantisation
BNB_OPTIM_BLOCKSIZE = 256  # values per absmax constant of an 8-bit optimizer state
BNB_OPTIM_MIN_8BIT_SIZE = 4096  # tensors smaller than this keep 32-bit optimizer state


def is_bnb_optim(optim: str) -> bool:
    """Whether HF's ``optim`` name is a bitsandbytes optimizer (``adamw_8bit``, ``paged_adamw_32bit``, ...)."""
    return "8bit" in optim or optim.startswith("paged_")


def optim_name(training_args: Any) -> str:
    """``optim`` as a plain string (TrainingArguments holds an ``OptimizerNames`` enum)."""
    optim = getattr(training_args, "optim", "adamw_torch")
    return str(getattr(optim, "value", optim))


def bitsandbytes_installed() -> bool:
    """Whether bitsandbytes can be imported (found without importing it: the import is slow)."""
    try:
        return importlib.util.find_spec("bitsandbytes") is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        return False


def check_quantization(args: Any, finetuning_type: str | None = None) -> None:
    """Refuse, in one line naming the key and the reason, a quantised run that cannot work.

    ``args`` are the parsed :class:`~llmtune.hparams.parser.RunArguments`; ``finetuning_type``
    overrides the configured one (``llmtune estimate`` compares the types). The rules:

    * ``quantization_method`` is bnb, ``quantization_bit`` 4 or 8, ``quantization_type`` nf4 or fp4;
    * bitsandbytes is installed (for quantised weights and for its optimizers);
    * quantised weights only under adapters: ``full``, ``block`` and ``sparse`` train the weights
      themselves and ``zo`` with ``zo_target: full`` perturbs them, which 4/8-bit integers cannot take;
    * bitsandbytes optimizers (``optim: adamw_8bit | paged_adamw_8bit | paged_adamw_32bit``) only
      where ``optim`` builds the optimizer: ``sparse``, ``zo`` and ``adazeta`` run their own.
    """
    model, training = args.model, args.training
    method = finetuning_type or args.finetuning.finetuning_type
    bits, optim = model.quantization_bit, optim_name(training)
    if bits is not None:
        if model.quantization_method not in QUANTIZATION_METHODS:
            raise one_of("quantization_method", model.quantization_method, QUANTIZATION_METHODS[:1])
        if bits not in QUANTIZATION_BITS:
            raise ConfigError(f"quantization_bit: {bits!r} is not one of 4, 8 (bitsandbytes' sizes)")
        if model.quantization_type not in QUANTIZATION_TYPES:
            raise one_of("quantization_type", model.quantization_type, QUANTIZATION_TYPES)
        if not bitsandbytes_installed():
            raise ConfigError(f"quantization_bit: {bits} needs bitsandbytes, which is not installed: {INSTALL}")
        from llmtune.compat import Cell, refuse  # compat -> methods -> model -> model.loader -> this module

        refuse(Cell(method, "none", "1", "fp32", f"{bits}bit"))  # which methods may be quantised: the table
    if is_bnb_optim(optim):
        if not bitsandbytes_installed():
            raise ConfigError(f"optim: {optim!r} is a bitsandbytes optimizer, which is not installed: {INSTALL}")
        allowed = bnb_optim_methods()
        if method not in allowed:
            raise ConfigError(
                f"optim: {optim!r} cannot be used with finetuning_type: {method}: it runs its own optimizer; "
                f"bitsandbytes optimizers work with {', '.join(allowed)}"
            )


def bnb_config(model_args: Any) -> Any:
    """The ``BitsAndBytesConfig`` for ``model_args`` (``quantization_bit`` set), in its compute dtype."""
    from transformers import BitsAndBytesConfig

    compute_dtype = getattr(torch, model_args.compute_dtype or "float32")
    if model_args.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model_args.quantization_type,
        bnb_4bit_use_double_quant=bool(model_args.double_quantization),
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=torch.uint8,
    )


def quantized_load_kwargs(model_args: Any) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments that load the base quantised; ``{}`` without ``quantization_bit``.

    The layers left unquantised (embeddings, norms, the head) load in the compute dtype, as in
    QLoRA; adapters added later are float32. bitsandbytes places the weights as they load, so the
    model goes straight to this process's device (its GPU under torchrun).
    """
    if model_args.quantization_bit is None:
        return {}
    device: str | int = int(os.environ.get("LOCAL_RANK", "0")) if torch.cuda.is_available() else "cpu"
    return {
        "quantization_config": bnb_config(model_args),
        "dtype": getattr(torch, model_args.compute_dtype or "float32"),
        "device_map": {"": device},
    }


# ---------------------------------------------------------------------------------------------
# Bytes, for `llmtune estimate`


def quantized_bytes_per_weight(bits: int, double_quantization: bool) -> float:
    """Bytes one quantised weight takes, its share of the quantisation constants included.

    4-bit: half a byte, plus an fp32 absmax per 64 weights (0.0625 B), or with double quantisation
    an 8-bit absmax per 64 weights and an fp32 constant per 256 of those (0.0159 B). 8-bit
    (LLM.int8): one byte; its per-row fp32 scale is counted by :func:`quantized_weight_bytes`.
    """
    if bits == 8:
        return 1.0
    if double_quantization:
        return 0.5 + 1 / BNB_4BIT_BLOCKSIZE + 4 / (BNB_4BIT_BLOCKSIZE * BNB_NESTED_BLOCKSIZE)
    return 0.5 + 4 / BNB_4BIT_BLOCKSIZE


def quantizable_weights(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights transformers' bitsandbytes integration quantises: every ``nn.Linear`` but the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]


def quantized_weight_bytes(
    model: torch.nn.Module,
    quantized: list[torch.nn.Parameter],
    bits: int,
    double_quantization: bool,
    compute_dtype: torch.dtype,
) -> int:
    """Bytes of ``model``'s weights when ``quantized`` (found before adapters were added) are stored in
    ``bits`` bits; frozen unquantised weights are in ``compute_dtype``, trainable ones as they are."""
    per_weight = quantized_bytes_per_weight(bits, double_quantization)
    compute_bytes = torch.empty(0, dtype=compute_dtype).element_size()
    quantized_ids = {id(p) for p in quantized}
    total, seen = 0.0, set()
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        if id(param) in quantized_ids:
            total += param.numel() * per_weight
            if bits == 8:
                total += 4 * param.shape[0]  # LLM.int8's fp32 scale per output row
        else:
            total += param.numel() * (param.element_size() if param.requires_grad else compute_bytes)
    return int(total)


def adam_8bit_state_bytes(numel: int) -> int:
    """Bytes of bitsandbytes' 8-bit Adam state for a tensor of ``numel`` values: two uint8 moments and an
    fp32 absmax per 256 values each (a tensor under 4096 values keeps two fp32 moments instead)."""
    if numel < BNB_OPTIM_MIN_8BIT_SIZE:
        return 8 * numel
    return 2 * numel + 2 * 4 * -(-numel // BNB_OPTIM_BLOCKSIZE)
