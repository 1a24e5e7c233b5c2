"""Every config key with its default and help text, from the dataclasses: for ``--help`` and the docs.

``python -m llmtune.hparams.docs > docs/options.md`` regenerates the reference page; a test keeps
the committed page equal to what the dataclasses say.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Iterator
from typing import Any, NamedTuple

from llmtune.hparams.parser import _init_fields, argument_classes

# TrainingArguments has ~140 fields; these are the ones an SFT user reaches for, listed first.
COMMON_TRAINING_KEYS = (
    "output_dir",
    "overwrite_output_dir",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "resume_from_checkpoint",
    "bf16",
    "fp16",
    "gradient_checkpointing",
    "disable_gradient_checkpointing",
    "seed",
    "report_to",
    "eval_strategy",
    "eval_steps",
    "per_device_eval_batch_size",
    "deepspeed",
)


class Option(NamedTuple):
    group: str
    name: str
    default: Any
    help: str


def iter_options(*, all_training_keys: bool = True) -> Iterator[Option]:
    """The config keys, grouped by the dataclass that defines them (a key in two groups appears once)."""
    seen: set[str] = set()
    for cls in argument_classes():
        fields = {f.name: f for f in _init_fields(cls)}
        names = list(fields)
        if cls is argument_classes()[-1]:  # TrainingArguments: the common keys first
            common = [n for n in COMMON_TRAINING_KEYS if n in fields]
            names = common + ([n for n in names if n not in common] if all_training_keys else [])
        for name in names:
            if name in seen:
                continue
            seen.add(name)
            f = fields[name]
            default = f.default if f.default is not dataclasses.MISSING else None
            text = " ".join(str(f.metadata.get("help", "")).split())
            if f.metadata.get("choices_from") == "methods":  # the method registry is the one list of them
                from llmtune.methods import METHODS

                text += " " + "; ".join(f"{n} ({m.summary})" for n, m in METHODS.items()) + "."
            yield Option(cls.__name__, name, default, text)


def options_text() -> str:
    """Plain text for ``llmtune train --help``."""
    lines = ["usage: llmtune train [CONFIG.yaml] [--key value ...]"]
    group = None
    for option in iter_options():
        if option.group != group:
            group = option.group
            lines += ["", f"{group}:"]
        lines.append(f"  --{option.name} (default: {option.default!r})")
        if option.help:
            lines += textwrap.wrap(option.help, 96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines) + "\n"


def owners_of(groups: tuple[tuple[type, tuple[str, ...] | None], ...]) -> dict[str, type]:
    """Config key -> the dataclass that defines it, for a command that takes some groups' keys
    (``None``: every key of that class; a tuple: only those)."""
    owners: dict[str, type] = {}
    for cls, keys in groups:
        for f in dataclasses.fields(cls):
            if f.init and (keys is None or f.name in keys):
                owners.setdefault(f.name, cls)
    return owners


def owners_text(header: list[str], owners: dict[str, type]) -> str:
    """``--help`` text of a command: ``header``, then every key of ``owners`` with its default and help."""
    lines = list(header)
    group = None
    for name, cls in owners.items():
        if cls.__name__ != group:
            group = cls.__name__
            lines += ["", f"{group}:"]
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        default = f.default if f.default is not dataclasses.MISSING else None
        lines.append(f"  --{name} (default: {default!r})")
        text = " ".join(str(f.metadata.get("help", "")).split())
        if text:
            lines += textwrap.wrap(text, 96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines) + "\n"


def options_markdown() -> str:
    """The reference page ``docs/options.md``."""
    lines = [
        "# Config keys",
        "",
        "Generated from llmtune's argument dataclasses by `python -m llmtune.hparams.docs > docs/options.md`.",
        "Every key works in a YAML file (`key: value`) and as a flag (`--key value`). TrainingArguments lists",
        "the common keys; every other field of `transformers.TrainingArguments` / `trl.SFTConfig` is accepted",
        "too (`llmtune train --help` lists them all).",
    ]
    group = None
    for option in iter_options(all_training_keys=False):
        if option.group != group:
            group = option.group
            lines += ["", f"## {group}", "", "| key | default | meaning |", "|---|---|---|"]
        text = option.help.replace("|", "\\|")
        lines.append(f"| `{option.name}` | `{option.default!r}` | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(options_markdown(), end="")
