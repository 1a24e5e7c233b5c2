"""The web UI's form, derived from llmtune's argument dataclasses (no second list of options).

Each :class:`Field` is one config key: its group (the dataclass that defines it), default, help
text and type come from :func:`llmtune.options.iter_options` and the dataclass type hints;
which method groups show for a ``finetuning_type`` comes from the method registry.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import llmtune
from llmtune.arguments import argument_classes
from llmtune.data import TEMPLATES
from llmtune.data.registry import load_registry, resolve_dataset_dir
from llmtune.data.tasks import load_tasks
from llmtune.eval.config import eval_owners
from llmtune.hparams.parser import _members, read_config_file
from llmtune.hparams.truth import is_true
from llmtune.methods import METHODS, method_argument_classes
from llmtune.methods.registry import normalise_config
from llmtune.model.loader import EMBEDDED_MODELS
from llmtune.options import iter_options
from llmtune.webui import runs

# Keys the command always states, even at their default: they say what the run is.
ALWAYS = ("stage", "model_name_or_path", "finetuning_type", "dataset", "template", "output_dir")
# What a fresh page starts from (the embedded model and demo data run offline, on a CPU).
START_VALUES = {
    "model_name_or_path": "llmtune/tiny-llama",
    "dataset": "demo_alpaca",
    "output_dir": "saves/webui/tiny-llama",
    "plot_loss": True,
    "logging_steps": "5",
}


# The top of the Train tab: the keys people change (LlamaBoard's top rows). Every other key goes into a
# collapsed section by concern (:func:`section_of`).
TOP_KEYS = (
    "model_name_or_path",
    "adapter_name_or_path",
    "finetuning_type",
    "dataset",
    "train_as_classification",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "cutoff_len",
    "output_dir",
)
# Keys of ModelArguments / TrainingArguments that form a concern of their own, by prefix.
QUANTISATION_PREFIXES = ("quantization_", "double_quantization")
DISTRIBUTED_PREFIXES = ("deepspeed", "ddp_", "fsdp", "local_rank")
MODEL, QUANTISATION, DATA, TRAINING, DISTRIBUTED = "Model loading", "Quantisation", "Data", "Training", "Distributed"


@dataclass(frozen=True)
class StartingPoint:
    """A one-click start for one of the two jobs: the keys it sets over the dataclass defaults, the
    dataset it wants, and the shipped one that stands in where that cannot be read offline."""

    label: str
    values: dict[str, Any]
    dataset: str
    fallback: str


STARTING_POINTS = {
    "instruction": StartingPoint(
        "Instruction tuning · Alpaca-GPT4",
        {"finetuning_type": "lora", "lora_target": "all", "train_as_classification": False, "cutoff_len": "1024",
         "learning_rate": "1e-4", "num_train_epochs": "3", "lr_scheduler_type": "cosine", "warmup_ratio": "0.1",
         "plot_loss": True, "logging_steps": "5"},
        dataset="alpaca_gpt4_en",
        fallback="demo_alpaca",
    ),
    "classification": StartingPoint(
        "Classification · SST-2, RTE, … (train_as_classification)",
        {"finetuning_type": "lora", "lora_target": "all", "train_as_classification": True, "cutoff_len": "256",
         "learning_rate": "5e-4", "num_train_epochs": "3", "plot_loss": True, "logging_steps": "5"},
        dataset="sst2",
        fallback="demo_sst2",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Field:
    """One config key as the form shows it."""

    group: str  # the dataclass name: ModelArguments, LoraArguments, TrainingArguments, ...
    name: str
    default: Any
    help: str
    kind: str  # "bool", "choice" or "text"
    choices: tuple[str, ...] = ()

    @property
    def default_text(self) -> str:
        """The default as the text box shows it ("" for None)."""
        return "" if self.default is None else str(self.default)


def _choices() -> dict[str, tuple[str, ...]]:
    """Keys with a closed set of values: the choices each dataclass field declares in its metadata
    (beside the field, as TRL and LLaMA-Factory keep them), the registered finetuning types, the templates."""

    declared = {  # fields that name their choices in their metadata
        f.name: tuple(f.metadata["choices"])
        for cls in argument_classes()
        for f in dataclasses.fields(cls)
        if "choices" in f.metadata
    }
    return declared | {
        "finetuning_type": tuple(n for n, m in METHODS.items() if m.implemented),
        "template": tuple(TEMPLATES),
    }


def _is_bool(hint: Any) -> bool:
    members = [m for m in _members(hint) if m is not type(None)]
    return members == [bool]


@cache
def train_fields() -> tuple[Field, ...]:
    """Every field of the Train tab: all llmtune keys plus the common TrainingArguments keys."""
    hints = {cls.__name__: typing.get_type_hints(cls) for cls in argument_classes()}
    choices = _choices()
    fields = []
    for option in iter_options(all_training_keys=False):
        hint = hints[option.group][option.name]
        if option.name in choices:
            kind = "choice"
        elif _is_bool(hint):
            kind = "bool"
        else:
            kind = "text"
        fields.append(Field(option.group, option.name, option.default, option.help, kind, choices.get(option.name, ())))
    return tuple(fields)


@cache
def field_map() -> dict[str, Field]:
    return {f.name: f for f in train_fields()}


@cache
def method_groups() -> dict[str, tuple[str, ...]]:
    """finetuning_type -> the option groups (dataclass names) it reads beyond the shared ones."""

    return {name: tuple(cls.__name__ for cls in method.option_classes()) for name, method in METHODS.items()}


def all_method_groups() -> tuple[str, ...]:
    """Every method option group, in the order the dataclasses are documented."""

    return tuple(cls.__name__ for cls in method_argument_classes())


def section_of(field: Field) -> str:
    """Where the Train tab shows ``field``: ``"top"``, a method's option group (shown for its types only),
    or one collapsed section by concern (model loading, quantisation, data, training, distributed)."""
    if field.name in TOP_KEYS:
        return "top"
    if field.group in all_method_groups():
        return field.group
    if field.name.startswith(QUANTISATION_PREFIXES):
        return QUANTISATION
    if field.name.startswith(DISTRIBUTED_PREFIXES):
        return DISTRIBUTED
    return {"ModelArguments": MODEL, "DataArguments": DATA}.get(field.group, TRAINING)


def sections() -> dict[str, tuple[Field, ...]]:
    """The collapsed sections in page order, each with its fields in dataclass order."""
    order = [MODEL, QUANTISATION, DATA, *all_method_groups(), TRAINING, DISTRIBUTED]
    found: dict[str, list[Field]] = {name: [] for name in order}
    for f in train_fields():
        if section_of(f) != "top":
            found[section_of(f)].append(f)
    return {name: tuple(members) for name, members in found.items() if members}


def method_summaries() -> dict[str, str]:
    """finetuning_type -> its one-line description (the registry's, as ``llmtune train --help`` shows)."""

    return {name: m.summary for name, m in METHODS.items() if m.implemented}


def applies(field: Field, finetuning_type: str) -> bool:
    """Whether ``field`` is an option of the run for this ``finetuning_type``."""
    if field.group not in all_method_groups():
        return True
    return field.group in method_groups().get(finetuning_type, ())


def default_values() -> dict[str, Any]:
    """Every field at its dataclass default, as the form holds it."""
    return {f.name: bool(f.default) if f.kind == "bool" else f.default_text for f in train_fields()}


def start_values() -> dict[str, Any]:
    """The form's values on a fresh page: the dataclass defaults, then :data:`START_VALUES`."""
    return {**default_values(), **START_VALUES}


# ---------------------------------------------------------------------------------------------
# Evaluate tab


@cache
def eval_fields() -> tuple[Field, ...]:
    """The keys of ``llmtune eval`` beyond the run folder, from its dataclasses (llmtune.eval.config)."""

    fields = []
    for name, cls in eval_owners().items():
        if name == "model_name_or_path":  # the run folder box sets it
            continue
        f = {x.name: x for x in dataclasses.fields(cls)}[name]
        hint = typing.get_type_hints(cls)[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        text = " ".join(str(f.metadata.get("help", "")).split())
        fields.append(Field(cls.__name__, name, default, text, "bool" if _is_bool(hint) else "text"))
    return tuple(fields)


# ---------------------------------------------------------------------------------------------
# Choices that come from data: datasets, tasks and presets


def repo_root() -> Path:
    """The source checkout holding ``src/llmtune/webui/`` (and ``examples/``, ``data/``)."""
    return Path(__file__).resolve().parents[3]


def dataset_names(dataset_dir: str = "data") -> list[str]:
    """Names from ``dataset_info.json`` and the task registry (SST-2 and the other tasks)."""

    try:
        folder = resolve_dataset_dir(dataset_dir)
        names = list(load_registry(folder))
        names += [n for n in load_tasks(folder) if n not in names]
    except (OSError, ValueError):
        return []
    return names


def task_names(dataset_dir: str = "data") -> list[str]:
    """What the Evaluate tab can score: the tasks of tasks.json and mt_bench."""

    try:
        return [*load_tasks(resolve_dataset_dir(dataset_dir)), "mt_bench"]
    except (OSError, ValueError):
        return ["mt_bench"]


def presets(root: Path | None = None) -> dict[str, Path]:
    """The shipped training examples (``examples/train_*/*.yaml``) by ``folder/name``: the presets.

    From a source checkout, its ``examples/``; from an installed wheel, the copy inside ``llmtune``.
    """
    shipped = Path(llmtune.__file__).parent / "_examples"  # an installed wheel's copy
    folder = root / "examples" if root is not None else shipped if shipped.is_dir() else repo_root() / "examples"
    found = sorted(folder.glob("train_*/*.yaml"))
    return {f"{p.parent.name}/{p.stem}": p for p in found}


def preset_values(path: Path) -> tuple[dict[str, Any], str]:
    """A preset's keys as form values (other fields at their defaults) and the YAML of keys the form lacks."""
    import yaml

    values = default_values()
    leftover = {}
    for key, value in normalise_config(read_config_file(path)).items():
        f = field_map().get(key)
        if f is None:
            leftover[key] = value  # e.g. ddp_timeout: goes to the "other keys" box
        elif f.kind == "bool":
            values[key] = bool(value)
        else:
            values[key] = "" if value is None else str(value)
    extra = yaml.safe_dump(leftover, sort_keys=False).strip() if leftover else ""
    return values, extra


# ---------------------------------------------------------------------------------------------
# Models: built in, in the local caches, and the user's earlier runs


def _hub_cache() -> Path:
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(HF_HUB_CACHE)


def cached_hub_models(cache: Path | None = None) -> list[str]:
    """Hub models with a downloaded ``config.json`` in the local Hugging Face cache (``org/name``)."""
    folder = cache or _hub_cache()
    found = []
    for repo in sorted(folder.glob("models--*")) if folder.is_dir() else []:
        if any(repo.glob("snapshots/*/config.json")):
            found.append(repo.name.removeprefix("models--").replace("--", "/", 1))
    return found


def run_folders(launches: list | None = None) -> dict[str, list[str]]:
    """The UI's earlier training runs that saved something: ``{"models": full models (config.json),
    "adapters": adapters (adapter_config.json)}``, newest first."""

    found: dict[str, list[str]] = {"models": [], "adapters": []}
    for record in launches if launches is not None else runs.list_launches():
        folder = Path(record.output_dir)
        if record.kind != "train":
            continue
        if (folder / "adapter_config.json").is_file():
            found["adapters"].append(str(folder))
        elif (folder / "config.json").is_file():
            found["models"].append(str(folder))
    return {k: list(dict.fromkeys(v)) for k, v in found.items()}


def model_choices(saved: dict[str, list[str]] | None = None) -> list[str]:
    """The model box's list: the built-in models, the hub models cached here, the full-model runs
    (``saved``: :func:`run_folders`' answer when the caller has it already)."""
    saved = saved if saved is not None else run_folders()
    return list(dict.fromkeys([*EMBEDDED_MODELS, *cached_hub_models(), *saved["models"]]))


# ---------------------------------------------------------------------------------------------
# Whether a dataset or task can be read here


def _offline() -> bool:

    return any(is_true(os.environ.get(v, "")) for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether huggingface.co answers within ``timeout_s`` (False at once when HF_*_OFFLINE is set). The
    lookup runs in a daemon thread: a resolver that hangs (an offline machine) cannot hold the page."""
    if _offline():
        return False
    answer: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout_s)
    return bool(answer and answer[0])


def hub_dataset_cached(repo_id: str, cache: Path | None = None) -> bool:
    """Whether a hub dataset has been downloaded once (the hub cache, or the datasets library's cache)."""
    hub = (cache or _hub_cache()) / f"datasets--{repo_id.replace('/', '--')}"
    if any(hub.glob("snapshots/*/*")):
        return True
    from datasets import config as datasets_config

    prepared = Path(datasets_config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")
    return prepared.is_dir() and any(prepared.iterdir())


def hub_source(name: str, dataset_dir: str = "data") -> str | None:
    """The hub id a dataset or task is read from, or None when it is a local file or an installed corpus."""

    folder = resolve_dataset_dir(dataset_dir)
    entry = load_registry(folder).get(name)
    if entry is not None:
        return entry.hf_hub_url if not entry.file_name else None
    task = load_tasks(folder).get(name)
    return task.hf_hub_url if task is not None and not task.file_name and not task.corpus else None


def choice_tasks(dataset_dir: str = "data") -> list[str]:
    """The registered choice tasks (what ``train_as_classification`` trains on)."""

    return [n for n, t in load_tasks(resolve_dataset_dir(dataset_dir)).items() if t.kind == "choice"]
