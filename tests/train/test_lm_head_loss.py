"""``lm_head_loss``: TRL's fused LM head and the model's own loss over full logits train the same way."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from llmtune.arguments import parse_args
from llmtune.errors import ConfigError
from llmtune.train.run import run_sft
from llmtune.train.trainer import resolve_lm_head_loss


def test_auto_keeps_the_fused_head_only_where_triton_runs_it():
    assert resolve_lm_head_loss("auto", torch.device("cpu")) == "logits"
    assert resolve_lm_head_loss("fused", torch.device("cpu")) == "fused"
    assert resolve_lm_head_loss("logits", torch.device("cpu")) == "logits"


def test_a_bad_choice_is_one_line_before_any_model_loads(tmp_path, make_config):
    with pytest.raises(ConfigError, match=r"lm_head_loss.*'tiles'.*auto.*fused.*logits"):
        parse_args(make_config(tmp_path / "out", "full", lm_head_loss="tiles"))


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_fused_and_logits_give_the_same_trajectory(tmp_path, make_config, finetuning_type):
    """Same loss at every step and the same trained weights (fp32 rounding apart), with accumulation.

    The weights are compared after plain SGD steps: a weight then moves by ``lr`` times its gradient, so
    rounding-level differences between the two loss paths stay rounding-level. Under Adam they need not
    (a near-zero gradient of either sign is normalised to a step of about ``lr``): one row of the tied
    embedding differed by 1.2e-4 on another CPU after 4 AdamW steps, with the losses equal to 1e-4.
    """
    runs = {}
    for choice in ("fused", "logits"):
        config = make_config(
            tmp_path / choice,
            finetuning_type,
            max_steps=4,
            gradient_accumulation_steps=2,
            lm_head_loss=choice,
            optim="sgd",
            learning_rate=0.5,
        )
        start = _Snapshot()
        result = run_sft(parse_args(config), callbacks=[start])
        losses = [row["loss"] for row in result.log_history if "loss" in row]
        accuracy = [row["mean_token_accuracy"] for row in result.log_history if "mean_token_accuracy" in row]
        trained = {n: p.detach().clone() for n, p in result.model.named_parameters() if p.requires_grad}
        runs[choice] = losses, accuracy, trained
        moved = max((trained[n] - start.weights[n]).abs().max().item() for n in trained)
        assert moved > 1e-2  # the steps moved the weights far beyond the tolerance below
    (fused_losses, fused_acc, fused_w), (logit_losses, logit_acc, logit_w) = runs["fused"], runs["logits"]
    assert len(fused_losses) == 4 and fused_losses == pytest.approx(logit_losses, rel=1e-4)
    assert fused_acc == pytest.approx(logit_acc, abs=1e-6)  # the same argmax: token accuracy is logged on both
    assert fused_losses[-1] < fused_losses[0]
    for name, weight in fused_w.items():
        torch.testing.assert_close(logit_w[name], weight, rtol=1e-5, atol=1e-6, msg=name)


class _Snapshot(TrainerCallback):
    """The trainable weights as training starts."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
