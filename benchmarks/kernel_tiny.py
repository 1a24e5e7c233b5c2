"""The tiny-model tables of ``docs/kernel.md``, written to ``docs/kernel/tiny_results.jsonl``:

    OMP_NUM_THREADS=1 python -m benchmarks.kernel_tiny

``examples/kernel/tiny_sst2.yaml`` (the embedded tiny Llama, ``demo_sst2``, 16 examples per class,
seed 42, the 128 eval examples) for every formula x solver, the ``kernel_c`` sweep of logistic and
svr, the ``kernel_ridge`` sweep of lstsq, the other parameter sets, and the kernel beside full and zo
fine-tuning of the same split (``examples/kernel/tiny_sst2_compare.yaml``). The kernels are cached after
the first run of each formula and parameter set, so the sweeps only re-solve. One line a run: the
settings, the test (the 128 eval examples), dev and training accuracies, the seconds and the machine's load. Accuracies
are deterministic on one machine; the seconds are not (they carry the load average beside them).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "kernel" / "tiny_results.jsonl"
EXAMPLE = REPO / "examples" / "kernel" / "tiny_sst2.yaml"
COMPARE = REPO / "examples" / "kernel" / "tiny_sst2_compare.yaml"
FORMULAS = ("sgd", "signgd", "asymmetric_signgd")
SOLVERS = ("lstsq", "logistic", "svr")
C_VALUES = (1, 10, 100, 1000, 10000)
RIDGES = (0.0, 1e-3, 1e-2, 1e-1)


def settings() -> list[dict]:
    """Every run of the tables, as overrides of the example config."""
    runs = [{"kernel_formula": f, "kernel_solver": s} for f in FORMULAS for s in SOLVERS]
    runs += [
        {"kernel_formula": "sgd", "kernel_solver": s, "kernel_c": c} for s in ("logistic", "svr") for c in C_VALUES
    ]
    runs += [{"kernel_formula": "sgd", "kernel_solver": "lstsq", "kernel_ridge": r} for r in RIDGES if r]
    runs += [{"kernel_formula": "sgd", "kernel_solver": "lstsq", "kernel_params": p} for p in ("no_embeddings", "lora")]
    # the initial output subtracted or not (LM-Kernel-FT's adjust_for_init), over the papers' five seeds
    runs += [
        {"kernel_formula": "sgd", "kernel_solver": "lstsq", "seed": seed, "kernel_subtract_init": subtract}
        for seed in (13, 21, 42, 87, 100)
        for subtract in (True, False)
    ]
    return runs


def main() -> int:
    from llmtune.kernel.run import run_kernel_config

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    base = yaml.safe_load(EXAMPLE.read_text())
    cache = tempfile.mkdtemp(prefix="kernel-tiny-")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("w", encoding="utf-8") as handle:
        for overrides in settings():
            config = {**base, **overrides, "output_dir": cache, "kernel_cache_dir": cache}
            load = round(os.getloadavg()[0], 2)
            start = time.perf_counter()
            result = run_kernel_config(config, say=lambda line: None)
            seed = result["per_seed"][0]
            record = {
                **overrides,
                "test_accuracy": seed["test"]["accuracy"],
                "dev_accuracy": seed["dev"]["accuracy"],
                "train_accuracy": seed["train_accuracy"],
                "seconds": round(time.perf_counter() - start, 1),
                "load_average": [load, round(os.getloadavg()[0], 2)],
                "threads": os.environ.get("OMP_NUM_THREADS"),
            }
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            print(json.dumps(record), file=sys.stderr, flush=True)
        # the kernel beside full (Adam) and zo (MeZO) fine-tuning of the same split, scored on the same examples
        compare = yaml.safe_load(COMPARE.read_text())
        config = {**compare, "output_dir": cache, "kernel_cache_dir": cache}
        config["compare_config"] = str(REPO / compare["compare_config"])
        rows = run_kernel_config(config, say=lambda line: None)["compare"]
        record = {"compare": rows, "load_average": round(os.getloadavg()[0], 2)}
        handle.write(json.dumps(record) + "\n")
        print(json.dumps(record), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
