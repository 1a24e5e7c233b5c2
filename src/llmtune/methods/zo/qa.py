"""``zo_objective: f1``: MeZO's non-differentiable objective on question answering.

The training data are generation tasks (``squad``, ``drop``, ``demo_squad``; ``kind: generation``
in ``tasks.json``): each example becomes its prompt (MeZO's plain text, no chat template, cut from
the left to ``cutoff_len``) and its gold answers. A batch holds the prompts left-padded, so that the
model continues every row from its last token, and the answers as a list
(:data:`~llmtune.methods.zo.objectives.GOLD_ANSWERS`). Both forwards of a step generate greedily and
score SQuAD's token F1 against the best gold answer; the step's "loss" is minus the mean F1, and so is
the evaluation loss on an ``eval_dataset`` of the same kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmtune.data.loader import check_data_options
from llmtune.data.report import DataReport
from llmtune.data.task_encoding import encode_generation_prompt
from llmtune.data.tasks import load_task_examples, named_tasks_of_kind
from llmtune.errors import ConfigError, DataError
from llmtune.eval.model import left_pad
from llmtune.methods.zo.objectives import GOLD_ANSWERS
from llmtune.train.classification import keep_features

if TYPE_CHECKING:
    import datasets

PROMPT, ANSWERS = "prompt_ids", "answers"  # the per-example feature columns


@dataclass
class AnswerData:
    """Datasets of per-example features (``prompt_ids``, ``answers``) and what loading them found."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    report: Any


@dataclass
class AnswerCollator:
    """Left-pad ``{"prompt_ids", "answers"}`` features into ``input_ids``, ``attention_mask`` and the answers."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, Any]:

        input_ids, attention_mask = left_pad([f[PROMPT] for f in features], self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            GOLD_ANSWERS: [list(f[ANSWERS]) for f in features],
        }


def answer_data(args: Any, tokenizer: Any) -> tuple[AnswerData, dict[str, Any]] | None:
    """The ``zo`` method's own training data (the registry's ``data`` hook): for ``zo_objective: f1``
    the answer datasets and the trainer's collator; None for the other objectives (the usual data)."""
    if args.methods["zo"].zo_objective != "f1":
        return None
    if args.finetuning.train_as_classification:
        raise ConfigError(
            "zo_objective: f1 trains on generated answers of QA tasks; train_as_classification scores options: "
            "set train_as_classification: false, or zo_objective: accuracy"
        )

    prepared = get_answer_dataset(args.data, tokenizer)
    keep_features(args.training)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return prepared, {"data_collator": AnswerCollator(pad_token_id=pad)}


def get_answer_dataset(data_args: Any, tokenizer: Any) -> AnswerData:
    """Encode the generation tasks named in ``dataset`` (train splits) and ``eval_dataset`` (eval splits).

    Any other name is one line listing the generation tasks, before a model loads.
    """
    import datasets

    check_data_options(data_args)
    tasks, train_names, eval_names = named_tasks_of_kind(
        data_args,
        "generation",
        "zo_objective: f1: '{name}' is {what}; it needs question-answering tasks with gold answers ({allowed}); "
        "use zo_objective: loss to train it as SFT",
    )
    report = DataReport(cutoff_len=data_args.cutoff_len)
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    for split, names in (("train", train_names), ("eval", eval_names)):
        for name in names:
            examples, count = load_task_examples(tasks[name], split, data_args.max_samples, data_args.skip_bad_rows)
            report.datasets.append(count)
            for example in examples:
                if not example.answers:
                    raise DataError(f"task '{name}': {example.where}: no gold answer")
                ids = encode_generation_prompt(tokenizer, example, max_length=data_args.cutoff_len)
                splits[split].append({PROMPT: ids, ANSWERS: list(example.answers)})
    report.train_rows = len(splits["train"])
    report.eval_rows = len(splits["eval"]) if eval_names else None
    report.notes.append("zo_objective: f1: prompts left-padded; the objective is minus the token F1 of greedy answers")
    return AnswerData(
        datasets.Dataset.from_list(splits["train"]),
        datasets.Dataset.from_list(splits["eval"]) if eval_names else None,
        report,
    )
