"""Accuracy, F1, exact match and token F1 against values computed by hand; the judge's rating parser."""

from __future__ import annotations

import pytest

from llmtune.eval.judge import parse_rating
from llmtune.eval.metrics import (
    accuracy,
    choice_metrics,
    exact_match,
    f1_for_class,
    generation_metrics,
    macro_f1,
    normalize_answer,
    token_f1,
)


def test_choice_metrics_by_hand() -> None:
    predictions, labels = [1, 0, 1, 1], [1, 1, 1, 0]
    assert accuracy(predictions, labels) == 0.5
    # class 1: tp 2, predicted 3, true 3 -> precision = recall = 2/3 -> F1 2/3
    assert f1_for_class(predictions, labels) == pytest.approx(2 / 3)
    # classes 0, 1, 2: F1 1 (tp 1 of 1), 0 (never right), 0.5 (tp 1, predicted 2, true 2) -> mean 0.5
    assert macro_f1([0, 1, 2, 2], [0, 2, 2, 1], num_classes=3) == pytest.approx(0.5)
    assert f1_for_class([0, 0], [1, 1]) == 0.0
    assert choice_metrics(["accuracy", "macro_f1"], [0, 1], [0, 0], 2) == {
        "accuracy": 0.5,
        "macro_f1": pytest.approx(1 / 3),
    }
    with pytest.raises(ValueError, match="as many predictions as labels"):
        accuracy([1], [1, 0])


def test_squad_exact_match_and_f1_by_hand() -> None:
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("The Cat!", "cat") == 1.0 and exact_match("cats", "cat") == 0.0
    # "black cat sat" vs "cat sat down": 2 common of 3 and 3 -> F1 2/3
    assert token_f1("the black cat sat", "a cat sat down") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("dog", "cat") == 0.0
    # each prediction against its best gold answer, then averaged: (1 + 0.5) / 2 and (1 + 0) / 2
    values = generation_metrics(["em", "f1"], ["Paris", "red car"], [["paris", "France"], ["blue car"]])
    assert values == {"em": pytest.approx(0.5), "f1": pytest.approx(0.75)}


@pytest.mark.parametrize(
    ("text", "rating"),
    [
        ("Good answer. Rating: [[7]]", 7.0),
        ("[[8.5]] because", 8.5),
        ("Rating: [6]", 6.0),
        ("Rating: [[10]] then [[2]]", 10.0),
        ("no rating here", None),
        ("Rating: [[11]]", None),
        ("Rating: [[0]]", None),
        ("", None),
    ],
)
def test_rating_parser(text: str, rating: float | None) -> None:
    assert parse_rating(text) == rating
