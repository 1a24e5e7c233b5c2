"""``train_as_classification``: cross-entropy over the options' log-likelihoods (MeZO), for every finetuning type.

Each example of a choice task (``sst2``, ``rte``, ...) becomes one sequence per option: the prompt
followed by that option's tokens. An option's score is the mean log-probability of its tokens
(length-normalised); the loss is the cross-entropy of the scores against the gold option. With
single-token label words this is exactly the cross-entropy over the label words' logits at the
answer position. Scoring (``llmtune eval``) ranks the options by the same score.

Batch contract (what :class:`ClassificationCollator` yields; what :func:`option_scores` and
:func:`classification_loss` read; any trainer that computes its own objective, e.g. the zeroth-order
one, can call them on the same batches):

* ``input_ids``        LongTensor ``[N, L]``: one row per (example, option), the prompt then the
  option, right-padded with the pad id. ``N`` is the number of options in the batch.
* ``attention_mask``   LongTensor ``[N, L]``.
* ``cls_option_mask``  LongTensor ``[N, L]``: 1 at the option's tokens (the positions scored).
* ``cls_option_index`` LongTensor ``[B, C]``: the row of ``input_ids`` that holds option ``c`` of
  example ``b``; ``-1`` where an example has fewer than ``C`` options.
* ``cls_labels``       LongTensor ``[B]``: the gold option of each example (``-100``: unknown).

When every option in a batch is a single token (label words such as ``great`` / ``terrible``), the
collator shares the prompt instead (``share_prompt``, on by default): one row per example, half the
forward work with two options, the same scores. Then ``input_ids`` is ``[B, L]`` (the prompt only),
``cls_option_mask`` is 1 at each row's last prompt token (the position that predicts the answer),
``cls_option_index`` keeps its ``-1`` for absent options, and

* ``cls_option_tokens`` LongTensor ``[B, C]``: the token of option ``c`` of example ``b`` (``-1``: absent).

A batch has no ``labels`` key, so the HF Trainer counts no tokens for it and divides the loss by the
gradient-accumulation steps itself; :func:`is_classification_batch` tells such batches apart.
For ``zo_objective: accuracy``: ``-(option_scores(model, batch).argmax(1) == batch["cls_labels"]).float().mean()``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from llmtune.data.kshot import k_shot_splits
from llmtune.data.loader import check_data_options, eval_size
from llmtune.data.report import DataReport
from llmtune.data.task_encoding import encode_choice
from llmtune.data.tasks import load_task_examples, named_tasks_of_kind
from llmtune.errors import DataError
from llmtune.model.head import logits_at

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from llmtune.hparams.data_args import DataArguments

logger = logging.getLogger("llmtune")

OPTION_MASK = "cls_option_mask"
OPTION_INDEX = "cls_option_index"
OPTION_TOKENS = "cls_option_tokens"
CLASS_LABELS = "cls_labels"
IGNORE_LABEL = -100


def is_classification_batch(inputs: dict[str, Any]) -> bool:
    """Whether ``inputs`` follows this module's batch contract."""
    return OPTION_INDEX in inputs


