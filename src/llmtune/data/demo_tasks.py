"""The demo task files: small SST-2-, RTE- and SQuAD-style sets, generated deterministically.

They have the columns of the hub datasets (GLUE SST-2: ``sentence``/``label``; SuperGLUE RTE:
``premise``/``hypothesis``/``label``; SQuAD: ``title``/``context``/``question``/``answers``) so
the same ``tasks.json`` prompts apply, and they are built from the demo vocabulary so the
embedded tiny model can learn them in seconds:

* ``demo_sst2``: the sentiment is carried by one adjective from a positive or a negative list;
* ``demo_rte``: the hypothesis repeats the premise's colour (entailment) or names another one;
* ``demo_squad``: a three-sentence context; the answer is a span of it.

Each set has a train and an eval split, written as JSON lines (one row per line, so a row can be
cited by line number) into ``data/tasks/``. Regenerate with ``python -m llmtune.data.demo_tasks``;
the output is byte-for-byte the same every run.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from llmtune.data.demo import WORDS, default_data_dir

TASK_SEED = 2024
TASKS_FOLDER = "tasks"
SIZES = {"train": 256, "eval": 128}

POSITIVE = ("good", "nice", "fun", "warm", "happy", "sweet", "lovely", "funny", "clever", "bright")
NEGATIVE = ("bad", "sad", "dull", "cold", "ugly", "boring", "weak", "awful", "poor", "slow")
SST2_PATTERNS = (
    "the {noun} was {adj}.",
    "one {adj} story about a {noun}.",
    "this {noun} is so {adj}.",
    "what a {adj} {noun} !",
)
COLOURS = ("red", "blue", "green", "black", "white", "brown", "pink", "gray")
SIZES_WORDS = ("big", "small", "tall", "short", "old", "young")
PLACES = ("river", "house", "tree", "cloud", "road", "ship", "box", "van")
FOODS = ("apple", "bread", "cake", "milk", "lemon", "candy", "egg", "fish")


def sst2_rows(n: int, rng: random.Random) -> list[dict]:
    """``n`` rows ``{"sentence", "label"}``, half positive (1), half negative (0), shuffled."""
    rows = []
    for i in range(n):
        label = i % 2
        adjective = rng.choice(POSITIVE if label else NEGATIVE)
        sentence = rng.choice(SST2_PATTERNS).format(noun=rng.choice(WORDS), adj=adjective)
        rows.append({"sentence": sentence, "label": label})
    rng.shuffle(rows)
    return rows


def rte_rows(n: int, rng: random.Random) -> list[dict]:
    """``n`` rows ``{"premise", "hypothesis", "label"}``; label 0 = entailment, 1 = not entailment."""
    rows = []
    for i in range(n):
        label = i % 2
        noun, colour, size = rng.choice(WORDS), rng.choice(COLOURS), rng.choice(SIZES_WORDS)
        other = colour if label == 0 else rng.choice([c for c in COLOURS if c != colour])
        premise = f"The {noun} is {size} and {colour}."
        rows.append({"premise": premise, "hypothesis": f"The {noun} is {other}.", "label": label})
    rng.shuffle(rows)
    return rows


def squad_rows(n: int, rng: random.Random) -> list[dict]:
    """``n`` SQuAD-schema rows whose answer is one word of the context (with its character offset)."""
    rows = []
    for i in range(n):
        animal, place, food, friend = rng.choice(WORDS), rng.choice(PLACES), rng.choice(FOODS), rng.choice(WORDS)
        parts = [f"The {animal} lives in the ", place, ". It eats ", food, " every day. Its friend is a ", friend, "."]
        question, part = [
            (f"Where does the {animal} live?", 1),
            (f"What does the {animal} eat?", 3),
            (f"Who is the friend of the {animal}?", 5),
        ][i % 3]
        rows.append(
            {
                "id": f"demo-{i}",
                "title": animal.capitalize(),
                "context": "".join(parts),
                "question": question,
                "answers": {"text": [parts[part]], "answer_start": [len("".join(parts[:part]))]},
            }
        )
    return rows


GENERATORS = {"demo_sst2": sst2_rows, "demo_rte": rte_rows, "demo_squad": squad_rows}


def task_rows(name: str, split: str) -> list[dict]:
    """The rows of one demo task split (a fixed seed per task and split)."""
    seed = TASK_SEED + 10 * list(GENERATORS).index(name) + list(SIZES).index(split)
    return GENERATORS[name](SIZES[split], random.Random(seed))


def file_name(name: str, split: str) -> str:
    """``tasks/demo_sst2_train.jsonl``: the path relative to the data folder."""
    return f"{TASKS_FOLDER}/{name}_{split}.jsonl"


def to_jsonl(rows: list[dict]) -> str:
    """One compact JSON object per line, UTF-8 as is, trailing newline."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_task_files(out_dir: Path | None = None) -> list[Path]:
    """Write every demo task split under ``out_dir`` (default: the repository's ``data/``)."""
    out_dir = Path(out_dir) if out_dir is not None else default_data_dir()
    written = []
    for name in GENERATORS:
        for split in SIZES:
            path = out_dir / file_name(name, split)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(to_jsonl(task_rows(name, split)), encoding="utf-8")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m llmtune.data.demo_tasks [--out DIR]``."""
    parser = argparse.ArgumentParser(description="Regenerate the demo task files deterministically.")
    parser.add_argument("--out", type=Path, default=None, help="Folder to write into (default: the repo's data/).")
    for path in write_task_files(parser.parse_args(argv).out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
