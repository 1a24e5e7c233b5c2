"""The one parser: YAML file + command-line overrides -> values of the argument dataclasses' types.

Option names come from the dataclasses alone (model, data, finetuning, each method's own options,
and TRL's ``SFTConfig``); the CLI, the docs and the web UI derive from the same fields. This module
reads, coerces and checks each value on its own and imports nothing of llmtune above ``hparams``: the
checks that need the methods, the models or the machine run in :mod:`llmtune.arguments`, the setup
step above it. Nothing here loads a model.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from llmtune.errors import ConfigError, DataFileNotFoundError, LlmtuneError, one_of, suggest
from llmtune.hparams.data_args import DataArguments
from llmtune.hparams.finetuning_args import FOREIGN_STAGES, LM_HEAD_LOSSES, STAGES, FinetuningArguments
from llmtune.hparams.model_args import ModelArguments
from llmtune.hparams.secrets import is_secret  # noqa: F401  (re-exported: eval and kernel configs use it)
from llmtune.hparams.truth import FALSE_WORDS, TRUE_WORDS

CHECKPOINTING_KEYS = ("gradient_checkpointing", "activation_checkpointing")  # transformers' name and its alias

# Keys whose values must never be written to disk or logs (hub_token, judge_api_key, ...).


@dataclass
class RunArguments:
    """Everything one ``llmtune train`` run was asked to do, validated."""

    model: ModelArguments
    data: DataArguments
    finetuning: FinetuningArguments
    training: Any  # llmtune.hparams.training_args.TrainingArguments (imported lazily: it pulls in TRL)
    methods: dict[str, Any] = field(default_factory=dict)  # method name -> its options dataclass
    given: dict[str, Any] = field(default_factory=dict)  # the keys the user set, after coercion

    def public_config(self) -> dict[str, Any]:
        """The keys the user set, with secrets removed: safe to save next to the outputs."""
        return {k: v for k, v in self.given.items() if not is_secret(k)}


# ---------------------------------------------------------------------------------------------
# Reading what the user wrote


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader: plain data only, no ``!!python/object`` tags."""

    def construct_object(self, node, deep=False):
        # PyYAML's constructors let Python's own errors out for values such as `2024-13-45`,
        # `!!bool maybe` or an integer of over 4300 digits: report them with the value's line.
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            kind = node.tag.rpartition(":")[2]
            value = f" {node.value[:40]!r}" if isinstance(node.value, str) else ""
            raise yaml.MarkedYAMLError(problem=f"cannot read{value} as {kind}", problem_mark=node.start_mark) from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or JSON) config file into a dict, refusing anything but plain data."""
    path = Path(path)
    try:
        found = path.is_file()
    except OSError:  # a name longer than the file system allows
        found = False
    if not found:
        raise DataFileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        content = yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - _SafeLoader is a SafeLoader
    except yaml.constructor.ConstructorError as err:
        line = err.problem_mark.line + 1 if err.problem_mark else "?"
        raise ConfigError(
            f"{path}:{line}: {err.problem}; llmtune reads plain YAML only (no Python object tags)"
        ) from None
    except RecursionError:  # PyYAML's composer recurses once per level of nesting
        raise ConfigError(f"{path}: malformed YAML: lists or mappings nested too deeply") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "?"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of key: value, got {type(content).__name__}")
    bad = [k for k in content if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: config keys must be names, got {bad[0]!r}")
    return content


def read_file_and_flags(tokens: list[str]) -> dict[str, Any]:
    """``[CONFIG.yaml] [--key value ...]`` -> one config: the file's keys, then the flags over them."""
    config_path, overrides = parse_cli_overrides(tokens)
    config = read_config_file(config_path) if config_path else {}
    config.update(overrides)  # flags override the file
    return config


