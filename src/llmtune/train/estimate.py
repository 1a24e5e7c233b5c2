"""``llmtune estimate``: the GPU memory a config's training run needs, found without loading any weights.

The model is built on PyTorch's meta device from its ``config.json`` alone (shapes, no storage) and
readied by the method's own ``prepare`` function, so the estimate sees the parameters, dtypes and
trainable set the real run would have. Weights, gradients and optimizer state come from the method
trainer's ``memory_estimate`` classmethod (``(model, args) -> {"weights", "gradients", "optimizer", "total"}``;
BAdam counts its largest block, ``sparse`` its selected entries), or, for a method that uses the plain
``LlmtuneTrainer``, from :func:`llmtune.train.memory.estimate_training_bytes` (AdamW on every
trainable parameter); a method with a trainer of its own and no ``memory_estimate`` is not estimated. Activations are a first-order count, see :func:`activation_bytes`. The total
leaves out the CUDA context and allocator slack (typically 0.5-2 GiB).

With ``quantization_bit`` the linear layers (not the head) count 4 or 8 bits and their quantisation
constants, the other frozen weights the compute dtype; with a bitsandbytes 8-bit ``optim`` the Adam
moments count one byte each (about 4x less), see :mod:`llmtune.model.quantization`.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from llmtune.arguments import parse_args
from llmtune.errors import ConfigError, LlmtuneError, NotImplementedYetError
from llmtune.hparams.parser import RunArguments, coerce, read_file_and_flags
from llmtune.hparams.training_args import gradient_checkpointing_setting
from llmtune.methods import METHODS, get_method
from llmtune.model import count_parameters, resolve_model_path
from llmtune.model.dtypes import compute_dtype_name
from llmtune.model.loader import compute_dtype
from llmtune.model.quantization import (
    adam_8bit_state_bytes,
    check_quantization,
    optim_name,
    quantizable_weights,
    quantized_weight_bytes,
)
from llmtune.train.memory import GIB, estimate_training_bytes
from llmtune.train.trainer import LlmtuneTrainer


@dataclass
class MemoryEstimate:
    """Bytes one training process needs, by kind, for one model, method, batch and sequence length."""

    finetuning_type: str
    parameters: int
    trainable: int  # parameters trained at some point of the run
    trainable_at_once: int  # parameters holding gradients and optimizer state at the same time
    weight_dtype: str
    weights: int
    gradients: int
    optimizer: int
    activations: int
    batch_size: int
    sequence_length: int
    checkpointing: bool
    optimizer_note: str = ""
    forward_only: bool = False  # no backward pass (zo, adazeta): activations live one layer at a time

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def report(self) -> list[str]:
        """The estimate as aligned text lines (GiB)."""
        when = "with" if self.checkpointing else "without"
        kept = "forward passes only" if self.forward_only else f"{when} gradient checkpointing"
        rows = [
            ("weights", self.weights, self.weight_dtype),
            ("gradients", self.gradients, ""),
            ("optimizer state", self.optimizer, self.optimizer_note),
            (
                "activations",
                self.activations,
                f"batch {self.batch_size} x {self.sequence_length} tokens, {kept}",
            ),
        ]
        lines = [
            f"finetuning_type: {self.finetuning_type}: {_count(self.parameters)} parameters, {_count(self.trainable)} "
            f"trained, {_count(self.trainable_at_once)} at a time"
        ]
        lines += [f"  {name:<16} {format_bytes(value):>10}  {note}".rstrip() for name, value, note in rows]
        lines.append(f"  {'total':<16} {format_bytes(self.total):>10}  (plus the CUDA context and allocator slack)")
        return lines


DEFAULT_GPU_MEMORY_GB = 24.0  # one RTX 3090 / 4090, BAdam's target


def fits_line(total_bytes: int, gpu_memory_gb: float) -> str:
    """Whether ``total_bytes`` fits a GPU of ``gpu_memory_gb`` GB (10^9 bytes, as vendors count)."""
    need = total_bytes / 1e9
    verdict = "fits" if need <= gpu_memory_gb else "does NOT fit"
    return f"{verdict} a {gpu_memory_gb:g} GB GPU ({need:.1f} GB needed; --gpu_memory_gb to change)"


def load_estimate_arguments(tokens: list[str]) -> RunArguments:
    """``llmtune estimate`` argv -> arguments. bf16/fp16 are taken as asked, even on a machine without a GPU."""
    config = read_file_and_flags(tokens)
    precision = {key: config.pop(key) for key in ("bf16", "fp16") if key in config}
    gpu_memory_gb = config.pop("gpu_memory_gb", DEFAULT_GPU_MEMORY_GB)
    args = parse_args(config, for_training=False)
    args.gpu_memory_gb = coerce("gpu_memory_gb", gpu_memory_gb, float)  # this command's own option
    for key, value in precision.items():  # the run is estimated, not started: no device check
        setattr(args.training, key, bool(_coerce_bool(key, value)))
    if not args.model.model_name_or_path:
        raise ConfigError("model_name_or_path: required (a hub id, a local folder, or llmtune/tiny-llama)")
    return args


def load_model_config(args: RunArguments) -> Any:
    """The model's config (``config.json``) only: a few kB from the hub or the local folder."""
    from transformers import AutoConfig

    name = args.model.model_name_or_path
    try:
        return AutoConfig.from_pretrained(
            resolve_model_path(args.model),
            revision=args.model.model_revision,
            cache_dir=args.model.cache_dir,
            trust_remote_code=bool(args.model.trust_remote_code),
        )
    except LlmtuneError:
        raise
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model_name_or_path: cannot read the config of {name!r}: {first}") from None


