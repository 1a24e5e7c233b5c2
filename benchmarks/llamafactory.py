"""LLaMA-Factory as a baseline: its own virtual environment, the equivalent YAML, the same measuring callback.

LLaMA-Factory pins its own versions of transformers, TRL and PEFT, so it gets a virtual environment of
its own under ``CACHE/lf-venv``: ``torch==2.13.0`` first (the torch llmtune is measured
with), then ``llamafactory`` with torch held at that version (otherwise pip replaces it with a CUDA
build of a newer torch); on a machine without CUDA, see :func:`_cpu_fixups`. A run writes the YAML a user would give ``llamafactory-cli train`` and
runs it through ``llamafactory.train.tuner.run_exp`` (what that command calls) with the
:class:`benchmarks.measure.Measure` callback added, in a fresh process of that environment:

    python -m benchmarks.llamafactory JOB.json RESULT.json     # with the venv's python
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

TORCH_PIN = "torch==2.13.0"


def venv_python(cache: Path) -> Path:
    return cache / "lf-venv" / "bin" / "python"


def ensure_venv(cache: Path, log=print) -> Path:
    """Create the environment once (minutes); return its python. Raises ``RuntimeError`` saying why not."""
    python = venv_python(cache)
    marker = cache / "lf-venv" / "llmtune-installed.txt"
    if marker.is_file():
        return python
    cache.mkdir(parents=True, exist_ok=True)
    constraints = cache / "llamafactory-constraints.txt"
    constraints.write_text(TORCH_PIN + "\n")
    steps = [
        [sys.executable, "-m", "venv", str(python.parent.parent)],
        [str(python), "-m", "pip", "install", "-q", TORCH_PIN],
        [str(python), "-m", "pip", "install", "-q", "-c", str(constraints), "llamafactory", "badam==1.4"],
    ]
    start = time.time()
    for cmd in steps:
        log(f"llamafactory venv: {' '.join(cmd[2:])}")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"'{' '.join(cmd[2:])}' failed: {' | '.join(tail)}")
    _cpu_fixups(python)
    version = subprocess.run(
        [str(python), "-c", "import llamafactory, torch; print(llamafactory.__version__, torch.__version__)"],
        capture_output=True,
        text=True,
    )
    if version.returncode != 0:
        raise RuntimeError(f"llamafactory does not import: {version.stderr.strip().splitlines()[-1:]}")
    marker.write_text(f"{version.stdout.strip()}\ninstalled in {time.time() - start:.0f} s\n")
    return python


def _cpu_fixups(python: Path) -> None:
    """Make the CUDA-built torchvision/torchaudio wheels pip chose importable next to a CPU torch.

    PyPI has no CPU build of them: torchvision's compiled ops fail to register against CPU torch
    (``operator torchvision::nms does not exist``) and transformers then cannot import
    ``PreTrainedModel``, so torchvision is removed; LLaMA-Factory imports torchaudio unconditionally,
    so it stays but without its compiled libraries (it then imports as pure Python). Text SFT uses neither.
    """
    import torch

    if torch.cuda.is_available():
        return
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "torchvision"], capture_output=True)
    for library in python.parent.parent.glob("lib/python*/site-packages/torchaudio/lib/*.so"):
        library.unlink()


def lf_yaml(job: dict) -> dict:
    """LLaMA-Factory's keys for the job's llmtune config (llmtune uses LLaMA-Factory's names)."""
    c = job["config"]
    out = {
        "model_name_or_path": job["model_path"],
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full" if c["finetuning_type"] == "block" else c["finetuning_type"],
        "dataset": c["dataset"],
        "dataset_dir": c["dataset_dir"],
        "template": c["template"],
        "cutoff_len": c["cutoff_len"],
        "max_samples": c["max_samples"],
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "output_dir": c["output_dir"],
        "overwrite_output_dir": True,
        "save_strategy": "no",
        "logging_steps": 1,
        "per_device_train_batch_size": c["per_device_train_batch_size"],
        "gradient_accumulation_steps": 1,
        "learning_rate": c["learning_rate"],
        "max_steps": c["max_steps"],
        "lr_scheduler_type": c["lr_scheduler_type"],
        "seed": c["seed"],
        "bf16": c.get("bf16", False),
        "report_to": "none",
        "include_num_input_tokens_seen": True,
        "disable_tqdm": True,
        # LLaMA-Factory turns gradient checkpointing on unless told not to; the benchmarks run it off
        "disable_gradient_checkpointing": not c["gradient_checkpointing"],
    }
    if c["finetuning_type"] == "lora":
        out.update({"lora_rank": c["lora_rank"], "lora_alpha": c["lora_alpha"], "lora_target": c["lora_target"]})
    if c["finetuning_type"] == "block":
        out.update(
            {
                "use_badam": True,
                "badam_mode": "layer",
                "badam_switch_mode": c["badam_switch_mode"],
                "badam_switch_interval": c["badam_switch_interval"],
                "badam_verbose": 0,
            }
        )
    return out


def run_job(job: dict, job_path: Path, result_path: Path, cache: Path, timeout: float) -> dict:
    """Install (once) and run one LLaMA-Factory configuration in a fresh process; return its result."""
    import yaml

    python = ensure_venv(cache)
    config = lf_yaml(job)
    yaml_path = job_path.with_suffix(".llamafactory.yaml")
    yaml_path.write_text(yaml.safe_dump(config, sort_keys=False))
    job = {**job, "lf_yaml": str(yaml_path)}
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "DISABLE_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        [str(python), "-m", "benchmarks.llamafactory", str(job_path), str(result_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if done.returncode != 0:
        tail = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()][-3:]
        raise RuntimeError("llamafactory failed: " + " | ".join(tail))
    return json.loads(result_path.read_text())


def main(job_path: str, result_path: str) -> None:
    """In LLaMA-Factory's environment: run the job's YAML with the measuring callback."""
    import yaml
    from llamafactory.train.tuner import run_exp

    from benchmarks.measure import Measure, Memory, write_result

    memory = Memory()  # after the imports, before any model loads (as in child.py)
    job = json.loads(Path(job_path).read_text())
    measure = Measure(job["warmup"], memory)
    run_exp(yaml.safe_load(Path(job["lf_yaml"]).read_text()), callbacks=[measure])
    result = measure.result()
    import llamafactory

    result["llamafactory"] = llamafactory.__version__
    write_result(result_path, result)


if __name__ == "__main__":
    main(*sys.argv[1:3])
