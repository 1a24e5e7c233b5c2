"""``zo_cache_directions`` against drawing ``z`` for each forward and the update, on SmolLM2 on this CPU:

    python -m benchmarks.zo_cache [--pairs 3] [--steps 4]

One ZO-SGD step (``estimate`` then ``step``) of ``zo_target: full`` on SmolLM2-135M in float32, batch 4 x
64 tokens (about a fidelity-suite tweet batch), timed with and without the cache in interleaved pairs
(off, on, off, on, ...), each run on a freshly loaded model. Appends one line per run to
``docs/benchmarks/zo_cache/results.jsonl`` with the machine's load before and after; the ratio is the
median over pairs of cached / uncached mean step time. The weights of the two runs of a pair are
compared too: the cache changes nothing but the time (and holds one copy of the trainable weights).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "benchmarks" / "zo_cache" / "results.jsonl"


def one_run(cache: bool, steps: int) -> dict:
    import torch

    from llmtune.arguments import parse_args
    from llmtune.methods.zo.optimizer import ZerothOrderSGD
    from llmtune.model import load_model

    args = parse_args({"model_name_or_path": "llmtune/smollm2-135m", "dataset": "demo_alpaca", "output_dir": "unused"})
    model = load_model(args.model).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40_000, (4, 64), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    optimizer = ZerothOrderSGD(model.parameters(), lr=1e-6, eps=1e-3, seed=0, cache_directions=cache)
    load = os.getloadavg()[0]
    optimizer.estimate(model, lambda: model(**batch).loss)  # warm-up step, not timed
    optimizer.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.estimate(model, lambda: model(**batch).loss)
        optimizer.step()
        times.append(time.perf_counter() - start)
    digest = float(sum(p.detach().double().sum() for p in model.parameters()))
    cache_bytes = sum(p.numel() * p.element_size() for p in optimizer.params) if cache else 0
    return {
        "cache_directions": cache,
        "steps": steps,
        "step_seconds": [round(t, 4) for t in times],
        "mean_step_seconds": round(statistics.mean(times), 4),
        "weights_sum": digest,
        "cache_bytes": cache_bytes,
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    options = parser.parse_args(argv)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    ratios = []
    for pair in range(options.pairs):
        records = {}
        for cache in (False, True):
            records[cache] = {"pair": pair, **one_run(cache, options.steps), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            with RESULTS.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(records[cache]) + "\n")
        ratios.append(records[True]["mean_step_seconds"] / records[False]["mean_step_seconds"])
        same = records[True]["weights_sum"] == records[False]["weights_sum"]
        print(f"pair {pair}: cached/uncached {ratios[-1]:.3f}, same weights: {same}", flush=True)
    print(f"median cached/uncached step time over {len(ratios)} pairs: {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
