"""The LM head only where it is read: the same losses, scores and gradients as over the full logits."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llmtune.model.head import causal_lm_loss, head_only_at
from llmtune.train.classification import ClassificationCollator, option_log_likelihoods

IGNORE = -100


@pytest.fixture
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config).float()


def sft_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0  # right padding
    labels = ids.clone()
    labels[:, :5] = IGNORE  # the prompt
    labels[1, 7:9] = IGNORE  # a masked turn in the middle
    labels[mask == 0] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def head_rows(model, run) -> int:
    """How many positions the head computed while ``run()`` ran."""
    rows = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: rows.append(out.shape[:-1].numel()))
    try:
        run()
    finally:
        handle.remove()
    return sum(rows)


@pytest.mark.parametrize("num_items", [None, 40])
def test_the_loss_and_its_gradients_equal_transformers_loss_over_full_logits(model, num_items):
    batch = sft_batch()
    expected = model(**batch, **({"num_items_in_batch": num_items} if num_items else {})).loss
    expected.backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss, logits, targets = causal_lm_loss(model, batch, num_items)
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, full_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    labelled = int((batch["labels"][:, 1:] != IGNORE).sum())
    assert logits.shape == (labelled, 97) and targets.shape == (labelled,)


def test_the_head_runs_only_at_labelled_positions(model):
    batch = sft_batch()
    labelled = int((batch["labels"][:, 1:] != IGNORE).sum())
    assert head_rows(model, lambda: causal_lm_loss(model, batch)) == labelled < batch["input_ids"].numel()
    assert head_rows(model, lambda: model(**batch)) == batch["input_ids"].numel()  # the hook is gone again


def test_option_scores_equal_the_full_logits_computation_with_the_head_at_option_positions(model):
    collate = ClassificationCollator(pad_token_id=0)
    batch = collate(
        [
            {"prompt_ids": [5, 6, 7, 8], "option_ids": [[11, 12], [13]], "label": 0},
            {"prompt_ids": [9, 10], "option_ids": [[14], [15, 16, 17]], "label": 1},
        ]
    )
    with torch.no_grad():
        scores = option_log_likelihoods(model, batch, length_normalized=False)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    expected = []
    for row in range(batch["input_ids"].shape[0]):
        positions = batch["cls_option_mask"][row].nonzero().flatten().tolist()
        lp = logits[row].log_softmax(-1)
        expected.append(sum(lp[t - 1, batch["input_ids"][row, t]].item() for t in positions))
    assert scores.tolist() == pytest.approx(expected, abs=1e-5)
    option_tokens = int(batch["cls_option_mask"].sum())
    assert head_rows(model, lambda: option_log_likelihoods(model, batch)) == option_tokens


def test_through_a_lora_and_a_prefix_wrapper(model):
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model

    batch = sft_batch()
    configs = (
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),  # B != 0: the adapter counts
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
    )
    for config in configs:
        torch.manual_seed(0)
        wrapped = get_peft_model(LlamaForCausalLM(model.config), config)
        with torch.no_grad():
            expected = wrapped(**batch).loss
            loss, _, _ = causal_lm_loss(wrapped, batch)
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)


def test_hidden_states_of_another_shape_are_refused(model):
    with pytest.raises(ValueError, match="hidden states of shape"), head_only_at(model, torch.ones(2, 3, dtype=bool)):
        model(input_ids=torch.ones(2, 4, dtype=torch.long))
