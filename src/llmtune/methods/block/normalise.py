"""LLaMA-Factory's spelling of BAdam, and the set-ups BAdam cannot run, handled before anything loads.

LLaMA-Factory writes ``finetuning_type: full`` with ``use_badam: true`` and ``badam_mode: layer``
(llmtune's ``finetuning_type: block``) or ``badam_mode: ratio`` (``finetuning_type: sparse``). Such a
config means in llmtune what it means there: LLaMA-Factory's own defaults for the block order
(``badam_switch_mode: ascending``) and interval (``badam_switch_interval: 50``) are filled in when the
config does not set them (llmtune's defaults, random and 100, follow the BAdam authors' advice).

This is the registry's ``normalise`` hook, the one method hook that runs on the raw config before
any data or weights load. What ``block`` and ``sparse`` cannot run (several processes, DeepSpeed, FSDP,
fp16 loss scaling with ``sparse``) is refused by the compatibility table, :mod:`llmtune.compat`.
"""

from __future__ import annotations

from typing import Any

from llmtune.compat import check_config
from llmtune.errors import ConfigError, one_of
from llmtune.hparams.parser import coerce

BADAM_TYPES = ("block", "sparse")
LLAMAFACTORY_MODES = {"layer": "block", "ratio": "sparse"}
LLAMAFACTORY_LAYER_DEFAULTS = {"badam_switch_mode": "ascending", "badam_switch_interval": 50}


def normalise_badam(config: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``use_badam`` / ``badam_mode`` into ``finetuning_type: block|sparse``; refuse what cannot run."""
    config = dict(config)
    use_badam = config.pop("use_badam", None)
    mode = config.pop("badam_mode", None)
    finetuning_type = config.get("finetuning_type")
    if mode is not None and mode not in LLAMAFACTORY_MODES:
        raise one_of("badam_mode", mode, LLAMAFACTORY_MODES)
    if _is_true("use_badam", use_badam):
        if finetuning_type not in (None, "full", *BADAM_TYPES):
            raise ConfigError(
                f"use_badam: true trains the full model block by block and cannot be combined with finetuning_type: "
                f"{finetuning_type!r}; use finetuning_type: full (as in LLaMA-Factory), block or sparse"
            )
        target = LLAMAFACTORY_MODES[mode or "layer"]
        if finetuning_type in BADAM_TYPES and finetuning_type != target:
            raise ConfigError(f"badam_mode: {mode or 'layer'!r} contradicts finetuning_type: {finetuning_type!r}")
        config["finetuning_type"] = target
        if target == "block":
            for key, value in LLAMAFACTORY_LAYER_DEFAULTS.items():
                config.setdefault(key, value)
    elif mode is not None and finetuning_type in BADAM_TYPES and LLAMAFACTORY_MODES[mode] != finetuning_type:
        raise ConfigError(f"badam_mode: {mode!r} contradicts finetuning_type: {finetuning_type!r}")
    # Without use_badam LLaMA-Factory ignores badam_mode, and so does llmtune. What block/sparse cannot run
    # (several processes, DeepSpeed, FSDP, sparse in fp16) is refused by the compatibility table (llmtune.compat).
    return config


def refuse_unsupported(finetuning_type: str, config: dict[str, Any], world_size: int | None = None) -> None:
    """Raise the compatibility table's one-line refusal for a set-up ``block``/``sparse`` cannot train correctly.

    The parser checks every config against the table; trainers built by hand call this with their arguments.
    """

    check_config({**config, "finetuning_type": finetuning_type}, world_size=world_size)


def _is_true(key: str, value: Any) -> bool:
    if value is None:
        return False

    return bool(coerce(key, value, bool))
