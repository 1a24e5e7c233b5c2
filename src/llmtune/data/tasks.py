"""Classification and QA tasks declared as data: ``tasks.json``, with MeZO's prompts and label words.

One registry serves training (``dataset: sst2`` in ``llmtune train``, as prompt/completion SFT or,
with ``train_as_classification: true``, as cross-entropy over the options) and scoring
(``llmtune eval --task sst2``). An entry of ``tasks.json``::

    "sst2": {
      "kind": "choice",                       # choice (rank options) | generation (EM/F1)
      "prompt": "{sentence} It was",          # format string over the row's columns
      "options": [" terrible", " great"],     # choice: one format string per option, in label order
      "label": "label",                       # choice: column holding the gold option
      "label_names": ["negative", "positive"],  # optional: string labels, in option order
      "answers": "answers.text",              # generation: column (dotted path) of the gold answer(s)
      "metrics": ["accuracy"],                # accuracy, macro_f1, f1 (binary, option 1) | em, f1
      "maps": {"connective": {"cause": "because", "effect": "so"}},   # named value maps
      "hf_hub_url": "nyu-mll/glue", "subset": "sst2",
      "splits": {"train": "train", "eval": "validation"},
      "file_name": {"train": "tasks/x_train.jsonl", "eval": "tasks/x_eval.jsonl"},
      "base": "sst2"                          # inherit every field not given (a local copy of a hub task)
    }

A placeholder is ``{column}`` or ``{column|filter|...}``; a column may be a dotted path
(``answers.text``); filters are ``lower``, ``lower_first``, ``strip``, ``strip_period`` and the
names in ``maps``. ``file_name`` paths are relative to the folder of the ``tasks.json`` that
declares them. llmtune's shipped ``data/tasks.json`` is always read; a ``tasks.json`` in
``dataset_dir`` adds tasks or replaces shipped ones by name.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import llmtune
from llmtune.data.corpora import CORPORA
from llmtune.data.readers import RawTable, has_surrogate, list_data_files, read_table, table_from_records
from llmtune.data.registry import DEFAULT_DATASET_DIR, REGISTRY_FILE, load_registry, resolve_dataset_dir, split_names
from llmtune.data.report import DatasetCount
from llmtune.errors import ConfigError, DataError, DataFileNotFoundError, suggest

TASKS_FILE = "tasks.json"
KINDS = ("choice", "generation")
CHOICE_METRICS = ("accuracy", "macro_f1", "f1")
GENERATION_METRICS = ("em", "f1")
SPLITS = ("train", "eval")
_FIELD = re.compile(r"\{([A-Za-z_][\w.]*)((?:\|[A-Za-z_]\w*)*)\}")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


FILTERS = {
    "lower": str.lower,
    "lower_first": _lower_first,
    "strip": str.strip,
    "strip_period": lambda text: text.rstrip().removesuffix("."),
}


@dataclass
class TaskExample:
    """One scored or trained example: its prompt and either the options and gold index, or the answers.

    ``label`` is the gold option index (choice tasks); ``answers`` the gold strings (generation).
    ``where`` says which file row it came from, for messages.
    """

    prompt: str
    options: list[str] = field(default_factory=list)
    label: int | None = None
    answers: list[str] = field(default_factory=list)
    where: str = ""

    @property
    def target(self) -> str:
        """The gold completion: the gold option (choice), or the first answer after a space (generation)."""
        if self.options:
            return self.options[self.label]
        return self.answers[0] if self.prompt[-1:].isspace() else " " + self.answers[0]


@dataclass
class Task:
    """One ``tasks.json`` entry, checked; see the module docstring for the fields."""

    name: str
    kind: str
    prompt: str
    options: list[str] = field(default_factory=list)
    label: str | None = None
    label_names: list[str] | None = None
    answers: str | None = None
    metrics: list[str] = field(default_factory=list)
    maps: dict[str, dict[str, str]] = field(default_factory=dict)
    hf_hub_url: str | None = None
    subset: str | None = None
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "eval": "validation"})
    file_name: dict[str, str] = field(default_factory=dict)
    corpus: str | None = None
    base_dir: Path = Path(".")

    @property
    def source(self) -> str:
        """Where the rows come from, as shown in messages."""
        if self.file_name:
            return ", ".join(self.file_name.values())
        if self.corpus:
            return f"corpus {self.corpus}"
        return f"{self.hf_hub_url}" + (f" ({self.subset})" if self.subset else "")

    def required_columns(self) -> list[str]:
        """Top-level columns every row must have: those the prompt, options, label and answers use."""
        names = [match.group(1) for text in (self.prompt, *self.options) for match in _FIELD.finditer(text)]
        names += [self.label] if self.label else []
        names += [self.answers] if self.answers else []
        return list(dict.fromkeys(name.split(".")[0] for name in names))

    # -- rendering one row ------------------------------------------------------------------------

    def render(self, text: str, row: dict) -> str:
        """Fill ``text``'s placeholders from ``row``; raise ``KeyError``/``ValueError`` naming a bad field."""

        def fill(match: re.Match) -> str:
            value = _lookup(row, match.group(1))
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError(f"'{match.group(1)}' is {_kind(value)}, expected text")
            value = str(value)
            for name in filter(None, match.group(2).split("|")):
                value = self._apply_filter(name, value, match.group(1))
            return value

        return _FIELD.sub(fill, text)

    def _apply_filter(self, name: str, value: str, column: str) -> str:
        if name in self.maps:
            if value not in self.maps[name]:
                raise ValueError(f"'{column}' is {value!r}, expected one of {', '.join(self.maps[name])}")
            return self.maps[name][value]
        return FILTERS[name](value)

    def example(self, row: dict, where: str = "") -> TaskExample:
        """The ``TaskExample`` of one row; ``ValueError``/``KeyError`` say what is wrong with the row."""
        prompt = self.render(self.prompt, row)
        if not prompt.strip():
            raise ValueError("the prompt is empty")
        if self.kind == "choice":
            options = [self.render(option, row) for option in self.options]
            return TaskExample(prompt, options=options, label=self._label(row), where=where)
        answers = _lookup(row, self.answers)
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"'{self.answers}' is {_kind(answers)}, expected text or a list of texts")
        answers = [a for a in answers if a.strip()]
        if not answers:
            raise ValueError(f"'{self.answers}' holds no answer")
        return TaskExample(prompt, answers=answers, where=where)

    def _label(self, row: dict) -> int:
        value = _lookup(row, self.label)
        count = len(self.options)
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str) and self.label_names and value in self.label_names:
            return self.label_names.index(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, int) and 0 <= value < count:
            return value
        allowed = f"0..{count - 1}" + (f" or one of {', '.join(self.label_names)}" if self.label_names else "")
        raise ValueError(f"label '{self.label}' is {value!r}, expected {allowed}")


