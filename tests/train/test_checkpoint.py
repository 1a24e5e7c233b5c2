"""Checkpoint bookkeeping: completion markers, partial folders, rotation, weight verification."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from llmtune.errors import CheckpointError, ConfigError
from llmtune.train import checkpoint as ckpt


def make_checkpoint(root, step, *, complete=True, payload=b"x" * 100):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(payload)
    (folder / "trainer_state.json").write_text("{}")
    if complete:
        ckpt.write_marker(folder, step=step)
    return folder


def test_latest_complete_skips_partial_and_says_so(tmp_path, caplog):
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20)
    make_checkpoint(tmp_path, 30, complete=False)
    with caplog.at_level("WARNING", logger="llmtune"):
        assert ckpt.latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-20"
    assert "checkpoint-30" in caplog.text and "incomplete" in caplog.text


def test_a_file_truncated_after_the_marker_makes_it_incomplete(tmp_path):
    folder = make_checkpoint(tmp_path, 5)
    assert ckpt.is_complete(folder)
    with (folder / "weights.bin").open("r+b") as handle:
        handle.truncate(10)
    assert not ckpt.is_complete(folder)
    assert ckpt.latest_complete_checkpoint(tmp_path) is None


def test_steps_sort_numerically(tmp_path):
    for step in (9, 100, 20):
        make_checkpoint(tmp_path, step)
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [9, 20, 100]


def test_rotation_keeps_the_newest_complete_checkpoint(tmp_path):
    for step in (1, 2, 3):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 4, complete=False)
    deleted = ckpt.rotate_checkpoints(tmp_path, 1)
    assert sorted(p.name for p in deleted) == ["checkpoint-1", "checkpoint-2"]
    remaining = {c.path.name: c.complete for c in ckpt.list_checkpoints(tmp_path)}
    assert remaining == {"checkpoint-3": True, "checkpoint-4": False}


def test_publish_replaces_an_existing_folder(tmp_path):
    staged = make_checkpoint(tmp_path / "staging", 7, payload=b"new")
    old = make_checkpoint(tmp_path, 7, payload=b"old")
    ckpt.publish(staged, old)
    assert (old / "weights.bin").read_bytes() == b"new"
    assert ckpt.is_complete(old)


class TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 3)
        self.b = torch.nn.Linear(3, 2, bias=False)


def test_verify_accepts_a_full_save(tmp_path):
    model = TwoLayer()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    assert ckpt.verify_saved_weights(tmp_path, model) == 3


def test_verify_refuses_empty_or_missing_tensors(tmp_path):
    model = TwoLayer()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["b.weight"] = torch.empty(0)  # what a ZeRO-3 save without gathering writes
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="'b.weight' in model.safetensors is empty"):
        ckpt.verify_saved_weights(tmp_path, model)

    other = tmp_path / "missing"
    other.mkdir()
    save_file({"a.weight": state["a.weight"]}, other / "model.safetensors")
    with pytest.raises(CheckpointError, match="incomplete: 12 numbers written, the model has 21"):
        ckpt.verify_saved_weights(other, model)


def test_verify_refuses_a_folder_without_weights(tmp_path):
    with pytest.raises(CheckpointError, match="no .safetensors"):
        ckpt.verify_saved_weights(tmp_path, TwoLayer())


def test_only_rank_0_checks_and_empties_output_dir(tmp_path, monkeypatch):
    """Under torchrun the other ranks would see the folder rank 0 has just begun and refuse it."""
    from llmtune.arguments import parse_args
    from llmtune.train.run import check_output_dir, prepare_output_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / "training_args.yaml").write_text("written by rank 0 a moment ago")
    args = parse_args(
        {
            "model_name_or_path": "llmtune/tiny-llama",
            "dataset": "demo_alpaca",
            "output_dir": str(out),
            "overwrite_output_dir": True,
        }
    )
    monkeypatch.setenv("RANK", "1")
    check_output_dir(args, None)  # no error on rank 1
    prepare_output_dir(args, None)
    assert (out / "training_args.yaml").exists()  # and rank 1 never empties it
    monkeypatch.setenv("RANK", "0")
    args.training.overwrite_output_dir = False
    with pytest.raises(ConfigError, match="is not empty"):
        check_output_dir(args, None)
