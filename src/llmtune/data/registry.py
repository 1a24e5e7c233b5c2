"""The dataset registry: ``dataset_info.json`` in LLaMA-Factory's schema.

Each entry names a local file or folder (``file_name``, relative to the dataset folder) or a
Hugging Face Hub dataset (``hf_hub_url`` with optional ``subset``, ``split``, ``folder``), its
``formatting`` (``alpaca`` or ``sharegpt``), and which ``columns`` and ``tags`` hold what.

Loading the registry never fails because of one odd entry: keys llmtune does not use
(``ms_hub_url``, ``images``, ...) are ignored, and an entry llmtune cannot train on
(``ranking: true``, no ``file_name`` or ``hf_hub_url``, an unknown ``formatting``) only raises
when a config asks for that dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import llmtune
from llmtune.errors import ConfigError, DataError, DataFileNotFoundError, one_of, suggest

REGISTRY_FILE = "dataset_info.json"
TASKS_FILE = "tasks.json"  # classification and QA tasks (llmtune.data.tasks), usable as dataset names too
DEFAULT_DATASET_DIR = "data"
FORMATTINGS = ("alpaca", "sharegpt")

# Column roles -> default column names, per formatting.
DEFAULT_COLUMNS = {
    "alpaca": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "system": "system",
        "history": "history",
    },
    "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools"},
}
# Column roles a row must fill; the others are optional unless the entry declares them.
REQUIRED_COLUMNS = {"alpaca": ("prompt", "response"), "sharegpt": ("messages",)}

DEFAULT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}


@dataclass
class DatasetAttr:
    """One registry entry, with LLaMA-Factory's defaults filled in.

    ``columns`` maps a column role (``prompt``, ``response``, ``messages``, ...) to the column
    name in the file; ``declared_columns`` holds the roles the entry named explicitly (those must
    exist in the data; defaulted optional ones may be absent). ``unsupported`` is set when the
    entry cannot be used for SFT, with the reason as one line.
    """

    name: str
    file_name: str | None = None
    hf_hub_url: str | None = None
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    formatting: str = "alpaca"
    columns: dict[str, str] = field(default_factory=dict)
    declared_columns: frozenset[str] = frozenset()
    tags: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TAGS))
    unsupported: str | None = None

    @property
    def source(self) -> str:
        """Where the rows come from, as shown in messages: the file name or the hub id."""
        return self.file_name or self.hf_hub_url or "?"

    def required_roles(self) -> tuple[str, ...]:
        """Column roles every row must have: the formatting's required ones plus declared ones."""
        required = list(REQUIRED_COLUMNS.get(self.formatting, ()))
        required += sorted(role for role in self.declared_columns if role not in required and role in self.columns)
        return tuple(required)

    def ensure_usable(self) -> None:
        """Raise ``ConfigError`` when this entry cannot be used for supervised fine-tuning."""
        if self.unsupported:
            raise ConfigError(f"dataset '{self.name}': {self.unsupported}")

    @classmethod
    def from_entry(cls, name: str, entry: dict) -> DatasetAttr:
        """Build an attribute from one ``dataset_info.json`` entry (never raises for bad values)."""
        formatting = entry.get("formatting") or "alpaca"
        # A non-string formatting (a list, say) is refused by _unsupported_reason; it has no defaults.
        columns = dict(DEFAULT_COLUMNS.get(formatting, {}) if isinstance(formatting, str) else {})
        declared = entry.get("columns") if isinstance(entry.get("columns"), dict) else {}
        columns.update({role: col for role, col in declared.items() if isinstance(col, str)})
        tags = dict(DEFAULT_TAGS)
        if isinstance(entry.get("tags"), dict):
            tags.update({key: val for key, val in entry["tags"].items() if isinstance(val, str)})
        attr = cls(
            name=name,
            file_name=entry.get("file_name"),
            hf_hub_url=entry.get("hf_hub_url"),
            subset=entry.get("subset"),
            split=entry.get("split") or "train",
            folder=entry.get("folder"),
            formatting=formatting,
            columns=columns,
            declared_columns=frozenset(declared),
            tags=tags,
        )
        attr.unsupported = _unsupported_reason(attr, entry)
        return attr