@dataclass
class ClassificationCollator:
    """Pad per-example ``{"prompt_ids", "option_ids", "label"}`` dicts into the batch contract above."""

    pad_token_id: int
    share_prompt: bool = True

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        labels = torch.tensor([IGNORE_LABEL if f.get("label") is None else f["label"] for f in features])
        if self.share_prompt and all(len(option) == 1 for f in features for option in f["option_ids"]):
            return self._shared(features, labels)
        rows = [(f["prompt_ids"], option) for f in features for option in f["option_ids"]]
        width = max(len(prompt) + len(option) for prompt, option in rows)
        count = len(rows)
        input_ids = torch.full((count, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((count, width), dtype=torch.long)
        option_mask = torch.zeros((count, width), dtype=torch.long)
        for i, (prompt, option) in enumerate(rows):
            ids = list(prompt) + list(option)
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, : len(ids)] = 1
            option_mask[i, len(prompt) : len(ids)] = 1
        most = max(len(f["option_ids"]) for f in features)
        option_index = torch.full((len(features), most), -1, dtype=torch.long)
        start = 0
        for b, f in enumerate(features):
            n = len(f["option_ids"])
            option_index[b, :n] = torch.arange(start, start + n)
            start += n
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            OPTION_MASK: option_mask,
            OPTION_INDEX: option_index,
            CLASS_LABELS: labels,
        }

    def _shared(self, features: list[dict], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The single-token form: one row per example (its prompt), the options as token ids."""
        width = max(len(f["prompt_ids"]) for f in features)
        most = max(len(f["option_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        answer = torch.zeros((len(features), width), dtype=torch.long)
        tokens = torch.full((len(features), most), -1, dtype=torch.long)
        for b, f in enumerate(features):
            n = len(f["prompt_ids"])
            input_ids[b, :n] = torch.tensor(list(f["prompt_ids"]), dtype=torch.long)
            attention_mask[b, :n] = 1
            answer[b, n - 1] = 1
            tokens[b, : len(f["option_ids"])] = torch.tensor([option[0] for option in f["option_ids"]])
        index = torch.where(tokens >= 0, torch.arange(most).expand_as(tokens), -1)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            OPTION_MASK: answer,
            OPTION_INDEX: index,
            OPTION_TOKENS: tokens,
            CLASS_LABELS: labels,
        }


def option_log_likelihoods(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], length_normalized: bool = True
) -> torch.Tensor:
    """Log-likelihood of each row's option tokens given what precedes them, ``[N]`` (mean per token
    when ``length_normalized``, else the sum). The LM head runs only at the positions that predict an
    option token (:func:`llmtune.model.head.logits_at`)."""
    if OPTION_TOKENS in batch:
        raise ValueError("a shared-prompt batch has no option rows: score it with option_scores")
    scored = batch[OPTION_MASK][:, 1:].bool()  # token t is predicted at position t - 1
    positions = torch.zeros_like(batch[OPTION_MASK], dtype=torch.bool)
    positions[:, :-1] = scored
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    token_logits = logits_at(model, inputs, positions).float()  # [M, V]: the head runs at these positions only
    targets = batch["input_ids"][:, 1:][scored].to(token_logits.device)
    token_lp = token_logits.log_softmax(-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    rows = torch.arange(scored.shape[0], device=scored.device).unsqueeze(1).expand_as(scored)[scored]
    rows = rows.to(token_lp.device)
    sums = torch.zeros(scored.shape[0], device=token_lp.device, dtype=token_lp.dtype).index_add(0, rows, token_lp)
    if not length_normalized:
        return sums
    return sums / scored.sum(1).clamp(min=1).to(sums.dtype)


def option_scores(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], length_normalized: bool = True
) -> torch.Tensor:
    """Scores ``[B, C]`` of every option of every example (``-inf`` for absent options)."""
    if OPTION_TOKENS in batch:  # one row per example: the options' log-probabilities at the answer position
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        lp = logits_at(model, inputs, batch[OPTION_MASK].bool()).float().log_softmax(-1)  # [B, V]
        tokens = batch[OPTION_TOKENS].to(lp.device)
        return lp.gather(1, tokens.clamp(min=0)).masked_fill(tokens < 0, float("-inf"))
    per_row = option_log_likelihoods(model, batch, length_normalized)
    index = batch[OPTION_INDEX].to(per_row.device)
    return per_row[index.clamp(min=0)].masked_fill(index < 0, float("-inf"))


def classification_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, scores)``: the mean cross-entropy of the length-normalised option scores, and the scores."""
    scores = option_scores(model, batch, length_normalized=True)
    labels = batch[CLASS_LABELS].to(scores.device)
    return F.cross_entropy(scores, labels, ignore_index=IGNORE_LABEL), scores


