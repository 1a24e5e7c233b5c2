"""What ``adazeta`` cannot run, refused on the raw config before anything loads (the registry's ``normalise`` hook).

AdaZeta trains the LoRETTA adapters with the ``zo`` estimate: the ``zo_*`` options that choose
something else to train or another update rule do not apply, and the layer norms stay frozen.
"""

from __future__ import annotations

from typing import Any

from llmtune.errors import ConfigError
from llmtune.hparams.truth import is_true


def check_adazeta_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return ``config`` unchanged; raise a one-line ConfigError for an option adazeta cannot honour."""
    if config.get("finetuning_type") != "adazeta":
        return config
    for key, why in (
        ("zo_target", "adazeta always trains the tensor-train adapters (shape them with the loretta_* options)"),
        (
            "zo_num_queries",
            "adazeta's query count follows the adazeta_* schedule (for a fixed Q: adazeta_beta 0, adazeta_alpha Q)",
        ),
    ):
        if key in config:
            raise ConfigError(f"{key}: not used by finetuning_type: adazeta ({why}); remove it")
    if str(config.get("zo_optimizer", "sgd")).strip().lower() != "sgd":
        raise ConfigError(
            f"zo_optimizer: {config['zo_optimizer']!r} is not supported with finetuning_type: adazeta (its queries "
            "vary per step); use sgd"
        )
    if is_true(config.get("loretta_train_norms")):
        raise ConfigError(
            "loretta_train_norms: true is not supported with finetuning_type: adazeta (AdaZeta freezes "
            "the layer norms); remove it or use finetuning_type: loretta"
        )
    # deepspeed and fsdp: refused by the compatibility table (llmtune.compat), with the other engines' rules.
    return config
