"""What the two forwards of a zeroth-order step evaluate (``zo_objective``).

``loss`` is the model's own causal-LM loss. ``accuracy`` and ``f1`` are not differentiable, which
zeroth-order training does not need: the "loss" is minus the metric on the batch, as MeZO trains
on SQuAD F1.

Batch contract. Besides the model's inputs (``input_ids``, ``attention_mask``), a batch for a
non-differentiable objective carries:

* ``accuracy`` on a classification batch (``train_as_classification: true``, the batches of
  :mod:`llmtune.train.classification`, recognised by ``cls_option_index``): the prediction is the
  option with the highest length-normalised log-likelihood, compared with ``cls_labels`` (rows
  labelled -100 are not counted). With ``zo_objective: loss`` such a batch is scored by that
  module's cross-entropy over the options, MeZO's classification objective.
* ``accuracy`` on a plain batch: ``zo_label_word_ids``, a LongTensor ``[C]`` or ``[B, C]`` with the first token id of
  each class's label word (SST-2: " terrible", " great"), and ``zo_class_labels``, a LongTensor
  ``[B]`` with the gold class index. The prediction is the label word with the highest logit at the
  last non-padding position of each row (the prompt ends where the label word would follow).
* ``f1``: ``zo_gold_answers``, a list of ``B`` lists of gold answer strings; ``input_ids`` hold the
  prompts only, left-padded. The model generates greedily; the score is SQuAD's token F1 against
  the best-matching gold answer.

The QA batches ``f1`` needs (prompts plus gold answers) come from :mod:`llmtune.methods.zo.qa`
(``dataset`` names generation tasks such as ``squad`` or ``demo_squad``).
"""

from __future__ import annotations

from typing import Any

import torch

from llmtune.eval.metrics import normalize_answer, token_f1  # noqa: F401  (one SQuAD F1 for eval and ZO)
from llmtune.model.head import causal_lm_loss, logits_at, output_head
from llmtune.train.classification import CLASS_LABELS as OPTION_LABELS
from llmtune.train.classification import IGNORE_LABEL, classification_loss, is_classification_batch, option_scores

LABEL_WORD_IDS = "zo_label_word_ids"
CLASS_LABELS = "zo_class_labels"
GOLD_ANSWERS = "zo_gold_answers"
BATCH_KEYS = {"loss": (), "accuracy": (LABEL_WORD_IDS, CLASS_LABELS), "f1": (GOLD_ANSWERS,)}


def model_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The batch without the ``zo_*`` keys (the model does not take them)."""
    return {k: v for k, v in inputs.items() if not k.startswith("zo_")}


def language_model_loss(model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
    """The model's causal-LM loss on ``labels``; with ``num_items_in_batch``, summed over tokens and
    divided by that count (so micro-batch losses add up to the accumulated batch's loss). A
    classification batch gets the cross-entropy over its options instead."""
    if is_classification_batch(inputs):
        return classification_loss(model, inputs)[0].detach()
    kwargs = model_inputs(inputs)
    if "labels" in kwargs and output_head(model) is not None:
        return causal_lm_loss(model, kwargs, num_items_in_batch)[0].detach()  # the head at labelled positions only
    if num_items_in_batch is not None:
        kwargs["num_items_in_batch"] = num_items_in_batch
    return model(**kwargs).loss.detach()


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding token of each row (left or right padding), shape ``[B]``."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(1).long().argmax(dim=1)


def negative_accuracy(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """Minus the share of rows whose highest-scoring label word (or option) is the gold class (a scalar tensor)."""
    if is_classification_batch(inputs):
        scores = option_scores(model, inputs)
        labels = inputs[OPTION_LABELS].to(scores.device)
        known = labels != IGNORE_LABEL
        return -(scores.argmax(dim=1)[known] == labels[known]).float().mean()
    batch = model_inputs(inputs)
    mask = batch["attention_mask"]
    last = torch.zeros_like(mask, dtype=torch.bool)
    last[torch.arange(mask.shape[0], device=mask.device), last_token_positions(mask)] = True
    scores = logits_at(model, {"input_ids": batch["input_ids"], "attention_mask": mask}, last)  # [B, V]
    word_ids = inputs[LABEL_WORD_IDS].to(scores.device)
    if word_ids.dim() == 1:
        word_ids = word_ids.unsqueeze(0).expand(scores.shape[0], -1)
    predicted = scores.gather(1, word_ids).argmax(dim=1)
    correct = predicted == inputs[CLASS_LABELS].to(predicted.device)
    return -correct.float().mean()


def negative_f1(model: torch.nn.Module, inputs: dict[str, Any], tokenizer: Any, max_new_tokens: int) -> torch.Tensor:
    """Minus the mean token F1 of greedy answers against the gold answers (a scalar tensor)."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if bool((mask[:, -1] == 0).any()):
        raise ValueError("zo_objective: f1 needs left-padded prompts (a row ends in padding)")
    generated = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    answers = tokenizer.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True)
    scores = [
        max(token_f1(answer, gold) for gold in golds)
        for answer, golds in zip(answers, inputs[GOLD_ANSWERS], strict=True)
    ]
    return -torch.tensor(sum(scores) / len(scores))
