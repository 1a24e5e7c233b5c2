"""``llmtune eval`` arguments: YAML file or run directory + flags -> validated dataclasses.

Built on the training parser's pieces (``parse_cli_overrides``, ``read_config_file``, ``coerce``
and the unknown-key error with a suggestion), over the eval classes: ``ModelArguments``,
the ``EVAL_DATA_KEYS`` of ``DataArguments`` and ``EvalArguments``.

A run directory written by ``llmtune train`` (it holds ``training_args.yaml`` and the model or the
adapter) can be given as the positional argument or as ``model_name_or_path``; its model, adapter,
template and data folder are taken from it, so nothing has to be restated.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune.errors import ConfigError, DataFileNotFoundError, one_of, suggest
from llmtune.hparams.data_args import DataArguments
from llmtune.hparams.eval_args import EVAL_DATA_KEYS, TASK_FORMATS, EvalArguments
from llmtune.hparams.model_args import ModelArguments
from llmtune.hparams.parser import RUN_CONFIG, coerce, parse_cli_overrides, read_config_file
from llmtune.hparams.secrets import is_secret

MT_BENCH = "mt_bench"
# Keys of a training run's config that mean the same when evaluating it.
RUN_KEYS = ("trust_remote_code", "use_fast_tokenizer", "flash_attn", "cache_dir", "model_revision", *EVAL_DATA_KEYS)
RUN_KEYS = tuple(k for k in RUN_KEYS if k not in ("max_samples", "skip_bad_rows"))
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class EvalRun:
    """One validated ``llmtune eval`` invocation.

    ``given`` holds the keys set (by the user, or taken from the run directory); ``run_dir`` and
    ``run_config`` describe the training run being evaluated, when there is one.
    """

    model: ModelArguments
    data: DataArguments
    eval: EvalArguments
    tasks: list[str]
    given: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    run_config: dict[str, Any] = field(default_factory=dict)

    @property
    def output_dir(self) -> Path:
        """Where this evaluation writes: ``output_dir``, else ``<run>/eval``, else ``saves/eval/<model>``."""
        if self.eval.output_dir:
            return Path(self.eval.output_dir)
        if self.run_dir is not None:
            return self.run_dir / "eval"
        return Path("saves") / "eval" / self.model_id

    @property
    def model_id(self) -> str:
        """The answering model's name in files and tables."""
        if self.eval.model_id:
            return self.eval.model_id
        source = self.run_dir or self.model.model_name_or_path or "model"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", str(source).rstrip("/").split("/")[-1]) or "model"

    def public_config(self) -> dict[str, Any]:
        """The keys set, minus secrets (``judge_api_key_env`` is a variable's name, so it stays)."""
        return {k: v for k, v in self.given.items() if not is_secret(k) or k.endswith("_env")}


def eval_owners() -> dict[str, type]:
    """Eval config key -> the dataclass that defines it."""
    from llmtune.hparams.docs import owners_of

    return owners_of(((ModelArguments, None), (DataArguments, EVAL_DATA_KEYS), (EvalArguments, None)))


def gather_compare(tokens: list[str]) -> list[str]:
    """Turn ``--compare a b c`` (several values) into ``--compare a,b,c`` for the one-value parser."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] in ("--compare", "--compare_runs"):
            j = i + 1
            while j < len(tokens) and not tokens[j].startswith("--"):
                j += 1
            out += ["--compare", ",".join(tokens[i + 1 : j])] if j > i + 1 else ["--compare"]
            i = j
        else:
            out.append(tokens[i])
            i += 1
    return out


def load_eval_arguments(tokens: list[str]) -> EvalRun:
    """``llmtune eval`` argv (after the subcommand) -> a validated :class:`EvalRun`."""
    path, overrides = parse_cli_overrides(gather_compare(tokens))
    config: dict[str, Any] = {}
    run_dir = None
    if path is not None:
        if Path(path).is_dir():
            run_dir = Path(path)
        elif not _exists(Path(path)):
            raise DataFileNotFoundError(
                f"no run or config at '{path}': give a training run's output_dir (with {RUN_CONFIG}) "
                "or an eval config file (.yaml)"
            )
        else:
            config = read_config_file(path)
    config.update(overrides)
    return parse_eval_args(config, run_dir=run_dir)


def parse_eval_args(config: dict[str, Any], run_dir: Path | None = None) -> EvalRun:
    """Validate ``{key: value}`` (plus an optional run directory) into an :class:`EvalRun`; loads nothing."""
    owners = eval_owners()
    unknown = [key for key in config if key not in owners]
    if unknown:
        key = unknown[0]
        more = f" (and {len(unknown) - 1} more unknown keys)" if len(unknown) > 1 else ""
        hint = suggest(key, owners)
        if not hint and "api_key" in key:
            hint = " (the key is read from the environment: set judge_api_key_env to the variable's name)"
        raise ConfigError(f"unknown eval key {key!r}{hint}{more}; see `llmtune eval --help`")
    hints = {cls: typing.get_type_hints(cls) for cls in set(owners.values())}
    given = {key: coerce(key, value, hints[owners[key]][key]) for key, value in config.items()}

    name = given.get("model_name_or_path")
    if run_dir is None and isinstance(name, str) and _is_run_dir(Path(name)):
        run_dir = Path(name)
    run_config: dict[str, Any] = {}
    if run_dir is not None:
        run_config, from_run = _from_run_dir(run_dir)
        given = {**from_run, **{k: v for k, v in given.items() if k != "model_name_or_path"}}

    built = {}
    for cls in (ModelArguments, DataArguments, EvalArguments):
        built[cls] = cls(**{k: v for k, v in given.items() if owners[k] is cls})
    tasks = [t.strip() for t in (built[EvalArguments].task or "").split(",") if t.strip()]
    run = EvalRun(built[ModelArguments], built[DataArguments], built[EvalArguments], tasks, given, run_dir, run_config)
    validate_eval(run)
    return run


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name longer than the file system allows
        return False


def _is_run_dir(path: Path) -> bool:
    try:
        return (path / RUN_CONFIG).is_file()
    except OSError:
        return False


def _from_run_dir(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's saved config, and the eval keys it implies (model or base model + adapter, template, ...)."""
    if not run_dir.is_dir():
        raise DataFileNotFoundError(f"run directory '{run_dir}' does not exist")
    if not _is_run_dir(run_dir):
        raise DataFileNotFoundError(
            f"'{run_dir}' is not a training run folder (no {RUN_CONFIG}); give a model folder as model_name_or_path"
        )
    run_config = read_config_file(run_dir / RUN_CONFIG)
    keys = {k: run_config[k] for k in RUN_KEYS if k in run_config}
    keys.setdefault("template", DataArguments.template)  # what the run trained with when it set none
    if (run_dir / "adapter_config.json").is_file():
        base = run_config.get("model_name_or_path")
        if not base:
            raise ConfigError(f"{run_dir / RUN_CONFIG}: has no model_name_or_path, the base model of the adapter")
        keys |= {"model_name_or_path": base, "adapter_name_or_path": str(run_dir)}
    elif (run_dir / "config.json").is_file():
        keys["model_name_or_path"] = str(run_dir)
    else:
        raise DataFileNotFoundError(
            f"run directory '{run_dir}' holds no saved model (config.json) or adapter (adapter_config.json); "
            "did the run finish? evaluate one of its checkpoint-N folders instead"
        )
    return run_config, keys