def parse_cli_overrides(tokens: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Split ``[CONFIG.yaml] [--key value | --key=value | --flag | key=value ...]``.

    Returns the config path (or None) and the overrides as strings (``True`` for a bare flag).
    """
    config_path = None
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--"):
            key, eq, value = token[2:].partition("=")
            if not eq:
                if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                    value, i = tokens[i + 1], i + 1
                else:
                    value = True
            if not key:
                raise ConfigError(f"argument {token!r}: expected --key value")
            overrides[key.replace("-", "_")] = value
        elif "=" in token:  # LLaMA-Factory's `key=value` form
            key, _, value = token.partition("=")
            overrides[key] = value
        elif config_path is None:
            config_path = token
        else:
            raise ConfigError(f"argument {token!r}: only one config file may be given (already have {config_path!r})")
        i += 1
    return config_path, overrides


# ---------------------------------------------------------------------------------------------
# The dataclasses and their fields


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]


# ---------------------------------------------------------------------------------------------
# Turning strings (from the CLI, or YAML's "1e-4") into the field's type

_NULL = {"null", "~", ""}
RUN_CONFIG = "training_args.yaml"  # the keys a run was given, saved in its output_dir (read by eval, export, the UI)


def _members(hint: Any) -> list[Any]:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return [m for arg in typing.get_args(hint) for m in _members(arg)]
    return [hint]


def _accepts(members: list[Any], kind: type) -> bool:
    """Whether the union ``members`` admits values of ``kind`` (bool is not taken for int)."""
    for member in members:
        base = typing.get_origin(member) or member
        if base is kind:
            return True
        if isinstance(base, type) and kind not in (bool, int) and issubclass(base, kind):
            return True
    return False


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` to the type ``hint`` of field ``key``, or raise a one-line ConfigError."""
    members = _members(hint)
    nullable = type(None) in members
    enum_types = [m for m in members if isinstance(m, type) and issubclass(m, Enum)]
    wants_str = _accepts(members, str) or bool(enum_types) or hint is Any
    if isinstance(value, str):
        low = value.strip().lower()
        if nullable and (low in _NULL or (low == "none" and not wants_str)):
            return None
        if _accepts(members, bool) and low in (*TRUE_WORDS, *FALSE_WORDS):
            return low in TRUE_WORDS
        if _accepts(members, int):
            try:
                return int(value)
            except ValueError:
                pass
        if _accepts(members, float):
            try:
                return float(value)
            except ValueError:
                pass
        if (_accepts(members, dict) or _accepts(members, list)) and value.strip()[:1] in "[{":
            try:
                return coerce(key, yaml.safe_load(value), hint)
            except yaml.YAMLError:
                raise ConfigError(f"{key}: {value!r} is not valid YAML/JSON") from None
        if _accepts(members, list) and not wants_str:
            return [item.strip() for item in value.split(",") if item.strip()]
        if wants_str:
            return value
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(members)}")
    if value is None:
        if nullable or hint is Any:
            return None
        raise ConfigError(f"{key}: a value is required ({_type_name(members)}), got null")
    if isinstance(value, bool):
        if _accepts(members, bool) or hint is Any:
            return value
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(members)}")
    if isinstance(value, int):
        if _accepts(members, int) or hint is Any:
            return value
        if _accepts(members, float):
            try:
                return float(value)
            except OverflowError:
                raise ConfigError(f"{key}: the integer given is too large for a float (over 1.8e308)") from None
        if wants_str:
            return str(value)
    elif isinstance(value, float):
        if _accepts(members, float) or hint is Any:
            return value
        if _accepts(members, int) and value.is_integer():
            return int(value)
        if wants_str:
            return str(value)
    elif isinstance(value, dict | list):
        kind = dict if isinstance(value, dict) else list
        if _accepts(members, kind) or hint is Any:
            return value
    raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(members)}")


def _type_name(members: list[Any]) -> str:
    names = []
    for member in members:
        if member is type(None):
            continue
        base = typing.get_origin(member) or member
        names.append(getattr(base, "__name__", str(base)))
    return " or ".join(dict.fromkeys(names)) or "value"


