"""Trainer callbacks: the JSON-lines log every tool reads, and a graceful stop on SIGINT/SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

logger = logging.getLogger("llmtune")

LOG_FILE = "trainer_log.jsonl"


class JsonlLogCallback(TrainerCallback):
    """Append every logged metric to ``output_dir/trainer_log.jsonl`` (LLaMA-Factory's field names).

    One JSON object a line: ``current_steps``, ``total_steps``, ``loss``/``eval_loss``, ``lr``,
    ``epoch``, ``percentage``, ``elapsed_time``, ``remaining_time`` (seconds), ``tokens_per_second``
    (the tokens TRL counted since training began, over the elapsed time) and ``memory_bytes`` (the
    process's peak: CUDA memory allocated on a GPU, else its resident set). The web UI and the
    loss plot read this file; a resumed run appends to it.
    """

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOG_FILE
        self.start = time.time()
        self.start_step = 0
        self.start_tokens: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        self.start_step = state.global_step
        self.start_tokens = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        total = state.max_steps or 0
        done = state.global_step
        elapsed = time.time() - self.start
        rate = (done - self.start_step) / elapsed if elapsed > 0 and done > self.start_step else 0.0
        record = {
            "current_steps": done,
            "total_steps": total,
            **{k: v for k, v in logs.items() if k in ("loss", "eval_loss", "grad_norm", "epoch")},
            "lr": logs.get("learning_rate"),
            "percentage": round(100.0 * done / total, 2) if total else None,
            "elapsed_time": round(elapsed, 2),
            "remaining_time": round((total - done) / rate, 2) if rate > 0 else None,
        }
        if "train_runtime" in logs:
            record["train_runtime"] = logs["train_runtime"]
        tokens = logs.get("num_tokens")  # TRL's running count of the tokens trained on
        if isinstance(tokens, int | float):
            if self.start_tokens is None:  # the first log: tokens before it were seen in ``elapsed`` too
                self.start_tokens = 0.0 if self.start_step == 0 else float(tokens)
            if elapsed > 0:
                record["tokens_per_second"] = round((float(tokens) - self.start_tokens) / elapsed, 1)
        record["memory_bytes"] = _peak_memory_bytes()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _peak_memory_bytes() -> int:
    """The process's peak memory so far: CUDA memory allocated on a GPU, else the resident set."""
    import resource

    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kilobytes on Linux


class GracefulStop(TrainerCallback):
    """On SIGINT/SIGTERM: finish the current step, save a checkpoint, then stop.

    A second signal exits at once (status 128 + signal number) without saving. Under torchrun
    the ranks agree through an all-reduce at every step end, so all of them stop after the same
    step and save the same checkpoint.
    """

    def __init__(self):
        self.signum: int | None = None
        self.stopped_at: int | None = None

    def _handle(self, signum, frame):
        if self.signum is not None:
            print(f"llmtune: second {signal.Signals(signum).name}: exiting now without saving", file=sys.stderr)
            os._exit(128 + signum)
        self.signum = signum
        print(
            f"llmtune: received {signal.Signals(signum).name}: finishing the current step and saving a checkpoint "
            "(send it again to exit at once)",
            file=sys.stderr,
            flush=True,
        )

    @contextmanager
    def installed(self):
        """Handle SIGINT and SIGTERM while the block runs (main thread only), then restore."""
        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _agreed_signal(self) -> int:
        flag = self.signum or 0
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            tensor = torch.tensor([flag], dtype=torch.int64)
            if dist.get_backend() == "nccl":
                tensor = tensor.cuda()
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            flag = int(tensor.item())
            if flag and self.signum is None:
                self.signum = flag
        return flag

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed_signal():
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
