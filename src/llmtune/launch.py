"""Starting several processes: ``llmtune train`` relaunches itself under torchrun, and DeepSpeed joins on CPU.

As LLaMA-Factory does, the environment chooses the layout: ``NPROC_PER_NODE`` processes on this machine,
``NNODES`` machines with this one at ``NODE_RANK``, rank 0's machine at ``MASTER_ADDR:MASTER_PORT``;
``FORCE_TORCHRUN=1`` launches even one process under torchrun. A config with ``deepspeed`` always runs
under torchrun (DeepSpeed needs the process-group variables torchrun sets, even for one process).
llmtune never writes its own distribution: the workers are ``python -m llmtune train`` with the same
arguments (passed as a list, never through a shell), joined by torchrun.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

from llmtune.errors import ConfigError
from llmtune.hparams.truth import is_true

logger = logging.getLogger("llmtune")


@dataclass(frozen=True)
class LaunchPlan:
    """How many processes, on how many machines, and where they meet."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


def is_main_process() -> bool:
    """Rank 0 of a torchrun/DeepSpeed job (or a single process): the one that owns output_dir and speaks."""
    return os.environ.get("RANK", "0") == "0"


def is_torchrun_worker(env: Mapping[str, str]) -> bool:
    """Whether this process was started by torchrun (or accelerate/deepspeed launch)."""
    return "LOCAL_RANK" in env and "WORLD_SIZE" in env


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(f"{name}={raw!r}: must be an integer >= {minimum}")
    return value


def launch_plan(env: Mapping[str, str], *, force: bool = False) -> LaunchPlan | None:
    """The torchrun layout the environment asks for, or None when this process trains by itself.

    ``force``: launch under torchrun even for one process (a ``deepspeed`` config).
    """
    if is_torchrun_worker(env):
        return None
    nproc = _env_int(env, "NPROC_PER_NODE", 1, 1)
    nnodes = _env_int(env, "NNODES", 1, 1)
    force = force or is_true(env.get("FORCE_TORCHRUN", ""))
    if nproc == 1 and nnodes == 1 and not force:
        return None
    node_rank = _env_int(env, "NODE_RANK", 0, 0)
    master_addr = env.get("MASTER_ADDR") or None
    master_port = _env_int(env, "MASTER_PORT", 0, 1) or None
    if nnodes > 1:
        if node_rank >= nnodes:
            raise ConfigError(f"NODE_RANK={node_rank}: must be below NNODES={nnodes} (0 .. {nnodes - 1})")
        if master_addr is None or master_port is None:
            raise ConfigError(
                f"NNODES={nnodes}: set MASTER_ADDR and MASTER_PORT to rank 0's machine and a free port on it "
                "(the same on every node), and NODE_RANK to this node's number"
            )
    return LaunchPlan(nproc, nnodes, node_rank, master_addr, master_port)


def torchrun_command(plan: LaunchPlan, argv: list[str]) -> list[str]:
    """``python -m torch.distributed.run ... -m llmtune <argv>`` for ``plan`` (argv passed through as a list)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(plan.nproc_per_node)]
    if plan.nnodes == 1 and plan.master_port is None:
        command.append("--standalone")  # a free rendezvous port on this machine: no clash on 29500
    else:
        command += ["--nnodes", str(plan.nnodes), "--node_rank", str(plan.node_rank)]
        command += ["--master_addr", plan.master_addr or "127.0.0.1", "--master_port", str(plan.master_port)]
    return [*command, "-m", "llmtune", *argv]


def relaunch(plan: LaunchPlan, argv: list[str]) -> int:
    """Run ``llmtune <argv>`` under torchrun with ``plan`` and return its exit status."""
    command = torchrun_command(plan, argv)
    where = f" as node {plan.node_rank} of {plan.nnodes}" if plan.nnodes > 1 else ""
    count = f"{plan.nproc_per_node} process{'es' if plan.nproc_per_node > 1 else ''}"
    logger.info("launching %s%s: %s", count, where, " ".join(command))
    env = {**os.environ, "FORCE_TORCHRUN": "0"}
    process = subprocess.Popen(command, env=env)  # noqa: S603 - a list, no shell
    # A scheduler's SIGTERM reaches this process only: hand it to torchrun, which passes it to the workers
    # (they finish the step, save and exit). Ctrl-C reaches the whole process group, torchrun included.
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: process.send_signal(signum))
    try:
        return process.wait()
    except KeyboardInterrupt:
        return process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


# A build of DeepSpeed's shared-memory op takes under a minute here (37 s on a busy 2-core machine).
STALE_BUILD_LOCK_S = 600


def check_deepspeed_build_lock(env: Mapping[str, str] = os.environ) -> None:
    """Refuse a stale lock on DeepSpeed's CPU communication op, which DeepSpeed would wait on forever.

    Every DeepSpeed process on a CPU builds (or finds built) its shared-memory op through torch's
    extension loader, which holds ``<TORCH_EXTENSIONS_DIR>/deepspeed_shm_comm/lock`` while it builds. A
    run killed in those seconds leaves the file behind, and every later run then waits on it silently,
    without end (seen here: CI hung until its time ran out).
    """
    from torch.utils.cpp_extension import get_default_build_root

    root = env.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    lock = os.path.join(root, "deepspeed_shm_comm", "lock")
    try:
        age = time.time() - os.path.getmtime(lock)
    except OSError:
        return  # no lock: nothing is building
    if age > STALE_BUILD_LOCK_S:
        raise ConfigError(
            f"DeepSpeed's build lock {lock} is {age / 60:.0f} min old: an interrupted DeepSpeed run left it, and "
            f"DeepSpeed would wait on it forever; if no other DeepSpeed run is building, remove it (rm {lock})"
        )


def join_cpu_deepspeed_group() -> None:
    """Make accelerate run this torchrun worker as a DeepSpeed rank on a machine without an accelerator.

    Without it, llmtune's CPU default (``use_cpu``) makes accelerate choose plain multi-CPU DDP and
    skip DeepSpeed's process group, while transformers without ``use_cpu`` finds no backend and
    counts one process: DeepSpeed then refuses the batch size. Joining with gloo first, and telling
    TrainingArguments to use this state (``accelerator_config: use_configured_state``), gives DeepSpeed
    on CPU its real world size.
    """
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)  # a previous run in this process chose otherwise
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