def _lookup(row: dict, path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(path)
        value = value[part]
    if value is None:
        raise KeyError(path)
    return value


def _kind(value: object) -> str:
    return "null" if value is None else f"a {type(value).__name__}"


# ---------------------------------------------------------------------------------------------
# The registry


def load_tasks(dataset_dir: str | Path = DEFAULT_DATASET_DIR) -> dict[str, Task]:
    """Every task: llmtune's shipped ``tasks.json``, then ``dataset_dir/tasks.json`` (which wins by name)."""
    folders = [_shipped_dir()]
    try:
        user_dir = resolve_dataset_dir(dataset_dir)
    except DataFileNotFoundError:
        user_dir = None
    if user_dir is not None and (user_dir / TASKS_FILE).is_file() and user_dir.resolve() != folders[0].resolve():
        folders.append(user_dir)
    raw: dict[str, tuple[dict, Path]] = {}
    for folder in folders:
        if (folder / TASKS_FILE).is_file():
            for name, entry in _read_entries(folder / TASKS_FILE).items():
                raw[name] = (entry, folder)
    return {name: _build(name, raw) for name in raw}


def _shipped_dir() -> Path:
    """llmtune's own data folder (the repository's ``data/`` or the installed ``llmtune/_data``)."""
    package_dir = Path(llmtune.__file__).resolve().parent
    for candidate in (package_dir / "_data", package_dir.parents[1] / "data"):
        if (candidate / TASKS_FILE).is_file():
            return candidate
    return package_dir / "_data"


def _read_entries(path: Path) -> dict[str, dict]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}") from None
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise DataError(f"{path}: must hold a JSON object of {{task name: entry object}}")
    return entries


