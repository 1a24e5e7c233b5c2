"""The demo datasets: short deterministic tasks a tiny, randomly initialised model can learn.

Seven task families (reverse a word, uppercase it, add two 2-digit numbers, repeat a word,
next letter of the alphabet, sort digits, count letters) are drawn with a fixed seed and
written in the two dataset formats llmtune reads:

* ``data/demo_alpaca.json``: a JSON array of ``{"instruction", "input", "output"}`` rows;
  some put the argument in ``input``, some carry a ``history`` of earlier
  ``[prompt, response]`` turns.
* ``data/demo_sharegpt.json``: a JSON array of ``{"conversations": [...]}`` rows with
  alternating ``human``/``gpt`` turns, some multi-turn, some with a ``system`` prompt.

Both files are pretty-printed (indent 2) so a row can be cited by line number. Regenerate them
with ``python -m llmtune.data.demo``; the output is byte-for-byte the same every run.
"""

from __future__ import annotations

import argparse
import json
import random
import string
from collections.abc import Callable
from pathlib import Path

DEMO_SEED = 1234
ALPACA_ROWS = 500
SHAREGPT_ROWS = 250
ALPACA_FILE = "demo_alpaca.json"
SHAREGPT_FILE = "demo_sharegpt.json"
SYSTEM_PROMPT = "Answer with the result only."

# Short lowercase words; every task that takes a word draws from here.
WORDS = (
    "cat dog sun map cup hat pen box fox owl bee ant egg ice jam key log net oak pig "
    "rat sky toy van web yak zip arm bus car "
    "fish bird tree rock leaf moon star frog milk cake lamp ship boat door king wolf "
    "bear rain snow wind road gold "
    "apple house river green water stone light bread horse tiger lemon "
    "piano robot candy cloud plant"
).split()

# One task: rng -> (stem, argument, answer). The prompt is "stem: argument".
Task = Callable[[random.Random], tuple[str, str, str]]


def reverse_word(rng: random.Random) -> tuple[str, str, str]:
    """``Reverse the word: lamp`` -> ``pmal``."""
    word = rng.choice(WORDS)
    return "Reverse the word", word, word[::-1]


def uppercase_word(rng: random.Random) -> tuple[str, str, str]:
    """``Uppercase the word: lamp`` -> ``LAMP``."""
    word = rng.choice(WORDS)
    return "Uppercase the word", word, word.upper()


def add_numbers(rng: random.Random) -> tuple[str, str, str]:
    """``Add the numbers: 12 + 34`` -> ``46`` (both numbers have two digits)."""
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return "Add the numbers", f"{a} + {b}", str(a + b)


def repeat_word(rng: random.Random) -> tuple[str, str, str]:
    """``Repeat 3 times: cat`` -> ``cat cat cat`` (2 to 4 times)."""
    word, times = rng.choice(WORDS), rng.randint(2, 4)
    return f"Repeat {times} times", word, " ".join([word] * times)


def next_letter(rng: random.Random) -> tuple[str, str, str]:
    """``Next letter after: c`` -> ``d`` (a to y)."""
    index = rng.randrange(25)
    return "Next letter after", string.ascii_lowercase[index], string.ascii_lowercase[index + 1]


def sort_digits(rng: random.Random) -> tuple[str, str, str]:
    """``Sort the digits: 7 2 9`` -> ``2 7 9`` (3 or 4 digits)."""
    digits = [rng.randint(0, 9) for _ in range(rng.randint(3, 4))]
    return "Sort the digits", " ".join(map(str, digits)), " ".join(map(str, sorted(digits)))


def count_letters(rng: random.Random) -> tuple[str, str, str]:
    """``Count the letters: apple`` -> ``5``."""
    word = rng.choice(WORDS)
    return "Count the letters", word, str(len(word))


TASKS: tuple[Task, ...] = (
    reverse_word,
    uppercase_word,
    add_numbers,
    repeat_word,
    next_letter,
    sort_digits,
    count_letters,
)


def _exchange(rng: random.Random) -> tuple[str, str]:
    """One inline prompt and its answer from a random task."""
    stem, argument, answer = rng.choice(TASKS)(rng)
    return f"{stem}: {argument}", answer


def alpaca_rows(n: int = ALPACA_ROWS, seed: int = DEMO_SEED) -> list[dict]:
    """``n`` alpaca rows: a third put the argument in ``input``, one in ten has a ``history``."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        stem, argument, answer = rng.choice(TASKS)(rng)
        if rng.random() < 1 / 3:
            row = {"instruction": f"{stem}.", "input": argument, "output": answer}
        else:
            row = {"instruction": f"{stem}: {argument}", "input": "", "output": answer}
        if rng.random() < 0.1:
            row["history"] = [list(_exchange(rng)) for _ in range(rng.randint(1, 2))]
        rows.append(row)
    return rows


def sharegpt_rows(n: int = SHAREGPT_ROWS, seed: int = DEMO_SEED + 1) -> list[dict]:
    """``n`` sharegpt conversations of 1 to 3 turns; one in five has a ``system`` prompt."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        turns = rng.choice((1, 1, 2, 3))
        conversation = []
        for _ in range(turns):
            prompt, answer = _exchange(rng)
            conversation += [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]
        row: dict = {"conversations": conversation}
        if rng.random() < 0.2:
            row["system"] = SYSTEM_PROMPT
        rows.append(row)
    return rows


def demo_texts() -> list[str]:
    """Every prompt, input, response and system string of both demo sets, in file order."""
    texts = []
    for row in alpaca_rows():
        for prompt, response in row.get("history", []):
            texts += [prompt, response]
        texts += [row["instruction"], row["input"], row["output"]]
    for row in sharegpt_rows():
        texts += [row.get("system", "")]
        texts += [turn["value"] for turn in row["conversations"]]
    return [text for text in texts if text]


def to_json(rows: list[dict]) -> str:
    """The exact text the shipped files hold: indent 2, UTF-8 as is, trailing newline."""
    return json.dumps(rows, indent=2, ensure_ascii=False) + "\n"


def default_data_dir() -> Path:
    """The repository's ``data/`` folder (next to ``src/``)."""
    return Path(__file__).resolve().parents[3] / "data"


def write_demo_files(out_dir: Path | None = None) -> list[Path]:
    """Write both demo files into ``out_dir`` (default: the repository's ``data/``); return their paths."""
    out_dir = Path(out_dir) if out_dir is not None else default_data_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in ((ALPACA_FILE, alpaca_rows()), (SHAREGPT_FILE, sharegpt_rows())):
        path = out_dir / name
        path.write_text(to_json(rows), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m llmtune.data.demo [--out DIR]``."""
    parser = argparse.ArgumentParser(description="Regenerate the demo datasets deterministically.")
    parser.add_argument("--out", type=Path, default=None, help="Folder to write into (default: the repo's data/).")
    for path in write_demo_files(parser.parse_args(argv).out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