def estimate_memory(
    args: RunArguments, model_config: Any | None = None, finetuning_type: str | None = None
) -> MemoryEstimate:
    """Estimate the memory of training with ``args`` (as ``finetuning_type`` when given).

    ``model_config`` (a transformers config) skips reading the model's ``config.json``.
    """
    from transformers import AutoModelForCausalLM

    method = get_method(finetuning_type or args.finetuning.finetuning_type)
    check_quantization(args, method.name)  # a type that cannot run quantised is not estimated
    bits = args.model.quantization_bit
    config = model_config if model_config is not None else load_model_config(args)
    with torch.device("meta"), _quiet():
        model = AutoModelForCausalLM.from_config(
            config,
            dtype=compute_dtype(args.training.bf16, args.training.fp16),
            trust_remote_code=bool(args.model.trust_remote_code),
        )
        quantized = quantizable_weights(model) if bits else []  # before adapters wrap the linears
        model = method.prepare_model(model, args)  # as llmtune train readies it: the same dtypes
    trainer = method.trainer_class()
    profile = getattr(trainer, "memory_estimate", None)
    if profile is None and trainer is not LlmtuneTrainer:
        # A trainer of its own may keep gradients and optimizer state quite unlike AdamW's.
        raise NotImplementedYetError(
            f"llmtune estimate: finetuning_type: {method.name} has no memory model yet "
            f"({trainer.__name__} defines no memory_estimate)"
        )
    states = profile(model, args) if profile is not None else estimate_training_bytes(model)
    trainable, total = count_parameters(model)
    half = bool(args.training.bf16 or args.training.fp16)
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    if bits:
        states["weights"], dtypes = _quantized_weights(args, model, quantized)
    optim, note = optim_name(args.training), states.get("optimizer_note", "")
    if "8bit" in optim:
        states["optimizer"] += _eight_bit_saving(model, states)
        note = f"{optim}: 8-bit Adam moments (bitsandbytes)"
    if method.name == args.finetuning.finetuning_type:
        checkpointing = bool(args.training.activation_checkpointing)
    else:  # another type of the comparison: its own default, unless the config set it
        checkpointing = gradient_checkpointing_setting(args.given, method.name, method.backward)[0]
    batch, length = args.training.per_device_train_batch_size, args.data.cutoff_len
    return MemoryEstimate(
        finetuning_type=method.name,
        parameters=total,
        trainable=trainable,
        trainable_at_once=states.get("trainable_at_once", trainable),
        weight_dtype=" and ".join(dtypes),
        weights=states["weights"],
        gradients=states["gradients"],
        optimizer=states["optimizer"],
        activations=activation_bytes(
            config,
            batch,
            length,
            checkpointing=checkpointing,
            value_bytes=2 if half else 4,
            forward_only=not method.backward,
        ),
        batch_size=batch,
        sequence_length=length,
        checkpointing=checkpointing,
        optimizer_note=note,
        forward_only=not method.backward,
    )