_OWN_FIELDS = ("name", "base_dir")  # set by llmtune, not by the entry
_ENTRY_KEYS = {f.name for f in fields(Task) if f.name not in _OWN_FIELDS} | {"base", "description"}


def _build(name: str, raw: dict[str, tuple[dict, Path]], seen: tuple[str, ...] = ()) -> Task:
    entry, folder = raw[name]
    where = f"{folder / TASKS_FILE}: task '{name}'"
    unknown = [key for key in entry if key not in _ENTRY_KEYS]
    if unknown:
        raise DataError(f"{where}: unknown key '{unknown[0]}'{suggest(unknown[0], _ENTRY_KEYS)}")
    merged = dict(entry)
    if "base" in entry:
        base = entry["base"]
        if base not in raw or base in seen:
            raise DataError(f"{where}: base '{base}' is not a task{suggest(str(base), raw)}")
        parent = _build(base, raw, (*seen, name))
        inherited = {f.name: getattr(parent, f.name) for f in fields(Task) if f.name not in _OWN_FIELDS}
        if "file_name" not in entry:  # the parent's files, where the parent declared them
            folder = parent.base_dir
        else:
            inherited.pop("file_name")
        merged = {**inherited, **{k: v for k, v in entry.items() if k != "base"}}
    merged.pop("description", None)
    try:
        task = Task(name=name, base_dir=folder, **merged)
    except TypeError as error:
        raise DataError(f"{where}: {error}") from None
    _check_task(task, where)
    return task