def _at_least(name: str, value: float | None, low: float) -> None:
    if value is not None and (value != value or value < low):
        raise ConfigError(f"{name}: {value} must be >= {low:g}")


def validate_eval(run: EvalRun) -> None:
    """Cross-field checks that need no model: tasks known, ranges, the judge settings."""
    from llmtune.data import TEMPLATES
    from llmtune.data.tasks import load_tasks
    from llmtune.model import check_model_args

    args = run.eval
    if args.compare:
        if args.task not in (None, MT_BENCH):
            raise ConfigError("compare: puts MT-bench results side by side; use it with task: mt_bench (or no task)")
        return
    if not run.tasks:
        raise ConfigError("task: required; a task from tasks.json (e.g. sst2, demo_sst2) or mt_bench")
    known = load_tasks(run.data.dataset_dir)
    for task in run.tasks:
        if task != MT_BENCH and task not in known:
            names = ", ".join([*sorted(known), MT_BENCH])
            raise ConfigError(f"task: {task!r} is not a task{suggest(task, [*known, MT_BENCH])}; tasks: {names}")
    if args.eval_split not in ("train", "eval"):
        raise one_of("eval_split", args.eval_split, ("train", "eval"))
    if args.task_format not in TASK_FORMATS:
        raise one_of("task_format", args.task_format, TASK_FORMATS)
    if run.data.template not in TEMPLATES:
        raise one_of("template", run.data.template, TEMPLATES)
    _at_least("num_demos", args.num_demos, 0)
    _at_least("eval_batch_size", args.eval_batch_size, 1)
    _at_least("max_new_tokens", args.max_new_tokens, 1)
    _at_least("max_samples", run.data.max_samples, 1)
    _at_least("cutoff_len", run.data.cutoff_len, 1)
    _at_least("judge_runs", args.judge_runs, 1)
    _at_least("judge_concurrency", args.judge_concurrency, 1)
    _at_least("judge_max_retries", args.judge_max_retries, 0)
    _at_least("judge_backoff_seconds", args.judge_backoff_seconds, 0)
    _at_least("judge_timeout_seconds", args.judge_timeout_seconds, 0.001)
    _at_least("judge_max_tokens", args.judge_max_tokens, 1)
    if not re.match(r"https?://[^\s/]+", args.judge_api_base or ""):
        raise ConfigError(
            f"judge_api_base: {args.judge_api_base!r} is not an http(s) URL (e.g. http://127.0.0.1:8080/v1)"
        )
    if not _ENV_NAME.fullmatch(args.judge_api_key_env or ""):
        # Never echo the value: it may be the key itself, pasted in the wrong place.
        raise ConfigError(
            "judge_api_key_env: must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not the key; "
            "put the key in that variable"
        )
    if not run.model.model_name_or_path:
        raise ConfigError("model_name_or_path: required (a model, a training run folder, or llmtune/tiny-llama)")
    check_model_args(run.model)


def eval_options_text() -> str:
    """Plain text for ``llmtune eval --help``: every eval key with its default and help text."""
    header = [
        "usage: llmtune eval [CONFIG.yaml | RUN_DIR] [--key value ...]",
        "       llmtune eval --task mt_bench --compare RUN_A RUN_B ...",
        "",
        "A training run folder brings its model, adapter, template and cutoff_len. Without a run and without",
        "`template`, MT-bench answers use the tokenizer's own chat_template (never one guessed from the name).",
    ]
    from llmtune.hparams.docs import owners_text

    return owners_text(header, eval_owners())
