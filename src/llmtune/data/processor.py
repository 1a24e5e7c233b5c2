"""Turn checked conversations into token ids and labels for supervised fine-tuning.

Each example becomes ``input_ids`` (all turns, prompt then response, concatenated) and
``labels``: -100 on prompt tokens, the token ids on response tokens (each response ends with
the template's end-of-turn token, which is therefore always trained on). ``train_on_prompt``
trains on prompts too; ``mask_history`` trains on the last turn only. Examples longer than
``cutoff_len`` keep their first ``cutoff_len`` tokens; an example left with no trained token
is dropped. All of it is counted in the ``DataReport``. With ``neat_packing`` the rows are then packed
into ``cutoff_len`` sequences (see :mod:`llmtune.data.packing`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from llmtune.data.loader import eval_size, load_conversations
from llmtune.data.packing import pack_examples
from llmtune.data.report import DataReport
from llmtune.data.rows import Conversation
from llmtune.data.template import Pairs, Template
from llmtune.data.templates import get_template
from llmtune.errors import DataError

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from llmtune.hparams.data_args import DataArguments

IGNORE_INDEX = -100


@dataclass
class PreparedData:
    """Tokenised datasets with columns ``input_ids`` and ``labels``, and what loading found."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    report: DataReport


def get_dataset(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase, seed: int = 42) -> PreparedData:
    """Load, check and tokenise the configured datasets; split off ``val_size`` rows with ``seed``.

    Raises what ``check_datasets`` raises, ``ConfigError`` when the template does not fit the
    tokenizer, and ``DataError`` when no example keeps a trained token within ``cutoff_len``.
    """
    import datasets

    loaded = load_conversations(data_args)
    template = get_template(data_args.template, tokenizer)
    report = loaded.report
    train = _tokenize_all(loaded.train, template, tokenizer, data_args, report, "train")
    evaluation = None
    if loaded.eval is not None:
        evaluation = _tokenize_all(loaded.eval, template, tokenizer, data_args, report, "eval")
    elif data_args.val_size > 0:
        train, evaluation = _split(train, eval_size(data_args.val_size, len(train)), seed)
    if report.dropped:
        report.notes.append(
            f"dropped {report.dropped} rows whose responses lie entirely beyond cutoff_len "
            f"{data_args.cutoff_len}; raise cutoff_len to keep them"
        )
    report.train_rows = len(train)
    report.eval_rows = len(evaluation) if evaluation is not None else None
    build = partial(_packed_columns, capacity=data_args.cutoff_len) if data_args.neat_packing else _columns
    train_columns = build(train)
    if data_args.neat_packing:
        report.notes.append(
            f"packed {len(train)} training rows into {len(train_columns['input_ids'])} sequences of at most "
            f"{data_args.cutoff_len} tokens"
        )
    return PreparedData(
        train=datasets.Dataset.from_dict(train_columns),
        eval=datasets.Dataset.from_dict(build(evaluation)) if evaluation is not None else None,
        report=report,
    )


def build_example(pairs: Pairs, train_on_prompt: bool = False, mask_history: bool = False) -> tuple[list, list]:
    """``(input_ids, labels)`` for one conversation's ``(prompt_ids, response_ids)`` turns."""
    input_ids: list[int] = []
    labels: list[int] = []
    last = len(pairs) - 1
    for index, (prompt_ids, response_ids) in enumerate(pairs):
        trained = not mask_history or index == last
        input_ids += prompt_ids + response_ids
        labels += prompt_ids if trained and train_on_prompt else [IGNORE_INDEX] * len(prompt_ids)
        labels += response_ids if trained else [IGNORE_INDEX] * len(response_ids)
    return input_ids, labels


def _tokenize_all(
    conversations: list[Conversation],
    template: Template,
    tokenizer: PreTrainedTokenizerBase,
    data_args: DataArguments,
    report: DataReport,
    split: str,
) -> list[tuple[list[int], list[int]]]:
    """Tokenise, truncate and filter one split, counting truncated and dropped rows in ``report``."""
    cutoff = data_args.cutoff_len
    examples = []
    truncated = dropped = 0
    for conversation in conversations:
        pairs = template.encode(tokenizer, conversation, data_args.default_system)
        input_ids, labels = build_example(pairs, data_args.train_on_prompt, data_args.mask_history)
        if len(input_ids) > cutoff:
            truncated += 1
            input_ids, labels = input_ids[:cutoff], labels[:cutoff]
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1
            continue
        examples.append((input_ids, labels))
    report.truncated += truncated
    report.dropped += dropped
    if not examples:
        raise DataError(
            f"{split} data: all {len(conversations)} rows lose every trained token when cut to cutoff_len "
            f"{cutoff} ({truncated} were longer); raise cutoff_len"
        )
    return examples


def _split(examples: list, count: int, seed: int) -> tuple[list, list]:
    """Hold out ``count`` examples chosen with ``seed``; both parts keep the original order."""
    held_out = set(random.Random(seed).sample(range(len(examples)), count))
    train = [example for i, example in enumerate(examples) if i not in held_out]
    evaluation = [example for i, example in enumerate(examples) if i in held_out]
    return train, evaluation


def _packed_columns(examples: list[tuple[list[int], list[int]]], capacity: int) -> dict[str, list[list[int]]]:
    packed = pack_examples(examples, capacity)
    return {key: [row[key] for row in packed] for key in ("input_ids", "labels", "seq_lengths")}


def _columns(examples: list[tuple[list[int], list[int]]]) -> dict[str, list[list[int]]]:
    return {"input_ids": [ids for ids, _ in examples], "labels": [labels for _, labels in examples]}
