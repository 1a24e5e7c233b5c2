"""Packing keeps each row on its own: same loss as unpacked, response-only labels, no cross-row attention."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from llmtune.arguments import parse_args
from llmtune.data.packing import IGNORE_INDEX, PackedCollator, pack_examples, prepare_model_for_packing
from llmtune.errors import ConfigError

ROWS = [  # (input_ids, labels): prompt tokens -100, response tokens trained
    ([5, 6, 7, 8, 9], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 8, 9]),
    ([10, 11, 12], [IGNORE_INDEX, 11, 12]),
    ([13, 14, 15, 16, 17, 18, 19], [IGNORE_INDEX, IGNORE_INDEX, 15, 16, 17, 18, 19]),
    ([20, 21], [IGNORE_INDEX, 21]),
]


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=40,
    )
    return LlamaForCausalLM(config).eval()


def test_rows_fill_sequences_up_to_the_capacity_each_row_whole_and_once():
    packed = pack_examples(ROWS, capacity=10)
    assert [len(row["input_ids"]) for row in packed] == [10, 7]  # 7+3, then 5+2 (first fit, longest first)
    tokens = sorted(t for row in packed for t in row["input_ids"])
    assert tokens == sorted(t for ids, _ in ROWS for t in ids)
    for row in packed:
        starts = [sum(row["seq_lengths"][:i]) for i in range(len(row["seq_lengths"]))]
        assert all(row["labels"][i] == IGNORE_INDEX for i in starts)  # no row learns the next row's start
    assert pack_examples(ROWS, capacity=10) == packed  # deterministic
    with pytest.raises(ValueError, match="more than the packing capacity 6"):
        pack_examples(ROWS, capacity=6)


def test_packed_rows_give_the_logits_and_loss_of_each_row_alone():
    model = tiny_llama()
    prepare_model_for_packing(model)
    packed = pack_examples(ROWS, capacity=10)
    batch = PackedCollator(pad_token_id=0)(packed)
    assert "attention_mask" not in batch and batch["input_ids"].shape == (2, 10)
    with torch.no_grad():
        out = model(**batch)
        mixed = model(**{k: v for k, v in batch.items() if k != "position_ids"}).logits  # plain concatenation
        total, count, worst, worst_mixed = 0.0, 0, 0.0, 0.0
        for ids, labels in ROWS:  # one row at a time: the reference
            alone = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            n = sum(label != IGNORE_INDEX for label in labels[1:])
            total, count = total + alone.loss * n, count + n
            seq = next(i for i, row in enumerate(packed) if _contains(row["input_ids"], ids))
            start = _contains(packed[seq]["input_ids"], ids) - 1
            span = slice(start, start + len(ids))
            worst = max(worst, (out.logits[seq, span] - alone.logits[0]).abs().max().item())
            worst_mixed = max(worst_mixed, (mixed[seq, span] - alone.logits[0]).abs().max().item())
    assert worst < 1e-5 and torch.allclose(out.loss, total / count, atol=1e-5)
    assert worst_mixed > 1e-3  # without the position restarts the rows would see each other


def _contains(sequence: list[int], part: list[int]) -> int:
    """1 + the index where ``part`` starts in ``sequence``, or 0."""
    for i in range(len(sequence) - len(part) + 1):
        if sequence[i : i + len(part)] == part:
            return i + 1
    return 0


def test_a_model_that_ignores_position_restarts_is_refused():
    torch.manual_seed(0)
    opt = OPTForCausalLM(
        OPTConfig(
            hidden_size=16,
            ffn_dim=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=40,
            word_embed_proj_dim=16,
        )
    )
    with pytest.raises(ConfigError, match=r"^packing: this model \(opt, .*\) lets packed rows attend to each other"):
        prepare_model_for_packing(opt)


def test_packing_true_is_llmtunes_neat_packing_and_never_trls(make_config, tmp_path):
    for key in ("packing", "neat_packing"):
        args = parse_args({**make_config(tmp_path, "lora"), key: True})
        assert args.data.neat_packing and not args.training.packing
    with pytest.raises(ConfigError, match="^packing: not available with train_as_classification"):
        parse_args({**make_config(tmp_path, "lora"), "packing": True, "train_as_classification": True})


def test_a_packed_run_trains_on_fewer_longer_sequences(make_config, tmp_path):
    from llmtune.data import get_dataset
    from llmtune.model import load_tokenizer
    from llmtune.train.run import run_sft

    config = make_config(tmp_path / "out", "lora", max_steps=8, max_samples=64, cutoff_len=128)
    plain, packed = parse_args(config), parse_args({**config, "packing": True})
    tokenizer = load_tokenizer(plain.model)
    rows = get_dataset(plain.data, tokenizer).train
    sequences = get_dataset(packed.data, tokenizer).train
    assert len(sequences) < len(rows) / 2 and max(len(ids) for ids in sequences["input_ids"]) <= 128
    assert sum(len(ids) for ids in sequences["input_ids"]) == sum(len(ids) for ids in rows["input_ids"])

    result = run_sft(packed)
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    assert len(losses) == 8 and losses[-1] < losses[0]