# ---------------------------------------------------------------------------------------------
# Building and validating the dataclasses


def coerce_config(config: dict[str, Any], classes: list[type]) -> tuple[dict[str, Any], dict[str, list[type]]]:
    """The keys of ``config`` coerced to their fields' types, and which of ``classes`` own each key.

    An unknown key is one line naming it (and the closest known key); a bad value one line naming the
    key and the type it needs.
    """
    hints = {cls: typing.get_type_hints(cls) for cls in classes}
    owners: dict[str, list[type]] = {}
    for cls in classes:
        for f in _init_fields(cls):
            owners.setdefault(f.name, []).append(cls)
    unknown = [k for k in config if k not in owners]
    if unknown:
        key = unknown[0]
        more = f" (and {len(unknown) - 1} more unknown keys)" if len(unknown) > 1 else ""
        raise ConfigError(f"unknown config key {key!r}{suggest(key, owners)}{more}; see `llmtune train --help`")
    return {key: coerce(key, value, hints[owners[key][0]][key]) for key, value in config.items()}, owners


def construct(cls: type, kwargs: dict[str, Any]) -> Any:
    """``cls(**kwargs)``, with a library's own validation error (TrainingArguments') as one line."""
    try:
        return cls(**kwargs)
    except LlmtuneError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, OSError, ImportError) as err:
        # A library's own validation (e.g. TrainingArguments.__post_init__): keep its first line.
        # OSError and ImportError: a file it opens (deepspeed, accelerator_config) or a package it needs is missing.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"invalid training arguments: {first}") from None


def _positive(name: str, value: float | int | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}: {value} must be {bound}")


def check_stage(stage: str) -> None:
    if stage not in STAGES:
        if stage in FOREIGN_STAGES:
            raise ConfigError(f"stage: {stage!r} is a LLaMA-Factory stage llmtune does not support; use: sft")
        raise one_of("stage", stage, STAGES)


def check_values(args: RunArguments, *, for_training: bool = True) -> None:
    """The checks of values and of pairs of them that need nothing but the dataclasses: the stage, the
    ranges, the options that exclude each other, the keys a training run requires. The checks that need
    the methods, the models or the data run in :func:`llmtune.arguments.validate`."""
    ft, data, train = args.finetuning, args.data, args.training
    check_stage(ft.stage)
    _positive("learning_rate", train.learning_rate)
    _positive("per_device_train_batch_size", train.per_device_train_batch_size)
    _positive("gradient_accumulation_steps", train.gradient_accumulation_steps)
    _positive("cutoff_len", data.cutoff_len)
    _positive("val_size", data.val_size, allow_zero=True)
    _positive("max_samples", data.max_samples)
    _positive("logging_steps", train.logging_steps)
    _positive("save_steps", train.save_steps)
    _positive("weight_decay", train.weight_decay, allow_zero=True)
    if ft.lm_head_loss not in LM_HEAD_LOSSES:
        raise one_of("lm_head_loss", ft.lm_head_loss, LM_HEAD_LOSSES)
    if data.k_shot and not ft.train_as_classification:
        raise ConfigError(
            "k_shot: draws k examples per class of a choice task for train_as_classification: true; "
            "set train_as_classification: true, or k_shot: 0 to train on every row as SFT"
        )
    if data.neat_packing and ft.train_as_classification:
        raise ConfigError(
            "packing: not available with train_as_classification (its batches are answer options, not rows); "
            "set packing: false"
        )
    if train.max_steps is not None and train.max_steps <= 0:
        _positive("num_train_epochs", train.num_train_epochs)
    if for_training:
        if not args.model.model_name_or_path:
            raise ConfigError("model_name_or_path: required (a hub id, a local folder, or llmtune/tiny-llama)")
        if not data.dataset:
            raise ConfigError("dataset: required (names from dataset_info.json, comma-separated)")
