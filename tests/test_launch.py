"""``llmtune train`` relaunches itself under torchrun from NPROC_PER_NODE / NNODES / FORCE_TORCHRUN.

The real launch (two simulated nodes) runs in ``tests/train/test_distributed.py``; here the plan and the
command line, and that ``llmtune train`` hands exactly its arguments to torchrun after validating them.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from llmtune import launch
from llmtune.cli import main
from llmtune.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY_LORA = ROOT / "examples" / "train_lora" / "tiny_lora_sft.yaml"


def test_one_process_trains_in_process_and_a_torchrun_worker_never_relaunches():
    assert launch.launch_plan({}) is None
    assert launch.launch_plan({"NPROC_PER_NODE": "1", "NNODES": "1"}) is None
    worker = {"LOCAL_RANK": "0", "WORLD_SIZE": "2", "NPROC_PER_NODE": "2", "FORCE_TORCHRUN": "1"}
    assert launch.launch_plan(worker, force=True) is None


def test_the_environment_chooses_the_layout():
    assert launch.launch_plan({"NPROC_PER_NODE": "4"}) == launch.LaunchPlan(4)
    assert launch.launch_plan({"FORCE_TORCHRUN": "1"}) == launch.LaunchPlan(1)
    assert launch.launch_plan({}, force=True) == launch.LaunchPlan(1)
    env = {"NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "8", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29501"}
    plan = launch.launch_plan(env)
    assert plan == launch.LaunchPlan(8, 2, 1, "10.0.0.1", 29501) and plan.world_size == 16


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NPROC_PER_NODE": "two"}, "NPROC_PER_NODE='two': must be an integer >= 1"),
        ({"NPROC_PER_NODE": "0"}, "NPROC_PER_NODE='0': must be an integer >= 1"),
        ({"NNODES": "2", "NODE_RANK": "0"}, "NNODES=2: set MASTER_ADDR and MASTER_PORT"),
        (
            {"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
            "NODE_RANK=2: must be below NNODES=2",
        ),
    ],
)
def test_a_bad_layout_is_one_line(env, message):
    with pytest.raises(ConfigError) as info:
        launch.launch_plan(env)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_torchrun_command_passes_argv_as_a_list():
    argv = ["train", "my config.yaml", "--output_dir", "out; rm -rf /", "--learning_rate=1e-4"]
    single = launch.torchrun_command(launch.LaunchPlan(2), argv)
    assert single == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "llmtune",
        *argv,
    ]
    multi = launch.torchrun_command(launch.LaunchPlan(8, 2, 1, "10.0.0.1", 29501), argv)
    assert multi[3:13] == [
        "--nproc_per_node",
        "8",
        "--nnodes",
        "2",
        "--node_rank",
        "1",
        "--master_addr",
        "10.0.0.1",
        "--master_port",
        "29501",
    ]
    assert multi[-len(argv) :] == argv


class _Recorder:
    """Stands in for the torchrun process: records the command and the signals it is sent, exits with 3."""

    commands: list[list[str]] = []
    signals: list[int] = []

    def __init__(self, command, env):
        self.commands.append(command)
        self.env = env

    def send_signal(self, signum):
        self.signals.append(signum)

    def wait(self):
        return 3


def test_sigterm_to_the_launcher_is_handed_to_torchrun(monkeypatch):
    class Terminated(_Recorder):
        def wait(self):
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler stops the job while torchrun runs
            return 143

    Terminated.signals = []
    monkeypatch.setattr(launch.subprocess, "Popen", Terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert launch.relaunch(launch.LaunchPlan(2), ["train", "x.yaml"]) == 143
    assert Terminated.signals == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) == before  # the launcher's own handling is back


def test_train_validates_then_relaunches_with_its_arguments(monkeypatch, tmp_path):
    _Recorder.commands = []
    monkeypatch.setattr(launch.subprocess, "Popen", _Recorder)
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    tokens = [str(TINY_LORA), "--output_dir", str(tmp_path / "out"), "--max_steps", "2"]
    assert main(["train", *tokens]) == 3  # torchrun's exit status is llmtune's
    assert len(_Recorder.commands) == 1 and _Recorder.commands[0][-len(tokens) - 1 :] == ["train", *tokens]
    assert not (tmp_path / "out").exists()  # the parent only validated; the workers train

    # A combination refused before anything loads never starts torchrun (sparse keeps fp16 from seeing its gradients).
    assert main(["train", *tokens, "--finetuning_type", "sparse", "--fp16", "true"]) == 2
    assert len(_Recorder.commands) == 1


def test_a_stale_deepspeed_build_lock_is_refused_before_torchrun_starts(monkeypatch, tmp_path, capsys):
    # A run killed while DeepSpeed built its CPU op leaves the lock, and every later DeepSpeed run waited on it
    # forever: CI hung until its time ran out. llmtune names the file instead; a lock being built now is left alone.
    _Recorder.commands = []
    monkeypatch.setattr(launch.subprocess, "Popen", _Recorder)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    lock = tmp_path / "ext" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    ds = str(ROOT / "examples" / "deepspeed" / "ds_z2_config.json")
    tokens = [str(TINY_LORA), "--output_dir", str(tmp_path / "out"), "--deepspeed", ds, "--finetuning_type", "full"]
    assert main(["train", *tokens]) == 3  # a lock a minute old: another run is building
    assert len(_Recorder.commands) == 1

    old = lock.stat().st_mtime - launch.STALE_BUILD_LOCK_S - 60
    os.utime(lock, (old, old))
    capsys.readouterr()
    assert main(["train", *tokens]) == 2
    assert len(_Recorder.commands) == 1  # torchrun never started
    err = capsys.readouterr().err
    assert f"rm {lock}" in err and "min old" in err and len(err.strip().splitlines()) == 1
