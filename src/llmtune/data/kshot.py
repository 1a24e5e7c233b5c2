"""k-shot splits as LM-BFF and MeZO draw them: ``k`` examples per class for training and another ``k``
per class as a development set, from a task's training split, with one seed (13, 21, 42, 87 and 100
in the papers); the task's eval split is the test set, the same for every seed.

The training draw is the one ``llmtune kernel`` has always made (``k_shot_split``), so a kernel and
a fine-tuning run of the same seed see the same examples; the development set is drawn from what is
left, with its own generator, so asking for it never changes the training draw.
"""

from __future__ import annotations

import random

from llmtune.data.tasks import TaskExample
from llmtune.errors import ConfigError

PAPER_SEEDS = (13, 21, 42, 87, 100)  # LM-BFF's and MeZO's k-shot seeds


def _by_class(examples: list[TaskExample]) -> dict[int, list[TaskExample]]:
    by_class: dict[int, list[TaskExample]] = {}
    for example in examples:
        by_class.setdefault(example.label, []).append(example)
    return by_class


def k_shot_split(examples: list[TaskExample], k: int, seed: int, task_name: str) -> list[TaskExample]:
    """``k`` examples of every class drawn with ``seed`` (k is per class), in a seeded order."""
    rng = random.Random(seed)
    chosen: list[TaskExample] = []
    for label, pool in sorted(_by_class(examples).items()):
        if len(pool) < k:
            raise ConfigError(
                f"k_shot: {k} per class, but task '{task_name}' has only {len(pool)} training examples of class {label}"
            )
        chosen += rng.sample(pool, k)
    rng.shuffle(chosen)
    return chosen


def k_shot_splits(
    examples: list[TaskExample], k: int, seed: int, task_name: str
) -> tuple[list[TaskExample], list[TaskExample]]:
    """``(train, dev)``: :func:`k_shot_split`'s ``k`` per class, and another ``k`` per class from the rest."""
    train = k_shot_split(examples, k, seed, task_name)
    taken = {id(example) for example in train}
    rest = [example for example in examples if id(example) not in taken]
    short = {label: len(pool) for label, pool in _by_class(rest).items() if len(pool) < k}
    if short:
        label, count = next(iter(short.items()))
        raise ConfigError(
            f"k_shot: {k} per class for training and {k} for the dev set, but task '{task_name}' has only "
            f"{count + k} training examples of class {label}"
        )
    return train, k_shot_split(rest, k, seed + 1_000_003, task_name)
