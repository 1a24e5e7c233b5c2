"""The promises every finetuning type keeps, checked on the embedded tiny model.

Every registered method is checked (``METHODS`` comes from the registry); where a method's trainable
set differs, it adds a line to ``expected_trainable``. A method that needs its own hyperparameters to keep the promises on the
tiny model says so in ``OVERRIDES``; the assertions are the same for every method.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from llmtune.arguments import parse_args
from llmtune.errors import TrainingInterrupted
from llmtune.methods import finetuning_types
from llmtune.model import load_model
from llmtune.train.run import run_sft

METHODS = list(finetuning_types())

# BAdam on a 2-layer model: switch every 5 steps so that every run crosses block switches (the
# resume test stops mid-block); sparse updates a quarter of each weight so 40 steps show learning.
OVERRIDES = {
    "block": {"badam_switch_interval": 5},
    "sparse": {"badam_switch_interval": 5, "badam_update_ratio": 0.25},
    "zo": {"learning_rate": 2e-4},  # MeZO: one random direction a step, so a small lr and many steps
    # Tensor-train adapters sized for a 64-wide model. adazeta: smaller adapters (fewer perturbed
    # numbers, a less noisy estimate), queries growing to 4 over the run's 15 epochs.
    "loretta": {"learning_rate": 1e-2, "loretta_rank": 4, "loretta_bottleneck": 16},
    "adazeta": {
        "learning_rate": 1e-2,
        "zo_eps": 1e-2,
        "loretta_rank": 2,
        "loretta_bottleneck": 8,
        "adazeta_target_queries": 4,
        "adazeta_max_queries": 4,
    },
}
# Steps the loss test runs (40 unless a method needs more): zo's estimate is noisy, each step is cheap.
LOSS_STEPS = {"zo": 200, "adazeta": 300}
# Loss tests long enough to belong to the slow run (CI runs it too).
SLOW_LOSS = {"adazeta"}
# Adapter methods: the parameter that starts at zero (so the adapter is an identity) and must have moved.
ZERO_INIT = {"lora": "lora_B", "loretta": "loretta_up", "adazeta": "loretta_up"}
# Parameters outside the layers (embedding, final norm, head) that BAdam leaves frozen by default.
BADAM_FROZEN = ("model.embed_tokens.", "model.norm.", "lm_head.")


def method_config(make_config, output_dir, finetuning_type: str, **overrides) -> dict:
    return make_config(output_dir, finetuning_type, **{**OVERRIDES.get(finetuning_type, {}), **overrides})


def train(config: dict, callbacks=None):
    return run_sft(parse_args(config), callbacks=callbacks)


def losses(result) -> list[float]:
    return [entry["loss"] for entry in result.log_history if "loss" in entry]


def losses_by_step(result) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in result.log_history if "loss" in entry}


def probe_batch():
    torch.manual_seed(0)
    return torch.randint(5, 200, (2, 12))


@pytest.mark.parametrize(
    "finetuning_type", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_LOSS else m for m in METHODS]
)
def test_loss_falls_and_only_intended_parameters_change(tmp_path, make_config, finetuning_type):
    steps = LOSS_STEPS.get(finetuning_type, 40)
    config = method_config(make_config, tmp_path / "out", finetuning_type, max_steps=steps)
    args = parse_args(config)
    before = {k: v.clone() for k, v in load_model(args.model).state_dict().items()}
    result = train(config)

    curve = losses(result)
    assert len(curve) == steps
    final = sum(curve[-5:]) / 5  # single-batch losses are noisy: average the last five
    assert final < 0.7 * curve[0], f"loss did not fall enough: {curve[0]:.3f} -> {final:.3f}"

    model = result.model
    if finetuning_type in ("full", "zo"):  # zo_target: full (the default) trains every weight
        after = model.state_dict()
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert len(changed) == len(before), f"unchanged: {set(before) - set(changed)}"
    elif finetuning_type in ("block", "sparse"):
        after = model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        layers = {k for k in before if not k.startswith(BADAM_FROZEN)}
        assert changed == layers, f"changed outside the layers: {changed - layers}; unchanged: {layers - changed}"
    else:
        base = model.get_base_model().state_dict()
        for key, value in before.items():
            # An adapted layer keeps its weight as base_layer; a trained copy (modules_to_save, e.g.
            # loretta's norms) keeps the untouched original as original_module.
            wrapped = [key[:-7] + w for w in (".base_layer.weight", ".original_module.weight") if key[:-7] + w in base]
            name = wrapped[0] if wrapped else key
            assert torch.equal(value, base[name]), f"frozen weight {key} changed"
        zero_init = [p for n, p in model.named_parameters() if ZERO_INIT[finetuning_type] in n]
        assert zero_init and all(p.abs().sum() > 0 for p in zero_init)


@pytest.mark.parametrize("finetuning_type", METHODS)
def test_saved_model_reloads_to_the_same_logits(tmp_path, make_config, finetuning_type):
    result = train(method_config(make_config, tmp_path / "out", finetuning_type, max_steps=6, save_steps=100))
    model = result.model.eval()
    batch = probe_batch()
    with torch.no_grad():
        expected = model(input_ids=batch).logits
    out = str(result.output_dir)
    if finetuning_type in ZERO_INIT:  # adapter methods save a PEFT adapter
        from peft import PeftModel

        import llmtune.methods.loretta.tuner  # noqa: F401  (registers loretta with PEFT)

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
    straight = train(method_config(make_config, tmp_path / "straight", finetuning_type))

    config = method_config(make_config, tmp_path / "resumed", finetuning_type)
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM after step 7.*--resume_from_checkpoint true"):
        train(config, callbacks=[SignalAtStep(7)])
    assert (tmp_path / "resumed" / "checkpoint-7" / "llmtune_complete.json").is_file()
    resumed = train({**config, "resume_from_checkpoint": True})

    first, second = losses_by_step(straight), losses_by_step(resumed)
    assert sorted(second) == list(range(1, 21))
    assert [second[s] for s in range(8, 21)] == pytest.approx([first[s] for s in range(8, 21)], abs=1e-5)
