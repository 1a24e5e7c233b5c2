"""Checkpoints that are complete or absent, never half-written.

Every save (a ``checkpoint-N`` folder or the final model) is written into a staging folder inside
``output_dir``, its weight files are checked against the model (every tensor present, the total
size right: the ZeRO-3 "40-byte adapter" failure cannot pass), a completion marker listing each
file and its size is written last, and only then is the folder renamed into place. Resuming picks
the newest checkpoint whose marker matches its files and says which partial ones it skipped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llmtune.errors import CheckpointError
from llmtune.parameters import full_numel

logger = logging.getLogger("llmtune")

COMPLETE_MARKER = "llmtune_complete.json"
STAGING_DIR = ".llmtune_staging"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    """A ``checkpoint-N`` folder and whether its completion marker matches its files."""

    path: Path
    step: int
    complete: bool


def is_complete(folder: Path) -> bool:
    """True when ``folder`` has a completion marker and every file it lists has the recorded size."""
    marker = folder / COMPLETE_MARKER
    try:
        files = json.loads(marker.read_text())["files"]
        return all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_checkpoints(output_dir: str | Path) -> list[CheckpointInfo]:
    """The ``checkpoint-N`` folders of ``output_dir``, oldest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            found.append(CheckpointInfo(child, int(match.group(1)), is_complete(child)))
    return sorted(found, key=lambda c: c.step)


def latest_complete_checkpoint(output_dir: str | Path, *, warn: bool = True) -> Path | None:
    """The newest complete checkpoint in ``output_dir``; logs each newer partial one it skips."""
    for info in reversed(list_checkpoints(output_dir)):
        if info.complete:
            return info.path
        if warn:
            logger.warning(
                "skipping %s: it is incomplete (no valid %s; interrupted while saving?)", info.path, COMPLETE_MARKER
            )
    return None


def expected_weight_numel(model: torch.nn.Module) -> tuple[int, bool]:
    """How many numbers a save of ``model`` must contain, and whether it saves an adapter only.

    A PEFT model saves its trainable parameters (adapters and ``modules_to_save``); any other
    model saves every distinct parameter (tied weights once). Under ZeRO-3 a parameter's local
    tensor is empty, so its full size is read from ``ds_numel``.
    """
    adapter_only = hasattr(model, "peft_config")
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) in seen or (adapter_only and not param.requires_grad):
            continue
        seen.add(id(param))
        total += full_numel(param)
    return total, adapter_only


def verify_saved_weights(folder: Path, model: torch.nn.Module) -> int:
    """Check the ``*.safetensors`` files in ``folder`` hold all of ``model``'s weights.

    Returns the number of tensors checked; raises :class:`CheckpointError` naming the folder when a
    tensor is empty or the total size differs from the model's.
    """
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"save to {folder} wrote no .safetensors weights")
    expected, adapter_only = expected_weight_numel(model)
    saved = count = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                shape = handle.get_slice(key).get_shape()
                numel = 1
                for dim in shape:
                    numel *= dim
                if numel == 0:
                    raise CheckpointError(f"save to {folder} is broken: tensor {key!r} in {file.name} is empty")
                saved += numel
                count += 1
    if saved != expected:
        what = "adapter" if adapter_only else "model"
        raise CheckpointError(f"save to {folder} is incomplete: {saved:,} numbers written, the {what} has {expected:,}")
    return count


def write_marker(folder: Path, **info: object) -> None:
    """Record every file in ``folder`` with its size; written last, it marks the save complete."""
    files = {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != COMPLETE_MARKER
    }
    payload = {"files": files, "time": time.time(), **info}
    tmp = folder / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    _fsync(tmp)
    os.replace(tmp, folder / COMPLETE_MARKER)


def publish(staged: Path, final: Path) -> None:
    """Move a complete staged folder to ``final`` atomically, replacing an older one of the same name."""
    old = None
    if final.exists():
        old = final.with_name(final.name + ".replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish_into(staged: Path, target: Path) -> None:
    """Move the files of a complete staged folder into ``target`` (the final model in output_dir)."""
    for path in staged.iterdir():
        if path.name == COMPLETE_MARKER:
            continue
        dest = target / path.name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(path, dest)
    os.replace(staged / COMPLETE_MARKER, target / COMPLETE_MARKER)
    shutil.rmtree(staged, ignore_errors=True)


def rotate_checkpoints(output_dir: str | Path, save_total_limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints beyond ``save_total_limit``; returns what was deleted.

    Only complete checkpoints count and are deleted, the newest complete one never is; partial
    folders are left for the user to inspect (resuming skips them).
    """
    if not save_total_limit or save_total_limit <= 0:
        return []
    complete = [c for c in list_checkpoints(output_dir) if c.complete]
    keep = max(save_total_limit, 1)
    doomed = [c.path for c in complete[:-keep]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def staging_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / STAGING_DIR


def describe_save_error(err: OSError, path: Path, previous: Path | None) -> CheckpointError:
    """One line for a failed save: which path, why, and that the previous checkpoint is intact."""
    why = err.strerror or str(err)
    kept = f"; the previous checkpoint {previous} is intact" if previous else ""
    return CheckpointError(f"could not save {path}: {why} (errno {err.errno}){kept}")


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
