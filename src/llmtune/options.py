"""Every config key of a run with its default and help text, from the dataclasses: for ``--help``, the docs
and the web UI.

``python -m llmtune.options > docs/options.md`` regenerates the reference page; a test keeps
the committed page equal to what the dataclasses say.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Iterator
from typing import Any, NamedTuple

from llmtune.arguments import argument_classes
from llmtune.hparams.parser import _init_fields
from llmtune.methods import METHODS

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


def options_markdown() -> str:
    """The reference page ``docs/options.md``."""
    lines = [
        "# Config keys",
        "",
        "Generated from llmtune's argument dataclasses by `python -m llmtune.options > docs/options.md`.",
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
