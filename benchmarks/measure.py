"""The one measuring loop of the benchmarks: a ``TrainerCallback`` every runner installs.

It imports only the standard library, torch and transformers, so it runs unchanged inside
LLaMA-Factory's own virtual environment. Per run it records:

* the seconds of every optimizer step (``on_step_begin`` -> ``on_step_end``, on a GPU after a
  synchronise) and the training loss of every step (``logging_steps: 1``);
* tokens: ``num_input_tokens_seen`` (non-padding tokens) after the warm-up and at the end;
* memory: on the CPU the resident set (``VmRSS`` before the model loads, ``VmHWM`` peaks); on a GPU
  ``torch.cuda.max_memory_allocated``. The peak is reset after the warm-up steps, so ``peak_train``
  is the peak of the measured steps (the model, optimizer state, gradients and activations of a
  step), while ``peak_process`` is the whole run's peak (loading included).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

MIB = 2**20


def _status(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class Memory:
    """Peak memory of this process: resident set on the CPU, allocated CUDA memory on a GPU."""

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.baseline = self.current()  # taken before the model loads
        self.peak_before_reset = 0

    def current(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else _status("VmRSS")

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated() if self.cuda else _status("VmHWM")

    def reset(self) -> None:
        """Start a new peak from now (remembering the one so far)."""
        self.peak_before_reset = max(self.peak_before_reset, self.peak())
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM restarts from the current RSS

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class Measure(TrainerCallback):
    """Times steps, keeps losses and token counts, and resets the memory peak after ``warmup`` steps."""

    def __init__(self, warmup: int, memory: Memory | None = None) -> None:
        self.warmup = warmup
        self.memory = memory or Memory()
        self.seconds: list[float] = []
        self.losses: list[float] = []
        self.tokens_at_warmup = 0
        self.tokens_at_end = 0
        self.trainable = 0
        self.total = 0
        self._start = 0.0
        self.extra: dict = {}  # what a runner adds to the result (e.g. the estimator's figure)
        if warmup == 0:
            self.memory.reset()

    # -- the trainer's hooks -----------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            params = {id(p): p for p in model.parameters()}.values()
            self.total = sum(p.numel() for p in params)
            self.trainable = sum(p.numel() for p in params if p.requires_grad)

    def on_step_begin(self, args, state, control, **kwargs):
        self.memory.sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.memory.sync()
        self.seconds.append(time.perf_counter() - self._start)
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        if len(self.seconds) == self.warmup:
            self.tokens_at_warmup = tokens
            self.memory.reset()
        self.tokens_at_end = tokens

    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
        if hasattr(inner, "switch_seconds"):  # BAdam: what its block switches cost, against the steps
            self.extra["switches"] = inner.switches
            self.extra["switch_seconds"] = round(inner.switch_seconds, 4)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    # -- for loops that are not a Trainer (inference) ----------------------------------------------

    def time_step(self, step, tokens: int) -> None:
        """Run ``step()`` as one measured step of ``tokens`` tokens."""
        self.on_step_begin(None, None, None)
        loss = step()
        state = type("State", (), {"num_input_tokens_seen": self.tokens_at_end + tokens})()
        self.on_step_end(None, state, None)
        if loss is not None:
            self.losses.append(float(loss))

    # -- the result ----------------------------------------------------------------------------------

    def result(self) -> dict:
        measured = self.seconds[self.warmup :] or self.seconds
        tokens = self.tokens_at_end - self.tokens_at_warmup
        peak_train = self.memory.peak()
        return {
            "steps": len(self.seconds),
            "step_seconds": statistics.median(measured) if measured else None,
            "mean_step_seconds": statistics.fmean(measured) if measured else None,  # over a whole pass of blocks
            "seconds": [round(x, 4) for x in self.seconds],  # every step, warm-up included: the spread
            "tokens_per_second": tokens / sum(measured) if measured and tokens else None,
            "peak_train_bytes": peak_train,
            "peak_process_bytes": max(peak_train, self.memory.peak_before_reset),
            "baseline_bytes": self.memory.baseline,
            "peak_rise_bytes": peak_train - self.memory.baseline,
            "trainable": self.trainable,
            "parameters": self.total,
            "losses": self.losses,
            "final_loss": self.losses[-1] if self.losses else None,
            "device": torch.cuda.get_device_name(0) if self.memory.cuda else "cpu",
            **self.extra,
        }


def write_result(path: str | Path, result: dict) -> None:
    """Write one run's result as JSON (the parent process reads it back)."""
    Path(path).write_text(json.dumps(result, indent=1), encoding="utf-8")
