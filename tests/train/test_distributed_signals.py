"""Under torchrun, a signal to one rank stops every rank after the same step, with one checkpoint."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from llmtune.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_sigterm_to_one_rank_stops_all_ranks_at_the_same_step(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        shutil.which("torchrun"),
        "--standalone",  # a free rendezvous port: no clash with another job on 29500
        "--nproc_per_node",
        "2",
        "-m",
        "llmtune",
        "train",
        "--model_name_or_path",
        "llmtune/tiny-llama",
        "--finetuning_type",
        "lora",
        "--dataset",
        "demo_alpaca",
        "--dataset_dir",
        str(ROOT / "data"),
        "--cutoff_len",
        "64",
        "--max_samples",
        "160",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "1e-2",
        "--max_steps",
        "400",
        "--save_steps",
        "1000",
        "--logging_steps",
        "1",
        "--disable_tqdm",
        "true",
        "--output_dir",
        str(out),
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = out / "trainer_log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 10):
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children(recursive=True)
    rank1 = [w for w in workers if "LOCAL_RANK" in w.environ() and w.environ()["LOCAL_RANK"] == "1"]
    assert len(rank1) == 1, [w.cmdline() for w in workers]
    rank1[0].send_signal(signal.SIGTERM)  # only rank 1 is told
    output, _ = proc.communicate(timeout=300)

    stops = re.findall(r"stopped by SIGTERM after step (\d+)", output)
    assert len(stops) == 2 and stops[0] == stops[1], output[-3000:]
    saved = ckpt.latest_complete_checkpoint(out)
    assert saved is not None and saved.name == f"checkpoint-{stops[0]}"
    assert int(stops[0]) < 400