def _quantized_weights(args: RunArguments, model: torch.nn.Module, quantized: list) -> tuple[int, list[str]]:
    """Bytes of the weights with ``quantized`` in ``quantization_bit`` bits, and the dtypes to show."""
    bits = args.model.quantization_bit
    compute_dtype = compute_dtype_name(bool(args.training.bf16), bool(args.training.fp16))
    weights = quantized_weight_bytes(
        model, quantized, bits, bool(args.model.double_quantization), getattr(torch, compute_dtype)
    )
    trained = {str(p.dtype).replace("torch.", "") for p in model.parameters() if p.requires_grad}
    kind = args.model.quantization_type if bits == 4 else "int8"
    return weights, [f"{bits}-bit {kind}", *sorted({compute_dtype, *trained})]


def _eight_bit_saving(model: torch.nn.Module, states: dict[str, Any]) -> int:
    """Bytes (negative) that bitsandbytes' 8-bit Adam saves over the two fp32 moments the profiles count.

    The tensors are the profile's ``optimized_numels`` (BAdam: the largest block) or every trainable
    one; embeddings keep 32-bit state under the Trainer, which registers that override for them.
    """
    numels = states.get("optimized_numels")
    if numels is None:
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        params = {id(p): p for p in model.parameters() if p.requires_grad and id(p) not in embeddings}
        numels = [p.numel() for p in params.values()]
    return sum(adam_8bit_state_bytes(n) - 8 * n for n in numels)


def compare_methods(args: RunArguments, model_config: Any) -> dict[str, MemoryEstimate]:
    """The estimate of every implemented finetuning type for the same model, batch and options."""

    found = {}
    for name, method in METHODS.items():
        if not method.implemented:
            continue
        try:
            found[name] = estimate_memory(args, model_config, name)
        except Exception:  # noqa: BLE001 - a method that cannot prepare a meta model is left out of the comparison
            continue
    return found


def activation_bytes(
    config: Any,
    batch_size: int,
    sequence_length: int,
    *,
    checkpointing: bool,
    value_bytes: int,
    forward_only: bool = False,
) -> int:
    """Activations kept for the backward pass of a decoder-only transformer, to first order.

    Per token and layer a Llama-style layer keeps (with SDPA/flash attention, no attention matrix):
    the inputs and outputs of its two norms (4h), queries and attention output (2q), keys and values
    (2kv), and the gate, up, activated gate and product of its MLP (4i). With gradient checkpointing
    only each layer's input (h) is kept, plus one layer's worth while it is recomputed. The logits add
    ``vocab`` values in the compute dtype, an fp32 copy for the loss and its fp32 gradient. BAdam's
    lowest block keeps as much as full fine-tuning (the other blocks keep less: layers below the
    active one record nothing). ``forward_only`` (zeroth-order methods, no backward): one layer's
    values at a time and the logits with their fp32 copy for the loss, nothing kept for a backward.
    """
    hidden = config.hidden_size
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    per_layer = 4 * hidden + 2 * heads * head_dim + 2 * kv_heads * head_dim + 4 * intermediate
    tokens = batch_size * sequence_length
    if forward_only:
        return tokens * (per_layer * value_bytes + hidden * value_bytes + config.vocab_size * (value_bytes + 4))
    kept = layers * hidden + per_layer if checkpointing else layers * per_layer
    logits = config.vocab_size * (value_bytes + 4 + 4)
    return tokens * (kept * value_bytes + hidden * value_bytes + logits)


def format_bytes(n: int) -> str:
    """``n`` bytes in GiB, or MiB below one GiB."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _coerce_bool(key: str, value: Any) -> bool:

    return coerce(key, value, bool)


@contextmanager
def _quiet():
    # prepare() logs (and libraries warn about) what it does to a real model; for a meta model that is noise.
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def warn_if_over_gpu(args: RunArguments) -> str | None:
    """Before the weights load: warn when the estimate exceeds the memory of the visible GPU.

    Returns the warning (also logged), or None when it fits, there is no GPU, or the model's
    config cannot be read (the estimate is advice; it never stops a run).
    """
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        estimate = estimate_memory(args, load_model_config(args))
    except (LlmtuneError, NotImplementedError, ValueError, OSError):
        return None
    available = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    if estimate.total <= available:
        return None
    message = (
        f"memory estimate for finetuning_type {args.finetuning.finetuning_type}: {format_bytes(estimate.total)}, "
        f"more than this GPU's {format_bytes(available)}; `llmtune estimate` compares the finetuning types"
    )
    logging.getLogger("llmtune").warning(message)
    return message
