"""Task metrics: accuracy, macro and binary F1 for choice tasks; SQuAD's exact match and token F1 for QA.

All return fractions in [0, 1]; the CLI and the result files show them as such.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

_PUNCTUATION = set(string.punctuation)


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Share of predictions equal to their label."""
    _same_length(predictions, labels)
    return sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)


def f1_for_class(predictions: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of class ``positive`` (MultiRC's F1a over answers labelled correct); 0 when it is never predicted or true."""
    _same_length(predictions, labels)
    tp = sum(p == positive and y == positive for p, y in zip(predictions, labels, strict=True))
    predicted = sum(p == positive for p in predictions)
    actual = sum(y == positive for y in labels)
    if tp == 0:
        return 0.0
    precision, recall = tp / predicted, tp / actual
    return 2 * precision * recall / (precision + recall)


def macro_f1(predictions: Sequence[int], labels: Sequence[int], num_classes: int) -> float:
    """Mean over classes ``0..num_classes-1`` of each class's F1 (CB's metric)."""
    return sum(f1_for_class(predictions, labels, c) for c in range(num_classes)) / num_classes


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD's token-level F1 of two answers after normalisation (1.0 when both are empty)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def best_over_answers(metric, prediction: str, answers: Sequence[str]) -> float:
    """The metric against the best-matching gold answer (SQuAD's rule for several answers)."""
    return max(metric(prediction, gold) for gold in answers)


def choice_metrics(names: Sequence[str], predictions: list[int], labels: list[int], num_classes: int) -> dict:
    """``{name: value}`` for a choice task's declared metrics."""
    values = {}
    for name in names:
        if name == "accuracy":
            values[name] = accuracy(predictions, labels)
        elif name == "macro_f1":
            values[name] = macro_f1(predictions, labels, num_classes)
        elif name == "f1":
            values[name] = f1_for_class(predictions, labels, positive=1)
    return values


def generation_metrics(names: Sequence[str], predictions: list[str], answers: list[list[str]]) -> dict:
    """``{"em": ..., "f1": ...}`` averaged over examples (each against its best gold answer)."""
    _same_length(predictions, answers)
    metric = {"em": exact_match, "f1": token_f1}
    return {
        name: sum(best_over_answers(metric[name], p, a) for p, a in zip(predictions, answers, strict=True))
        / len(answers)
        for name in names
    }


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b) or not b:
        raise ValueError(f"need as many predictions as labels, and at least one ({len(a)} vs {len(b)})")
