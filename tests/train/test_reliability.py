"""Nothing finished is lost: NaN stops, failed saves, out-of-memory, signals, secrets, partial checkpoints."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from llmtune.arguments import parse_args
from llmtune.errors import CheckpointError, NumericalError
from llmtune.train import checkpoint as ckpt
from llmtune.train.callbacks import GracefulStop
from llmtune.train.memory import OutOfMemory
from llmtune.train.run import run_sft

ROOT = Path(__file__).resolve().parents[2]


class PoisonAtStep(TrainerCallback):
    """Make the model produce a NaN loss from step ``step`` on, as a diverging run would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step - 1:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "embed_tokens" in n).fill_(float("nan"))


def test_nan_loss_stops_the_run_and_names_the_last_good_checkpoint(tmp_path, make_config):
    config = make_config(tmp_path / "out", "full", save_steps=4)
    with pytest.raises(
        NumericalError, match=r"the loss became nan at step 6; .*last good checkpoint is .*checkpoint-4"
    ):
        run_sft(parse_args(config), callbacks=[PoisonAtStep(6)])
    steps = [c.step for c in ckpt.list_checkpoints(tmp_path / "out") if c.complete]
    assert steps == [4]  # nothing saved from the NaN step on
    assert not (tmp_path / "out" / "model.safetensors").exists()  # no "final" model from a broken run


def test_a_save_that_fails_with_enospc_keeps_the_previous_checkpoint(tmp_path, make_config, monkeypatch):
    real_save = torch.save

    def disk_full_at_step_8(obj, f, *args, **kwargs):
        if "checkpoint-8" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_8)
    out = tmp_path / "out"
    with pytest.raises(
        CheckpointError,
        match=r"could not save .*checkpoint-8: No space left on device \(errno 28\); "
        r"the previous checkpoint .*checkpoint-4 is intact",
    ):
        run_sft(parse_args(make_config(out, "lora", save_steps=4)))
    monkeypatch.setattr(torch, "save", real_save)
    assert [(c.step, c.complete) for c in ckpt.list_checkpoints(out)] == [(4, True)]
    assert not any(ckpt.staging_root(out).glob("checkpoint-*"))  # the half-written one is gone
    resumed = run_sft(parse_args(make_config(out, "lora", save_steps=4, resume_from_checkpoint=True)))
    assert resumed.metrics["train_loss"] > 0


def test_a_truncated_checkpoint_is_skipped_on_resume(tmp_path, make_config, caplog):
    out = tmp_path / "out"
    run_sft(parse_args(make_config(out, "lora", max_steps=8, save_steps=4)))
    with (out / "checkpoint-8" / "adapter_model.safetensors").open("r+b") as handle:
        handle.truncate(100)  # as if the machine died while writing it
    with caplog.at_level("WARNING", logger="llmtune"):
        result = run_sft(parse_args(make_config(out, "lora", max_steps=12, save_steps=4, resume_from_checkpoint=True)))
    assert "skipping" in caplog.text and "checkpoint-8" in caplog.text and "incomplete" in caplog.text
    steps = [e["step"] for e in result.log_history if "loss" in e]
    assert steps[0] == 1 and steps[-1] == 12  # history of checkpoint-4, then steps 5..12 trained again
    assert ckpt.is_complete(out / "checkpoint-8")  # step 8 was saved again, whole


def test_out_of_memory_names_the_estimate_and_the_remedies(tmp_path, make_config, monkeypatch):
    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("llmtune.train.trainer.LlmtuneTrainer.train", oom)
    with pytest.raises(OutOfMemory) as info:
        run_sft(parse_args(make_config(tmp_path / "out", "full")))
    message = str(info.value)
    assert "Tried to allocate 2.00 GiB" in message and "needs at least" in message
    for remedy in ("block", "zo", "QLoRA", "cutoff_len", "gradient_checkpointing"):
        assert remedy in message
    assert "\n" not in message


def test_a_second_signal_exits_at_once(monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    stop = GracefulStop()
    stop._handle(signal.SIGTERM, None)
    assert stop.signum == signal.SIGTERM and exits == []
    stop._handle(signal.SIGTERM, None)
    assert exits == [128 + signal.SIGTERM]


def test_secrets_never_reach_output_dir(tmp_path, make_config):
    secret = "hf_SECRETtokenVALUE1234567890"
    out = tmp_path / "out"
    run_sft(parse_args(make_config(out, "lora", max_steps=4, save_steps=2, hub_token=secret)))
    leaked = [p for p in out.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []


# Per-method flags for the subprocess runs: BAdam switches blocks every 7 steps, so the run crosses many
# switches and the resumed run must continue the same block schedule (the SIGTERM most often lands mid-block);
# zo needs its own (small) learning rate.
METHOD_FLAGS = {"block": ("--badam_switch_interval", "7"), "zo": ("--learning_rate", "2e-4")}


def _run_cli(out: Path, finetuning_type: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    lr = "1e-2" if finetuning_type == "lora" else "3e-3"
    cmd = [
        sys.executable,
        "-m",
        "llmtune",
        "train",
        "--model_name_or_path",
        "llmtune/tiny-llama",
        "--finetuning_type",
        finetuning_type,
        "--dataset",
        "demo_alpaca",
        "--template",
        "default",
        "--cutoff_len",
        "64",
        "--max_samples",
        "160",
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        lr,
        "--lr_scheduler_type",
        "cosine",
        "--max_steps",
        "150",
        "--save_steps",
        "1000",
        "--logging_steps",
        "1",
        "--seed",
        "0",
        "--disable_tqdm",
        "true",
        "--output_dir",
        str(out),
        *METHOD_FLAGS.get(finetuning_type, ()),
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged_losses(out: Path) -> dict[int, float]:
    lines = (out / "trainer_log.jsonl").read_text().splitlines()
    return {r["current_steps"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


@pytest.mark.slow
@pytest.mark.parametrize("finetuning_type", ["full", "lora", "block", "zo"])
def test_sigterm_mid_run_saves_and_resuming_reaches_the_same_loss(tmp_path, finetuning_type):
    straight = _run_cli(tmp_path / "straight", finetuning_type)
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-2000:]

    out = tmp_path / "killed"
    proc = _run_cli(out, finetuning_type)
    deadline = time.time() + 300
    while time.time() < deadline and len(_logged_losses(out) if (out / "trainer_log.jsonl").exists() else {}) < 20:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "Resume with: llmtune train" in stderr
    saved = ckpt.latest_complete_checkpoint(out)
    assert saved is not None and 20 <= int(saved.name.split("-")[1]) < 150

    resumed = _run_cli(out, finetuning_type, "--resume_from_checkpoint", "true")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    first, second = _logged_losses(tmp_path / "straight"), _logged_losses(out)
    assert second[150] == pytest.approx(first[150], abs=1e-5)