def compute_classification_loss(trainer: Any, model: torch.nn.Module, inputs: dict, return_outputs: bool = False):
    """``Trainer.compute_loss`` for classification batches; logs the batch accuracy as ``cls_accuracy``."""
    loss, scores = classification_loss(model, inputs)
    labels = inputs[CLASS_LABELS].to(scores.device)
    known = labels != IGNORE_LABEL
    if known.any() and hasattr(trainer, "_metrics"):
        mode = "train" if model.training else "eval"
        accuracy = (scores.argmax(1)[known] == labels[known]).float().mean()
        trainer._metrics[mode]["cls_accuracy"].append(float(trainer.accelerator.gather_for_metrics(accuracy).mean()))
    return (loss, SimpleNamespace(logits=scores.detach())) if return_outputs else loss


# ---------------------------------------------------------------------------------------------
# Datasets


@dataclass
class ClassificationData:
    """Datasets of per-example features (columns ``prompt_ids``, ``option_ids``, ``label``) and what
    loading them found (``report``, as for SFT data)."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    report: Any


def get_classification_dataset(
    data_args: DataArguments, tokenizer: PreTrainedTokenizerBase, seed: int = 42
) -> ClassificationData:
    """Encode the choice tasks named in ``dataset`` (train splits) and ``eval_dataset`` (eval splits).

    Every name must be a choice task; the prompts are MeZO's plain text (no chat template).
    ``val_size`` holds out training examples as for SFT.
    """

    check_data_options(data_args)
    tasks, train_names, eval_names = named_tasks_of_kind(
        data_args,
        "choice",
        "train_as_classification: '{name}' is {what}; it needs choice tasks with options ({allowed}); "
        "set train_as_classification: false to train it as SFT",
    )
    report = DataReport(cutoff_len=data_args.cutoff_len)
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    k_shot_dev = bool(data_args.k_shot) and not eval_names
    for split, names in (("train", train_names), ("eval", eval_names)):
        for name in names:
            examples, count = load_task_examples(tasks[name], split, data_args.max_samples, data_args.skip_bad_rows)
            report.datasets.append(count)
            drawn = {split: examples}
            if split == "train" and data_args.k_shot:
                drawn["train"], dev = k_shot_splits(examples, data_args.k_shot, seed, name)
                if k_shot_dev:
                    drawn["eval"] = dev
            for part, chosen in drawn.items():
                for example in chosen:
                    try:
                        encoded = encode_choice(tokenizer, example, max_length=data_args.cutoff_len)
                    except ValueError as error:
                        raise DataError(f"task '{name}': {error}") from None
                    splits[part].append(encoded.as_features())
    train, evaluation = splits["train"], splits["eval"] if (eval_names or k_shot_dev) else None
    if evaluation is None and data_args.val_size > 0:
        import random

        held = set(random.Random(seed).sample(range(len(train)), eval_size(data_args.val_size, len(train))))
        train, evaluation = [f for i, f in enumerate(train) if i not in held], [train[i] for i in sorted(held)]
    report.train_rows = len(train)
    report.eval_rows = len(evaluation) if evaluation is not None else None
    report.notes.append("train_as_classification: cross-entropy over the options' mean log-probabilities")
    if data_args.k_shot:
        dev = " and another k as the dev set" if k_shot_dev else ""
        report.notes.append(f"k_shot: {data_args.k_shot} training examples per class (seed {seed}){dev}")
    import datasets

    return ClassificationData(
        datasets.Dataset.from_list(train),
        datasets.Dataset.from_list(evaluation) if evaluation is not None else None,
        report,
    )


def classification_trainer_kwargs(training_args: Any, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What the trainer needs for classification batches: this module's collator, the per-example
    features kept as they are (no column removal, no SFT preparation)."""
    keep_features(training_args)
    return {"data_collator": ClassificationCollator(pad_token_id=tokenizer.pad_token_id)}


def keep_features(training_args: Any) -> None:
    """Hand the trainer per-example features as they are: no column removal, no SFT preparation (a
    collator of the caller's makes the batches)."""
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