def _check_task(task: Task, where: str) -> None:
    if task.kind not in KINDS:
        raise DataError(f"{where}: kind {task.kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(task.prompt, str) or not task.prompt:
        raise DataError(f"{where}: 'prompt' must be a non-empty format string")
    if task.kind == "choice":
        if (
            not isinstance(task.options, list)
            or len(task.options) < 2
            or not all(isinstance(o, str) for o in task.options)
        ):
            raise DataError(f"{where}: a choice task needs 'options', a list of at least 2 strings")
        if not isinstance(task.label, str):
            raise DataError(f"{where}: a choice task needs 'label', the column with the gold option")
        if task.label_names is not None and len(task.label_names) != len(task.options):
            raise DataError(f"{where}: 'label_names' must name each of the {len(task.options)} options")
        allowed = CHOICE_METRICS
    else:
        if not isinstance(task.answers, str):
            raise DataError(f"{where}: a generation task needs 'answers', the column with the gold answers")
        allowed = GENERATION_METRICS
    default = allowed[:1] if task.kind == "choice" else allowed  # accuracy; em and f1
    task.metrics = list(task.metrics or default)
    bad = [m for m in task.metrics if m not in allowed]
    if bad:
        raise DataError(f"{where}: metric {bad[0]!r} is not one of {', '.join(allowed)}")
    for text in (task.prompt, *task.options):
        for match in _FIELD.finditer(text):
            for name in filter(None, match.group(2).split("|")):
                if name not in FILTERS and name not in task.maps:
                    raise DataError(f"{where}: unknown filter '{name}'; filters: {', '.join([*FILTERS, *task.maps])}")
    if task.corpus is not None and task.corpus not in CORPORA:
        raise DataError(f"{where}: corpus {task.corpus!r} is not one of {', '.join(CORPORA)}")
    if not task.file_name and not task.hf_hub_url and not task.corpus:
        raise DataError(f"{where}: needs 'file_name' (local files per split), 'hf_hub_url' or 'corpus'")
    if not isinstance(task.file_name, dict) or not isinstance(task.splits, dict):
        raise DataError(f"{where}: 'file_name' and 'splits' map a split (train, eval) to a file or hub split")


def named_tasks_of_kind(data_args: Any, kind: str, refusal: str) -> tuple[dict[str, Task], list[str], list[str]]:
    """``(tasks, train names, eval names)`` of ``dataset``/``eval_dataset`` when every name is a task of ``kind``
    (``choice`` or ``generation``); else one ``ConfigError`` line: ``refusal`` formatted with ``name``,
    ``what`` (what the name is instead) and ``allowed`` (the tasks of that kind)."""

    dataset_dir = resolve_dataset_dir(data_args.dataset_dir)
    train_names, eval_names = split_names(data_args.dataset), split_names(data_args.eval_dataset)
    tasks = tasks_among(train_names + eval_names, load_registry(dataset_dir), dataset_dir)
    for name in train_names + eval_names:
        task = tasks.get(name)
        if task is None or task.kind != kind:
            what = "a dataset_info.json dataset" if task is None else f"a {task.kind} task"
            allowed = ", ".join(sorted(n for n, t in load_tasks(dataset_dir).items() if t.kind == kind))
            raise ConfigError(refusal.format(name=name, what=what, allowed=allowed))
    return tasks, train_names, eval_names


def tasks_among(names: list[str], registry: dict, dataset_dir: str | Path) -> dict[str, Task]:
    """The names in ``names`` that are tasks rather than ``dataset_info.json`` entries (the registry wins).

    A name that is neither is one line listing the datasets and the tasks.
    """
    missing = [name for name in names if name not in registry]
    if not missing:
        return {}
    tasks = load_tasks(dataset_dir)
    for name in missing:
        if name not in tasks:
            known = ", ".join(sorted(registry)) or "(none)"
            raise ConfigError(
                f"dataset: '{name}' is not in {Path(dataset_dir) / REGISTRY_FILE}{suggest(name, [*registry, *tasks])}; "
                f"available: {known}; tasks: {', '.join(sorted(tasks))}"
            )
    return {name: tasks[name] for name in missing}


def load_task_conversations(task: Task, split: str, data_args: Any) -> tuple[list[dict], DatasetCount]:
    """Conversations for SFT from ``split`` of ``task`` (the prompt, then the gold target as the answer)."""
    examples, count = load_task_examples(task, split, data_args.max_samples, data_args.skip_bad_rows)
    return [to_conversation(example) for example in examples], count


def get_task(name: str, tasks: dict[str, Task]) -> Task:
    """The task called ``name``; an unknown name is one line listing the tasks."""
    if name not in tasks:
        raise ConfigError(f"task: {name!r} is not a task{suggest(name, tasks)}; tasks: {', '.join(sorted(tasks))}")
    return tasks[name]


# ---------------------------------------------------------------------------------------------
# Reading a split


def load_task_examples(
    task: Task,
    split: str,
    max_samples: int | None = None,
    skip_bad_rows: bool = False,
    task_file: str | Path | None = None,
) -> tuple[list[TaskExample], DatasetCount]:
    """Read ``split`` (train or eval) of ``task``: its examples (the first ``max_samples``) and the counts.

    ``task_file`` replaces the declared source with a local file or folder. A missing column is a
    ``DataError`` naming the file; a bad row is one too (``file:line: row N: ...``) unless
    ``skip_bad_rows``, which skips and counts it.
    """
    tables = _read_split(task, split, max_samples, task_file)
    count = DatasetCount(name=task.name, split=split, source=", ".join(t.path for t in tables))
    examples: list[TaskExample] = []
    problems: list[str] = []
    for table in tables:
        _check_columns(task, table)
        for row in table.rows:
            if max_samples is not None and len(examples) >= max_samples:
                break
            try:
                if row.problem:
                    raise ValueError(row.problem)
                if row.bad_byte_line is not None or has_surrogate(row.value):
                    raise ValueError("holds bytes that are not valid UTF-8; re-save the file as UTF-8")
                if not isinstance(row.value, dict):
                    raise ValueError(f"row is {_kind(row.value)}, expected a JSON object")
                examples.append(task.example(row.value, table.where(row)))
            except KeyError as missing:
                problems.append(f"{table.where(row)}: '{missing.args[0]}' is missing or null")
            except ValueError as error:
                problems.append(f"{table.where(row)}: {error}")
    if problems and not skip_bad_rows:
        more = f" (and {len(problems) - 1} more bad rows)" if len(problems) > 1 else ""
        raise DataError(f"task '{task.name}': {problems[0]}{more}; fix the data or set skip_bad_rows: true")
    if problems:
        count.skipped["bad task row"] = len(problems)
        count.first_problem["bad task row"] = problems[0]
    if not examples:
        raise DataError(f"task '{task.name}': the {split} split of {count.source} has no usable rows")
    count.rows = len(examples)
    return examples, count


def _read_split(task: Task, split: str, max_samples: int | None, task_file: str | Path | None) -> list[RawTable]:
    if task_file is not None:
        return [read_table(path) for path in list_data_files(Path(task_file))]
    if task.file_name:
        if split not in task.file_name:
            raise DataError(f"task '{task.name}' has no {split} file; its files: {', '.join(task.file_name)}")
        path = task.base_dir / task.file_name[split]
        if not path.exists():
            raise DataFileNotFoundError(f"task '{task.name}': file '{path}' does not exist")
        return [read_table(file) for file in list_data_files(path)]
    if task.corpus:
        rows = CORPORA[task.corpus]()[split]
        return [table_from_records(f"{task.corpus}:{split}", rows, list(rows[0]) if rows else [])]
    return [_read_hub(task, split, max_samples)]


def _read_hub(task: Task, split: str, max_samples: int | None) -> RawTable:
    """The split from the Hugging Face Hub (cached by ``datasets`` after the first download)."""
    import datasets

    hub_split = task.splits.get(split)
    if hub_split is None:
        raise DataError(f"task '{task.name}' declares no hub split for {split}; splits: {', '.join(task.splits)}")
    try:
        dataset = datasets.load_dataset(task.hf_hub_url, name=task.subset, split=hub_split)
    except Exception as error:  # offline, missing repo, auth: all mean "not loadable"
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise DataError(
            f"task '{task.name}': could not load '{task.hf_hub_url}' ({task.subset or 'default'}, {hub_split}) "
            f"from the Hugging Face Hub ({type(error).__name__}: {reason}); offline, give a local file with "
            f"task_file or a file_name entry in {TASKS_FILE}"
        ) from None
    if max_samples is not None:
        dataset = dataset.select(range(min(len(dataset), max_samples)))
    return table_from_records(f"{task.hf_hub_url}:{hub_split}", dataset.to_list(), dataset.column_names)


def _check_columns(task: Task, table: RawTable) -> None:
    found = set(table.columns)
    for column in task.required_columns():
        if column not in found:
            listed = ", ".join(table.columns) or "none"
            raise DataError(
                f"{table.path}: column '{column}' (used by task '{task.name}') is missing; columns found: {listed}"
            )


# ---------------------------------------------------------------------------------------------
# Prompts with demonstrations, and conversations for SFT


def sample_demos(pool: list[TaskExample], count: int, seed: int, index: int) -> list[TaskExample]:
    """``count`` demonstrations for the ``index``-th evaluated example, drawn from ``pool`` with ``seed``.

    Each example gets its own draw (seeded by ``seed`` and ``index``), so results do not depend on
    the batch size or on how many examples are scored.
    """
    if count <= 0:
        return []
    if count > len(pool):
        raise ConfigError(f"num_demos: {count} is more than the {len(pool)} training examples to draw from")
    return random.Random(seed * 1_000_003 + index).sample(pool, count)


def with_demos(example: TaskExample, demos: list[TaskExample], separator: str = "\n\n") -> str:
    """The prompt of ``example`` after its demonstrations (each prompt followed by its gold target)."""
    return "".join(demo.prompt + demo.target + separator for demo in demos) + example.prompt


def to_conversation(example: TaskExample) -> dict:
    """A unified conversation for SFT: the prompt, then the gold target (stripped) as the answer."""
    return {
        "system": None,
        "messages": [
            {"role": "user", "content": example.prompt},
            {"role": "assistant", "content": example.target.strip()},
        ],
    }


def label_counts(examples: list[TaskExample]) -> Counter:
    """Gold option index -> number of examples (choice tasks)."""
    return Counter(e.label for e in examples if e.label is not None)
