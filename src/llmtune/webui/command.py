"""Form values -> the exact ``llmtune train`` / ``llmtune eval`` argv and YAML, safely.

Every value travels as one ``--key=value`` token: the parser splits at the first ``=``, so a value
that starts with ``--`` or holds spaces stays one literal value and cannot add an argument. Line
breaks and other control characters are refused (they have no place in a config value and would
make the YAML preview differ from the command).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from llmtune.arguments import parse_args
from llmtune.errors import ConfigError
from llmtune.eval.config import parse_eval_args
from llmtune.webui.fields import ALWAYS, applies, eval_fields, field_map, train_fields

_CONTROL = {chr(c) for c in range(32)} | {"\x7f", "\x85", "\u2028", "\u2029"}
_KEY_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def check_value(key: str, value: str) -> str:
    """``value`` unchanged, or a one-line ConfigError when it holds a line break or control character."""
    bad = sorted({c for c in value if c in _CONTROL})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise ConfigError(f"{key}: line breaks and control characters ({shown}) are not allowed in a value")
    return value


def parse_extra(text: str) -> dict[str, Any]:
    """The "other keys" box: a YAML mapping of further config keys (``ddp_timeout: 180000``)."""
    if not text or not text.strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"other keys: not a YAML mapping ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError("other keys: write one `key: value` per line")
    for key in data:
        if not isinstance(key, str) or not key or set(key) - _KEY_CHARS:
            raise ConfigError(f"other keys: {key!r} is not a config key name (lower-case letters, digits, _)")
    return data


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def train_config(values: dict[str, Any], extra: str = "") -> dict[str, str]:
    """The keys a run states: those that differ from the default, the :data:`ALWAYS` ones, and the extra ones.

    Options of methods other than the chosen ``finetuning_type`` are left out. Values are strings
    (``true``/``false`` for switches), exactly what the command line carries.
    """
    fields = field_map()
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ConfigError(f"unknown form field {unknown[0]!r}")
    ft = str(values.get("finetuning_type") or "lora")
    config: dict[str, str] = {}
    for f in train_fields():
        if f.name not in values or not applies(f, ft):
            continue
        value = values[f.name]
        if f.kind == "bool":
            value = bool(value)
            if value != bool(f.default) or f.name in ALWAYS:
                config[f.name] = _text(value)
            continue
        text = check_value(f.name, _text(value).strip())
        if text and (text != f.default_text or f.name in ALWAYS):
            config[f.name] = text
    for key, value in parse_extra(extra).items():
        if key in config:
            raise ConfigError(f"other keys: {key!r} is already set by its own field; set it there")
        config[key] = check_value(key, _text(value))
    return config


def argv_for(command: str, config: dict[str, str], positional: list[str] | None = None) -> list[str]:
    """``["llmtune", command, "--key=value", ...]``: one token per key, never a shell string."""
    for key in config:
        if not key or set(key) - _KEY_CHARS:
            raise ConfigError(f"{key!r} is not a config key name")
    return ["llmtune", command, *(positional or []), *(f"--{k}={check_value(k, v)}" for k, v in config.items())]


def launch_argv(argv: list[str]) -> list[str]:
    """The argv that runs ``argv`` (``llmtune ...``) with this Python, whatever PATH holds."""
    return [sys.executable, "-m", "llmtune", *argv[1:]]


def shown_command(argv: list[str]) -> str:
    """The command as a user would type it in a POSIX shell (quoted)."""
    import shlex

    return " ".join(shlex.quote(token) for token in argv)


def validated_yaml(config: dict[str, str]):
    """Parse ``config`` with llmtune's own parser (loads no model); returns (RunArguments, YAML text)."""

    check_paths(config)
    args = parse_args(dict(config))
    text = yaml.safe_dump(args.public_config(), sort_keys=False, allow_unicode=True)
    return args, text


# ---------------------------------------------------------------------------------------------
# Paths a user types


def _dangerous_output(path: Path) -> bool:
    """A folder that ``overwrite_output_dir`` must never empty: /, home, the working folder or above it."""
    resolved = path.expanduser().resolve()
    guarded = [Path("/"), Path.home().resolve(), Path.cwd().resolve()]
    return any(resolved == g or g.is_relative_to(resolved) for g in guarded)


def check_paths(config: dict[str, Any]) -> None:
    """One-line errors for paths that cannot be right, before anything runs."""
    out = str(config.get("output_dir") or "").strip()
    if not out:
        raise ConfigError("output_dir: required (the folder the run writes into, e.g. saves/my-run)")
    if _dangerous_output(Path(out)):
        raise ConfigError(
            f"output_dir: {out!r} is /, your home, the working folder or one above it; choose a subfolder"
        )
    if Path(out).expanduser().is_file():
        raise ConfigError(f"output_dir: {out!r} is a file, not a folder")
    adapter = str(config.get("adapter_name_or_path") or "").strip()
    if adapter and not Path(adapter).expanduser().is_dir():
        raise ConfigError(f"adapter_name_or_path: {adapter!r} is not a folder")
    ds = str(config.get("deepspeed") or "").strip()
    if ds and not ds.startswith("{") and not Path(ds).expanduser().is_file():
        raise ConfigError(f"deepspeed: {ds!r} is not a file (a DeepSpeed JSON config)")
    model = str(config.get("model_name_or_path") or "").strip()
    if model.startswith(("/", ".", "~")) and not Path(model).expanduser().is_dir():
        raise ConfigError(
            f"model_name_or_path: {model!r} is not a folder (give a folder, a hub id or llmtune/tiny-llama)"
        )


# ---------------------------------------------------------------------------------------------
# Evaluate tab


def eval_config(run_dir: str, tasks: list[str] | str, values: dict[str, Any]) -> dict[str, str]:
    """``llmtune eval`` keys: the run folder as ``model_name_or_path``, the tasks, and changed fields."""
    run_dir = check_value("run folder", str(run_dir or "").strip())
    if not run_dir:
        raise ConfigError("run folder: required (a folder written by llmtune train, holding training_args.yaml)")
    if not Path(run_dir).expanduser().is_dir():
        raise ConfigError(f"run folder: {run_dir!r} is not a folder")
    task = ",".join(tasks) if isinstance(tasks, list) else str(tasks or "")
    config = {"model_name_or_path": run_dir, "task": check_value("task", task.strip())}
    if not config["task"]:
        raise ConfigError("task: choose at least one task (sst2, demo_sst2, ..., or mt_bench)")
    for f in eval_fields():
        if f.name not in values or f.name == "task":
            continue
        value = values[f.name]
        if f.kind == "bool":
            if bool(value) != bool(f.default):
                config[f.name] = _text(bool(value))
            continue
        text = check_value(f.name, _text(value).strip())
        if text and text != f.default_text:
            config[f.name] = text
    return config


def validated_eval(config: dict[str, str]):
    """Parse ``config`` with ``llmtune eval``'s parser (loads no model); returns the EvalRun."""

    return parse_eval_args(dict(config))