def _unsupported_reason(attr: DatasetAttr, entry: dict) -> str | None:
    """Why an entry cannot be used for SFT, or None when it can."""
    if attr.formatting not in FORMATTINGS:
        return str(one_of("formatting", attr.formatting, FORMATTINGS))
    if entry.get("ranking"):
        return "ranking: true (preference pairs for DPO/reward models) is not supported; llmtune trains SFT only"
    media = sorted(attr.declared_columns & {"images", "videos", "audios"})
    if media:
        return f"{'/'.join(media)} columns (multimodal data) are not supported; llmtune trains on text only"
    if "kto_tag" in attr.declared_columns:
        return "a kto_tag column (KTO preference labels) is not supported; llmtune trains SFT only"
    if not attr.file_name and not attr.hf_hub_url:
        others = sorted(key for key in entry if key.endswith("_url"))
        where = f" ({', '.join(others)} is not supported)" if others else ""
        return f"the entry has neither file_name nor hf_hub_url{where}; add a local file_name"
    for key in ("file_name", "hf_hub_url", "subset", "folder"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            return f"{key} must be a string, got {type(entry[key]).__name__}"
    return None


def resolve_dataset_dir(path: str | Path) -> Path:
    """The dataset folder to use: ``path`` if it exists, else llmtune's shipped data for the default.

    The default ``data`` falls back, when there is no ``./data``, to the copy inside the installed
    package (``llmtune/_data``, wheel installs) and then to the repository's ``data/`` folder
    (editable installs). Any other missing folder raises ``DataFileNotFoundError``.
    """
    given = Path(path)
    if given.is_dir():
        return given
    if str(path) == DEFAULT_DATASET_DIR:
        package_dir = Path(llmtune.__file__).resolve().parent
        for candidate in (package_dir / "_data", package_dir.parents[1] / "data"):
            if (candidate / REGISTRY_FILE).is_file():
                return candidate
        raise DataFileNotFoundError(
            "dataset_dir: 'data' does not exist here and llmtune's shipped data was not found either; "
            "create ./data with a dataset_info.json or set dataset_dir"
        )
    raise DataFileNotFoundError(f"dataset_dir: folder '{path}' does not exist")


def load_registry(dataset_dir: str | Path) -> dict[str, DatasetAttr]:
    """Read ``dataset_dir/dataset_info.json`` into ``{name: DatasetAttr}``.

    A folder with only a ``tasks.json`` has no datasets of its own, only tasks: ``{}``. Raises
    ``DataFileNotFoundError`` when the folder has neither file and ``DataError`` (with
    ``file:line:col``) when ``dataset_info.json`` is not a JSON object of objects.
    """
    registry_path = Path(dataset_dir) / REGISTRY_FILE
    if not registry_path.is_file():
        if (Path(dataset_dir) / TASKS_FILE).is_file():
            return {}
        raise DataFileNotFoundError(
            f"dataset_dir: '{dataset_dir}' has neither {REGISTRY_FILE} nor {TASKS_FILE}; "
            "one of them must list the datasets (or tasks) by name"
        )
    text = registry_path.read_text(encoding="utf-8", errors="replace")
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{registry_path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}") from None
    if not isinstance(entries, dict):
        raise DataError(f"{registry_path}: must hold a JSON object of {{name: entry}}, got {type(entries).__name__}")
    registry = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise DataError(f"{registry_path}: entry '{name}' must be a JSON object, got {type(entry).__name__}")
        registry[name] = DatasetAttr.from_entry(name, entry)
    return registry


def get_dataset_attr(registry: dict[str, DatasetAttr], name: str, dataset_dir: str | Path) -> DatasetAttr:
    """Look ``name`` up in ``registry``; unknown names raise one line listing the known ones."""
    if name not in registry:
        known = ", ".join(sorted(registry)) or "(none)"
        raise ConfigError(
            f"dataset: '{name}' is not in {Path(dataset_dir) / REGISTRY_FILE}{suggest(name, registry)}; "
            f"available: {known}"
        )
    attr = registry[name]
    attr.ensure_usable()
    return attr


def split_names(value: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [name.strip() for name in (value or "").split(",") if name.strip()]
