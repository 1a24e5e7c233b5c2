"""The promises every finetuning type keeps, checked on the embedded tiny model.

A new method joins by adding a row to ``METHODS`` (and, where its trainable set differs, a line
to ``expected_trainable``).
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from llmtune.errors import TrainingInterrupted
from llmtune.hparams import parse_args
from llmtune.model import load_model
from llmtune.train.run import run_sft

METHODS = ["full", "lora"]


def train(config: dict, callbacks=None):
    return run_sft(parse_args(config), callbacks=callbacks)


def losses(result) -> list[float]:
    return [entry["loss"] for entry in result.log_history if "loss" in entry]


def losses_by_step(result) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in result.log_history if "loss" in entry}


def probe_batch():
    torch.manual_seed(0)
    return torch.randint(5, 200, (2, 12))


@pytest.mark.parametrize("finetuning_type", METHODS)
def test_loss_falls_and_only_intended_parameters_change(tmp_path, make_config, finetuning_type):
    config = make_config(tmp_path / "out", finetuning_type, max_steps=40)
    args = parse_args(config)
    before = {k: v.clone() for k, v in load_model(args.model).state_dict().items()}
    result = train(config)

    curve = losses(result)
    assert len(curve) == 40
    final = sum(curve[-5:]) / 5  # single-batch losses are noisy: average the last five
    assert final < 0.7 * curve[0], f"loss did not fall enough: {curve[0]:.3f} -> {final:.3f}"

    model = result.model
    if finetuning_type == "full":
        after = model.state_dict()
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert len(changed) == len(before), f"unchanged: {set(before) - set(changed)}"
    else:
        base = model.get_base_model().state_dict()
        for key, value in before.items():
            name = key.replace(".weight", ".base_layer.weight") if f"{key[:-7]}.base_layer.weight" in base else key
            assert torch.equal(value, base[name]), f"frozen weight {key} changed"
        lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


@pytest.mark.parametrize("finetuning_type", METHODS)
def test_saved_model_reloads_to_the_same_logits(tmp_path, make_config, finetuning_type):
    result = train(make_config(tmp_path / "out", finetuning_type, max_steps=6, save_steps=100))
    model = result.model.eval()
    batch = probe_batch()
    with torch.no_grad():
        expected = model(input_ids=batch).logits
    out = str(result.output_dir)
    if finetuning_type == "lora":
        from peft import PeftModel

        base = load_model(parse_args(make_config(tmp_path / "unused", "lora")).model)
        reloaded = PeftModel.from_pretrained(base, out)
    else:
        reloaded = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        actual = reloaded.eval()(input_ids=batch).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


class SignalAtStep(TrainerCallback):
    """Send this process SIGTERM while step ``step`` runs, as a scheduler preempting the job would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("finetuning_type", METHODS)
def test_interrupted_then_resumed_run_matches_an_uninterrupted_one(tmp_path, make_config, finetuning_type):
    straight = train(make_config(tmp_path / "straight", finetuning_type))

    config = make_config(tmp_path / "resumed", finetuning_type)
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM after step 7.*--resume_from_checkpoint true"):
        train(config, callbacks=[SignalAtStep(7)])
    assert (tmp_path / "resumed" / "checkpoint-7" / "llmtune_complete.json").is_file()
    resumed = train({**config, "resume_from_checkpoint": True})

    first, second = losses_by_step(straight), losses_by_step(resumed)
    assert sorted(second) == list(range(1, 21))
    assert [second[s] for s in range(8, 21)] == pytest.approx([first[s] for s in range(8, 21)], abs=1e-5)
