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


def read(path: Path = RESULTS) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tables(rows: list[dict]) -> dict[str, str]:
    """The markdown tables of ``docs/kernel.md`` from the results (a test checks the page holds them)."""
    import statistics

    plain = [r for r in rows if set(r) & {"kernel_c", "kernel_ridge", "kernel_params", "seed", "compare"} == set()]
    acc = {(r["kernel_formula"], r["kernel_solver"]): r["test_accuracy"] for r in plain}
    out = {
        "solvers": "\n".join(
            ["| formula | lstsq | logistic (C=1000) | svr (C=1000) |", "|---|---|---|---|"]
            + [f"| `{f}` | " + " | ".join(f"{acc[f, s]:.4f}" for s in SOLVERS) + " |" for f in FORMULAS]
        )
    }
    swept = {(r["kernel_solver"], r["kernel_c"]): r for r in rows if "kernel_c" in r}
    out["c"] = "\n".join(
        ["| C | " + " | ".join(str(c) for c in C_VALUES) + " |", "|---|" + "---|" * len(C_VALUES)]
        + [
            f"| {s} | "
            + " | ".join(f"{swept[s, c]['test_accuracy']:.4f} ({swept[s, c]['train_accuracy']:.2f})" for c in C_VALUES)
            + " |"
            for s in ("logistic", "svr")
        ]
    )
    ridge = {r["kernel_ridge"]: r["test_accuracy"] for r in rows if "kernel_ridge" in r}
    ridge[0.0] = acc["sgd", "lstsq"]
    out["ridge"] = " / ".join(f"{ridge[r]:.4f}" for r in RIDGES) + " for λ = " + " / ".join(f"{r:g}" for r in RIDGES)
    params = {r["kernel_params"]: r["test_accuracy"] for r in rows if "kernel_params" in r}
    out["params"] = f"`no_embeddings` {params['no_embeddings']:.4f}; `lora` {params['lora']:.4f}"
    lines = ["| `kernel_subtract_init` | test accuracy | dev accuracy |", "|---|---|---|"]
    for subtract in (True, False):
        runs = [r for r in rows if r.get("kernel_subtract_init") is subtract]
        test = [r["test_accuracy"] for r in runs]
        dev = [r["dev_accuracy"] for r in runs]
        lines.append(
            f"| {str(subtract).lower()} | {statistics.fmean(test):.4f} ± {statistics.pstdev(test):.4f} | "
            f"{statistics.fmean(dev):.4f} ± {statistics.pstdev(dev):.4f} |"
        )
    out["subtract"] = "\n".join(lines)
    compare = next(r["compare"] for r in rows if "compare" in r)
    out["compare"] = "\n".join(
        [
            "| demo_sst2, 16-shot, seed 42 | accuracy (128 eval examples) |",
            "|---|---|",
            f"| kernel (sgd, lstsq) | {compare['kernel']:.4f} |",
            *[f"| {m} fine-tuning | {v:.4f} |" for m, v in compare.items() if m != "kernel"],
        ]
    )
    return out


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
