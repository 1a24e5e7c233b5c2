"""Load the configured datasets as unified conversations, checking everything on the way.

``check_datasets`` runs before any model or tokenizer loads: it resolves the dataset folder,
looks every name up in the registry, reads each file (or hub split), checks the declared
columns and every row, and returns a ``DataReport``. ``load_conversations`` does the same and
also returns the conversations, for ``get_dataset`` to tokenise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmtune.data.readers import RawTable, has_surrogate, list_data_files, read_table, table_from_records
from llmtune.data.registry import (
    REGISTRY_FILE,
    DatasetAttr,
    get_dataset_attr,
    load_registry,
    resolve_dataset_dir,
    split_names,
)
from llmtune.data.report import DataReport, DatasetCount
from llmtune.data.rows import Conversation, RowProblem, convert_row
from llmtune.data.tasks import load_task_conversations, tasks_among
from llmtune.data.templates import TEMPLATES
from llmtune.errors import ConfigError, DataError, DataFileNotFoundError, one_of, suggest

if TYPE_CHECKING:
    from llmtune.hparams.data_args import DataArguments

# Column names that give a formatting away, for the "did you mean the other formatting" hint.
_FORMAT_MARKERS = {"alpaca": {"instruction", "output"}, "sharegpt": {"conversations", "messages"}}


@dataclass
class LoadedData:
    """Conversations for training and (when ``eval_dataset`` is set) evaluation, and the report."""

    train: list[Conversation]
    eval: list[Conversation] | None
    report: DataReport


def check_datasets(data_args: DataArguments) -> DataReport:
    """Validate the data options, the registry entries, the files and every row; return the counts.

    Raises ``ConfigError`` for a bad option or unknown name, ``DataFileNotFoundError`` for a
    missing file and ``DataError`` for a malformed file or (without ``skip_bad_rows``) the
    first bad row, as ``file:line: row N: what is wrong``.
    """
    return load_conversations(data_args).report


def load_conversations(data_args: DataArguments) -> LoadedData:
    """Read the train (and eval) datasets of ``data_args`` into unified conversations."""
    check_data_options(data_args)
    dataset_dir = resolve_dataset_dir(data_args.dataset_dir)
    registry = load_registry(dataset_dir)
    train_names, eval_names = split_names(data_args.dataset), split_names(data_args.eval_dataset)
    # Look every name up before reading any file, so a typo fails in milliseconds. Names that are not
    # in the registry may be classification/QA tasks (tasks.json): their train or eval split is read.
    tasks = tasks_among(train_names + eval_names, registry, dataset_dir)
    attrs = {
        name: get_dataset_attr(registry, name, dataset_dir) for name in train_names + eval_names if name not in tasks
    }
    report = DataReport(cutoff_len=data_args.cutoff_len)
    splits: dict[str, list[Conversation]] = {"train": [], "eval": []}
    for split, names in (("train", train_names), ("eval", eval_names)):
        for name in names:
            if name in tasks:
                conversations, count = load_task_conversations(tasks[name], split, data_args)
            else:
                conversations, count = load_one(attrs[name], dataset_dir, data_args, split)
            splits[split].extend(conversations)
            report.datasets.append(count)
    if not eval_names and data_args.val_size > 0:
        eval_size(data_args.val_size, len(splits["train"]))  # fail now, not after tokenising
    return LoadedData(splits["train"], splits["eval"] if eval_names else None, report)


def check_data_options(data_args: DataArguments) -> None:
    """Check the data options that need no file: names given, sizes in range, template known."""
    if not split_names(data_args.dataset):
        raise ConfigError("dataset: no dataset given; set dataset: to one or more names from dataset_info.json")
    if data_args.template not in TEMPLATES:
        raise one_of("template", data_args.template, TEMPLATES)
    if data_args.cutoff_len is None or data_args.cutoff_len < 1:
        raise ConfigError(f"cutoff_len: {data_args.cutoff_len!r} must be a positive number of tokens")
    if data_args.max_samples is not None and data_args.max_samples < 1:
        raise ConfigError(f"max_samples: {data_args.max_samples!r} must be at least 1 (or unset for all rows)")
    if data_args.val_size < 0 or (data_args.val_size >= 1 and not float(data_args.val_size).is_integer()):  # inf too
        raise ConfigError(
            f"val_size: {data_args.val_size!r} must be a fraction in [0, 1) or a whole number of rows >= 1"
        )
    if data_args.default_system and has_surrogate(data_args.default_system):  # the tokenizer would raise TypeError
        raise ConfigError("default_system: holds characters that are not valid UTF-8 (lone surrogates); fix the text")
    if data_args.k_shot < 0:
        raise ConfigError(f"k_shot: {data_args.k_shot!r} must be a number of examples per class >= 1 (0: every row)")
    if data_args.k_shot and data_args.val_size > 0:
        raise ConfigError("k_shot and val_size are both set; k_shot draws its own dev set (k per class)")
    if data_args.val_size > 0 and split_names(data_args.eval_dataset):
        raise ConfigError("val_size and eval_dataset are both set; use val_size to split or eval_dataset, not both")


def eval_size(val_size: float, rows: int) -> int:
    """How many of ``rows`` to hold out for ``val_size`` (fraction < 1 or count >= 1); 0 when unset."""
    if val_size <= 0:
        return 0
    count = int(val_size) if val_size >= 1 else max(1, round(val_size * rows))
    if count >= rows:
        raise DataError(
            f"val_size: {val_size!r} holds out {count} of {rows} training rows, leaving none to train on; "
            "use a smaller val_size"
        )
    return count


def load_one(
    attr: DatasetAttr, dataset_dir: Path, data_args: DataArguments, split: str = "train"
) -> tuple[list[Conversation], DatasetCount]:
    """Read, check and convert one dataset, up to ``max_samples`` good rows."""
    tables = _read_tables(attr, dataset_dir, data_args.max_samples)
    count = DatasetCount(name=attr.name, split=split, source=attr.source)
    conversations: list[Conversation] = []
    problems: list[RowProblem] = []
    limit = data_args.max_samples
    for table in tables:
        _check_columns(table, attr)
        for row in table.rows:
            if limit is not None and len(conversations) >= limit:
                break
            result = convert_row(row, table, attr)
            if isinstance(result, RowProblem):
                problems.append(result)
            else:
                conversations.append(result)
    if problems and not data_args.skip_bad_rows:
        more = f" (and {len(problems) - 1} more bad rows)" if len(problems) > 1 else ""
        raise DataError(f"{problems[0].message}{more}; fix the data or set skip_bad_rows: true to skip bad rows")
    for problem in problems:
        count.skipped[problem.reason] += 1
        count.first_problem.setdefault(problem.reason, problem.message)
    if not conversations:
        raise DataError(f"dataset '{attr.name}': all {len(problems)} rows are bad; first: {problems[0].message}")
    count.rows = len(conversations)
    return conversations, count


def _read_tables(attr: DatasetAttr, dataset_dir: Path, max_samples: int | None) -> list[RawTable]:
    if not attr.file_name:
        return [_read_hub(attr, max_samples)]
    path = Path(dataset_dir) / attr.file_name
    if not path.exists():
        present = [p.name for p in Path(dataset_dir).iterdir()] if Path(dataset_dir).is_dir() else []
        raise DataFileNotFoundError(
            f"dataset '{attr.name}': file '{path}' does not exist{suggest(attr.file_name, present)}; "
            f"fix file_name in {Path(dataset_dir) / REGISTRY_FILE} or add the file"
        )
    return [read_table(file) for file in list_data_files(path)]


def _read_hub(attr: DatasetAttr, max_samples: int | None) -> RawTable:
    """Load a Hugging Face Hub dataset with ``datasets.load_dataset`` (cached after the first download)."""
    import datasets

    try:
        dataset = datasets.load_dataset(attr.hf_hub_url, name=attr.subset, split=attr.split, data_dir=attr.folder)
    except Exception as error:  # the hub raises many types (offline, missing repo, auth); all mean "not loadable"
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise DataError(
            f"dataset '{attr.name}': could not load '{attr.hf_hub_url}' from the Hugging Face Hub "
            f"({type(error).__name__}: {reason}); if you are offline, download it and point a local "
            "file_name at it in dataset_info.json"
        ) from None
    if max_samples is not None:
        dataset = dataset.select(range(min(len(dataset), max_samples)))
    return table_from_records(attr.hf_hub_url, dataset.to_list(), dataset.column_names)


def _check_columns(table: RawTable, attr: DatasetAttr) -> None:
    """Every required or declared column must appear in the file (in at least one row)."""
    found = set(table.columns)
    for role in attr.required_roles():
        column = attr.columns[role]
        if column in found:
            continue
        listed = ", ".join(table.columns) or "none"
        raise DataError(
            f"{table.path}: column '{column}' ({role}) of dataset '{attr.name}' is missing; "
            f"columns found: {listed}{_format_hint(found, attr)}"
        )


def _format_hint(found: set[str], attr: DatasetAttr) -> str:
    """Suggest the other formatting when the columns look like it."""
    other = "alpaca" if attr.formatting == "sharegpt" else "sharegpt"
    if found & _FORMAT_MARKERS[other]:
        return f" (the rows look like {other}: set formatting: {other} or columns in dataset_info.json)"
    return ""
