"""``llmtune export``: merge a LoRA (or LoRETTA reparam) adapter into its base model and write a standard Hugging Face model folder.

    llmtune export --model_name_or_path BASE --adapter_name_or_path ADAPTER --export_dir DIR [--export_dtype bf16]

An adapter trained on a quantised base (QLoRA) learned to correct the *quantised* weights, so the
base is loaded quantised the same way (``quantization_*`` from the flags, or from the
``training_args.yaml`` next to the adapter, with its compute dtype from its bf16/fp16), de-quantised
exactly (``dequantize()``: the weights the quantised layers computed with), and merged in fp32: the exported model computes what base and
adapter computed during training, up to the rounding of ``export_dtype``. Everything is checked
before any weights load; a non-empty ``export_dir`` is refused.
"""

from __future__ import annotations

import json
import logging
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from llmtune.errors import ConfigError, DataFileNotFoundError, one_of, suggest
from llmtune.hparams.model_args import ModelArguments
from llmtune.hparams.parser import RUN_CONFIG, coerce, read_file_and_flags

logger = logging.getLogger("llmtune")

EXPORT_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
# Adapter types whose update is a weight delta (LoRETTA only in reparam mode: a tensor-train ΔW).
MERGEABLE = ("LORA", "LORETTA")
QUANTIZATION_KEYS = ("quantization_bit", "quantization_method", "quantization_type", "double_quantization")


@dataclass
class ExportArguments:
    """Where the merged model goes and in which dtype."""

    export_dir: str | None = field(default=None, metadata={"help": "Empty or new folder to write the model into."})
    export_dtype: str = field(default="bf16", metadata={"help": "Dtype of the written weights: fp16, bf16 or fp32."})


def export_help() -> str:
    """Plain text for ``llmtune export --help``: the usage and every key with its default."""
    lines = [(__doc__ or "").strip().splitlines()[2].strip(), ""]
    for cls in (ModelArguments, ExportArguments):
        for f in fields(cls):
            if f.init:
                lines.append(f"  --{f.name} (default: {f.default!r})  {f.metadata.get('help', '')}")
    return "\n".join(["usage: " + lines[0], *lines[1:]])


def load_export_arguments(tokens: list[str]) -> tuple[ModelArguments, ExportArguments]:
    """``llmtune export`` argv -> (model, export) arguments, validated; loads nothing."""
    from llmtune.model import check_model_args
    from llmtune.model.dtypes import compute_dtype_name
    from llmtune.model.quantization import check_quantization

    config = read_file_and_flags(tokens)
    classes = (ModelArguments, ExportArguments)
    owners = {f.name: cls for cls in classes for f in fields(cls) if f.init}
    unknown = [key for key in config if key not in owners]
    if unknown:
        raise ConfigError(
            f"unknown export key {unknown[0]!r}{suggest(unknown[0], owners)}; allowed: {', '.join(owners)}"
        )
    adapter = config.get("adapter_name_or_path")
    run = _run_config(Path(str(adapter))) if adapter else {}
    for key in QUANTIZATION_KEYS:  # an adapter from `llmtune train` says how its base was quantised
        if key in run:
            config.setdefault(key, run[key])
    built = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        built.append(cls(**{k: coerce(k, v, hints[k]) for k, v in config.items() if owners[k] is cls}))
    model_args, export = built
    _check(model_args, export)
    check_model_args(model_args)
    check_quantization(_AsRun(model_args), "lora")
    # Quantise as the training run did (its compute dtype), so that de-quantising gives the very weights
    # the adapter was trained against.
    model_args.compute_dtype = compute_dtype_name(bool(run.get("bf16")), bool(run.get("fp16")))
    return model_args, export


@dataclass
class _AsRun:
    """The parts of RunArguments :func:`check_quantization` reads, for an export."""

    model: ModelArguments
    training: Any = None
    methods: dict = field(default_factory=dict)


def _run_config(adapter: Path) -> dict[str, Any]:
    """The config of the training run that wrote ``adapter`` (its ``training_args.yaml``), or ``{}``."""
    config = adapter / RUN_CONFIG
    if not config.is_file():
        return {}
    saved = yaml.safe_load(config.read_text(encoding="utf-8"))
    return saved if isinstance(saved, dict) else {}


def _check(model_args: ModelArguments, export: ExportArguments) -> None:
    if not model_args.model_name_or_path:
        raise ConfigError("model_name_or_path: required (the base model the adapter was trained on)")
    if not model_args.adapter_name_or_path:
        raise ConfigError("adapter_name_or_path: required (the LoRA or LoRETTA reparam adapter folder to merge)")
    if "," in model_args.adapter_name_or_path:
        raise ConfigError("adapter_name_or_path: export merges one adapter; give one folder")
    adapter = Path(model_args.adapter_name_or_path)
    adapter_config = adapter / "adapter_config.json"
    if not adapter_config.is_file():
        raise DataFileNotFoundError(
            f"adapter_name_or_path: '{adapter}' has no adapter_config.json, so it is no adapter"
        )
    saved = json.loads(adapter_config.read_text(encoding="utf-8"))
    peft_type = saved.get("peft_type")
    if peft_type == "LORETTA" and saved.get("mode") != "reparam":
        raise ConfigError(
            f"adapter_name_or_path: '{adapter}' holds LoRETTA bottleneck adapters (loretta_mode: adapter, also "
            "AdaZeta's), which have a non-linearity and cannot be merged into the weights; load them with "
            "adapter_name_or_path at inference, or train with loretta_mode: reparam to export"
        )
    if peft_type not in MERGEABLE:
        raise ConfigError(
            f"adapter_name_or_path: '{adapter}' is a {peft_type} adapter; export merges LoRA and LoRETTA reparam "
            "adapters (load other adapters with adapter_name_or_path at inference instead)"
        )
    if not export.export_dir:
        raise ConfigError("export_dir: required (an empty or new folder for the merged model)")
    out = Path(export.export_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"export_dir: '{out}' is not empty; choose a new folder (export never overwrites)")
    if export.export_dtype not in EXPORT_DTYPES:
        raise one_of("export_dtype", export.export_dtype, EXPORT_DTYPES)


def export_model(model_args: ModelArguments, export: ExportArguments) -> Path:
    """Merge the adapter into the (de-quantised) base, cast to ``export_dtype`` and save; return the folder."""
    import torch
    from peft import PeftModel

    from llmtune.model import load_model, load_tokenizer

    # On the CPU: the fp32 model needs more memory than the GPU that trained it may have (32 GB for 8B).
    base = load_model(model_args, for_training=False, device_map={"": "cpu"})
    if model_args.quantization_bit is not None:
        base.dequantize()  # bitsandbytes' own inverse: the very weights the quantised layers computed with
        base.config.__dict__.pop("quantization_config", None)
        base = base.float()  # merge in full precision; round once, when casting to export_dtype
    dtype = getattr(torch, EXPORT_DTYPES[export.export_dtype])
    merged = PeftModel.from_pretrained(base, model_args.adapter_name_or_path).merge_and_unload()
    merged = merged.to(dtype)
    merged.config.use_cache = True
    out = Path(export.export_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    adapter = Path(model_args.adapter_name_or_path)
    # `llmtune train` saves the tokenizer (with the chat template it trained with) beside the adapter.
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").is_file() else None
    if tokenizer_source is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(out)
    else:
        load_tokenizer(model_args).save_pretrained(out)
    logger.info(
        "merged %s into %s: wrote %s (%s)",
        model_args.adapter_name_or_path,
        model_args.model_name_or_path,
        out,
        export.export_dtype,
    )
    return out
