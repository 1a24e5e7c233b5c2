"""Gradient checkpointing: on where a backward pass runs (LLaMA-Factory's and TRL's default), off for ZO, and said so."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import TrainerCallback

from llmtune.arguments import parse_args
from llmtune.errors import ConfigError
from llmtune.train.run import run_sft

BASE = {"model_name_or_path": "llmtune/tiny-llama", "dataset": "demo_alpaca"}
DEFAULTS = [("full", True), ("lora", True), ("block", True), ("sparse", True), ("loretta", True)]
DEFAULTS += [("zo", False), ("adazeta", False)]  # forward passes only


@pytest.mark.parametrize(("finetuning_type", "on"), DEFAULTS)
def test_checkpointing_is_on_where_a_backward_pass_runs(finetuning_type, on):
    training = parse_args({**BASE, "finetuning_type": finetuning_type}).training
    assert training.activation_checkpointing is on
    assert training.gradient_checkpointing is on  # the old name, which TRL's SFTTrainer reads


@pytest.mark.parametrize(
    "setting",
    [
        {"gradient_checkpointing": False},  # TRL's key
        {"disable_gradient_checkpointing": True},  # LLaMA-Factory's
        {"activation_checkpointing": False},  # transformers 5's name
        {"fsdp_config": {"activation_checkpointing": True}},  # FSDP's own instead (transformers refuses both)
    ],
)
def test_each_key_turns_it_off(setting):
    assert parse_args({**BASE, "finetuning_type": "full", **setting}).training.activation_checkpointing is False


def test_set_keys_win_over_the_default_both_ways():
    assert parse_args(
        {**BASE, "finetuning_type": "zo", "gradient_checkpointing": True}
    ).training.activation_checkpointing
    lf = parse_args({**BASE, "finetuning_type": "lora", "disable_gradient_checkpointing": False}).training
    assert lf.activation_checkpointing is True  # LLaMA-Factory's own default value keeps it on
    with pytest.raises(ConfigError, match="^gradient_checkpointing: true and disable_gradient_checkpointing: true"):
        parse_args({**BASE, "gradient_checkpointing": True, "disable_gradient_checkpointing": True})


class Checkpointed(TrainerCallback):
    """Records whether the model's layers recompute their activations when training starts."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.layers = [m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")]


@pytest.mark.parametrize(
    ("finetuning_type", "setting", "line"),
    [
        ("lora", {}, "on (the default where a backward pass runs (lora); gradient_checkpointing: false turns it off)"),
        ("lora", {"disable_gradient_checkpointing": True}, "off (disable_gradient_checkpointing: true)"),
        ("zo", {}, "off (zo runs forward passes only)"),
    ],
)
def test_a_run_checkpoints_as_set_and_says_so_first(tmp_path, make_config, caplog, finetuning_type, setting, line):
    seen = Checkpointed()
    config = make_config(tmp_path / "out", finetuning_type, max_steps=1, max_samples=8, save_steps=10, **setting)
    with caplog.at_level(logging.INFO, logger="llmtune"):
        run_sft(parse_args(config), callbacks=[seen])
    on = line.startswith("on")
    assert seen.layers and all(flag is on for flag in seen.layers)
    assert caplog.messages[0] == f"gradient checkpointing: {line}"


@pytest.mark.parametrize("finetuning_type", ["full", "lora", "block", "sparse", "loretta"])
def test_checkpointing_changes_no_step(tmp_path, make_config, finetuning_type):
    """Recomputed activations give the same losses and weights (BAdam's hooks, LoRA's input gradients)."""
    runs = []
    for on in (True, False):
        config = make_config(tmp_path / str(on), finetuning_type, max_steps=3, max_samples=24, save_steps=10)
        config.update(gradient_checkpointing=on, badam_switch_interval=2)
        result = run_sft(parse_args(config))
        losses = [e["loss"] for e in result.log_history if "loss" in e]
        runs.append((losses, {k: v.detach().clone() for k, v in result.model.state_dict().items()}))
    (losses_on, weights_on), (losses_off, weights_off) = runs
    assert len(losses_on) == 3 and losses_on == pytest.approx(losses_off, rel=1e-5)
    assert weights_on.keys() == weights_off.keys()
    for key, value in weights_on.items():
        torch.testing.assert_close(value, weights_off[key], rtol=1e-4, atol=1e-6, msg=key)


def test_the_estimate_counts_the_activations_the_run_keeps(llama3_8b_config):
    from llmtune.train.estimate import activation_bytes, compare_methods, estimate_memory

    def estimate(finetuning_type, **setting):
        args = parse_args({**BASE, "finetuning_type": finetuning_type, **setting}, for_training=False)
        return args, estimate_memory(args, llama3_8b_config)

    args, lora = estimate("lora")
    batch, length = args.training.per_device_train_batch_size, args.data.cutoff_len
    assert lora.checkpointing and lora.activations == activation_bytes(
        llama3_8b_config, batch, length, checkpointing=True, value_bytes=4
    )
    assert not estimate("lora", disable_gradient_checkpointing=True)[1].checkpointing
    zo = parse_args({**BASE, "finetuning_type": "zo"}, for_training=False)
    others = compare_methods(zo, llama3_8b_config)  # the other types as they would run: their own default
    assert others["full"].checkpointing and others["block"].checkpointing
