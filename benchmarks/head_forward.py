"""The zeroth-order types' loss forward with the LM head only where read, against every position's logits.

    python -m benchmarks.head_forward [--repeats 5] [--model smollm2] [--out docs/benchmarks/head/forward.jsonl]

The ``head`` suite times whole steps (3 per run, 2 pairs): too few to see a few per cent. This times
the forward a zeroth-order step runs twice, :func:`llmtune.methods.zo.objectives.language_model_loss`
on the head suite's first batch of SmolLM2 (batch 4 x 256 of ``alpaca_en_demo``), for each type's
prepared model, the two sides in turn ``repeats`` times. One line per type and repeat goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

TYPES = ("zo", "zo_lora", "adazeta")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="smollm2", help="a benchmark model name (benchmarks/configs.py)")
    parser.add_argument("--out", default="docs/benchmarks/head/forward.jsonl")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import torch
    from transformers import DataCollatorForSeq2Seq

    import llmtune.methods.zo.objectives as objectives
    import llmtune.model.head as head
    from benchmarks import run as bench_run
    from benchmarks.configs import SUITES
    from llmtune.arguments import parse_args
    from llmtune.data import get_dataset
    from llmtune.methods import METHODS
    from llmtune.model import load_model, load_tokenizer

    suite = SUITES["head"]
    model_path = bench_run.model_path(args.model)
    dataset = bench_run.data_source(suite["dataset"], None)
    restricted = head.output_head
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    session = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name in TYPES:
        config = bench_run.job_config(name, model_path, 256, suite, dataset, Path("/tmp/llmtune-head-forward") / name)
        run = parse_args(config)
        tokenizer = load_tokenizer(run.model)
        model = METHODS[config["finetuning_type"]].prepare_model(load_model(run.model), run).eval()
        rows = get_dataset(run.data, tokenizer, seed=0).train
        collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        batch = collate([{k: rows[i][k] for k in ("input_ids", "labels")} for i in range(suite["batch"])])
        read = int((batch["labels"][:, 1:] != -100).sum())
        for repeat in range(args.repeats):
            seconds = {}
            for side in ("read", "all"):  # every position's logits: no output embedding found
                head.output_head = objectives.output_head = restricted if side == "read" else (lambda _: None)
                start = time.perf_counter()
                with torch.no_grad():
                    objectives.language_model_loss(model, dict(batch))
                seconds[side] = time.perf_counter() - start
            head.output_head = objectives.output_head = restricted
            record = {
                "config": name, "repeat": repeat, "session": session, "batch": list(batch["input_ids"].shape),
                "positions_read": read, "seconds_read": seconds["read"], "seconds_all": seconds["all"],
                "ratio": seconds["read"] / seconds["all"], "load_average": round(os.getloadavg()[0], 2),
            }  # fmt: skip
            with out.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            print(name, repeat, round(record["ratio"], 3), flush=True)


if __name__ == "__main__":
    main()
