"""``llmtune estimate``: memory by finetuning type from a model's config alone, checked against
BAdam's published figures and against the bytes a real optimizer holds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmtune.arguments import parse_args
from llmtune.cli import main
from llmtune.methods.block.optimizer import BlockOptimizer
from llmtune.methods.block.partition import freeze_outside, partition_blocks
from llmtune.model import load_model
from llmtune.train.estimate import activation_bytes, estimate_memory

ROOT = Path(__file__).resolve().parents[2]


def llama3_args(finetuning_type: str, **overrides):
    config = {"model_name_or_path": "llmtune/tiny-llama", "finetuning_type": finetuning_type, **overrides}
    args = parse_args(config, for_training=False)
    args.training.bf16 = True  # as on a GPU; parse_args refuses bf16 on this CPU-only machine
    return args


def test_llama3_8b_block_matches_badams_memory_formula(llama3_8b_config):
    block = estimate_memory(llama3_args("block"), llama3_8b_config)
    params, blocks = 8_030_261_248, 32
    assert block.parameters == params and block.weight_dtype == "bfloat16"
    layer = 218_112_000  # one Llama-3-8B layer
    assert block.trainable_at_once == layer
    assert (block.weights, block.gradients, block.optimizer) == (2 * params, 2 * layer, 16 * layer)
    # BAdam's README: 2M + 16M/D bytes (M parameters, D blocks) before activations.
    states = block.weights + block.gradients + block.optimizer
    assert states == pytest.approx(2 * params + 16 * params / blocks, rel=0.02)

    full = estimate_memory(llama3_args("full"), llama3_8b_config)
    assert full.weights + full.gradients + full.optimizer == 16 * params  # fp32 weights, gradients, AdamW
    sparse = estimate_memory(llama3_args("sparse", badam_update_ratio=0.05), llama3_8b_config)
    assert block.activations == sparse.activations == full.activations  # the lowest block backpropagates all layers
    assert block.total < sparse.total and sparse.total - sparse.activations < (full.total - full.activations) / 5


def test_activations_shrink_with_checkpointing_and_grow_with_tokens(llama3_8b_config):
    plain = activation_bytes(llama3_8b_config, 2, 1024, checkpointing=False, value_bytes=2)
    checkpointed = activation_bytes(llama3_8b_config, 2, 1024, checkpointing=True, value_bytes=2)
    assert checkpointed < plain / 3
    assert activation_bytes(llama3_8b_config, 4, 1024, checkpointing=True, value_bytes=2) == 2 * checkpointed


def test_the_block_estimate_equals_what_the_optimizer_holds(make_config, tmp_path):
    args = parse_args(make_config(tmp_path, "block"))
    estimate = estimate_memory(args)
    model = load_model(args.model)
    blocks = partition_blocks(model)
    freeze_outside(model, blocks)
    optimizer = BlockOptimizer(blocks, lr=1e-3, switch_every=100)
    ids = torch.randint(5, 200, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    gradients = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    optimizer.step()
    moments = sum(
        v.numel() * v.element_size() for s in optimizer.base.state.values() for k, v in s.items() if k != "step"
    )
    assert (estimate.gradients, estimate.optimizer) == (gradients, moments)
    assert estimate.weights == sum(p.numel() * 4 for p in model.parameters())


def test_estimate_command_prints_the_table_without_loading_weights(capsys, refuse_model_loading):
    example = ROOT / "examples" / "train_block" / "tiny_block_sft.yaml"
    assert main(["estimate", str(example), "--bf16", "true"]) == 0
    out = capsys.readouterr().out
    assert "finetuning_type: block" in out and "bfloat16" in out
    for row in ("weights", "gradients", "optimizer state", "activations", "total"):
        assert row in out
    assert "the same run as other finetuning types: full" in out and "lora" in out and "sparse" in out


def opt_config(hidden: int, layers: int, heads: int):
    from transformers import OPTConfig

    # facebook/opt-13b (5120, 40, 40) and opt-30b (7168, 48, 56): their config.json shapes
    return OPTConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        ffn_dim=4 * hidden,
        num_attention_heads=heads,
        word_embed_proj_dim=hidden,
        vocab_size=50272,
    )


@pytest.mark.parametrize("master", [False, True])
def test_zo_in_fp16_counts_two_byte_weights_as_mezo(master):
    # MeZO trains OPT-13B in fp16 (about 26 GB of weights) and OPT-30B on one 80 GB GPU.
    def zo_args(**overrides):
        config = {"model_name_or_path": "llmtune/tiny-llama", "finetuning_type": "zo", "cutoff_len": 256}
        args = parse_args({**config, "per_device_train_batch_size": 16, **overrides}, for_training=False)
        args.training.fp16 = True  # as on a GPU
        return args

    opt13b = estimate_memory(zo_args(zo_master_weights=master), opt_config(5120, 40, 40))
    params = 12_853_473_280
    assert opt13b.parameters == params and opt13b.gradients == 0
    assert opt13b.weights == (4 if master else 2) * params
    assert opt13b.weight_dtype == ("float32" if master else "float16")
    embedding = 50272 * 5120  # the largest weight: its fp32 z, or its fp16 z and perturbed copy
    assert opt13b.optimizer == 4 * embedding
    opt30b = estimate_memory(zo_args(zo_master_weights=master), opt_config(7168, 48, 56))
    assert (opt30b.total < 80e9) is not master


def test_estimate_says_whether_the_run_fits_the_gpu():
    from llmtune.train.estimate import fits_line

    assert fits_line(int(21.9e9), 24) == "fits a 24 GB GPU (21.9 GB needed; --gpu_memory_gb to change)"
    assert fits_line(int(122.9e9), 80).startswith("does NOT fit a 80 GB GPU (122.9 GB needed")


def test_train_warns_before_loading_when_the_estimate_exceeds_the_gpu(monkeypatch, caplog, tmp_path):
    from types import SimpleNamespace

    import torch

    from llmtune.arguments import parse_args
    from llmtune.train.estimate import warn_if_over_gpu

    args = parse_args(
        {
            "model_name_or_path": "llmtune/tiny-llama",
            "dataset": "demo_alpaca",
            "finetuning_type": "full",
            "output_dir": str(tmp_path / "o"),
        }
    )
    assert warn_if_over_gpu(args) is None  # no GPU here: nothing to compare with
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=1000))
    with caplog.at_level("WARNING", logger="llmtune"):
        message = warn_if_over_gpu(args)
    assert message and "more than this GPU's" in message and message in caplog.text
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=80 * 2**30))
    assert warn_if_over_gpu(args) is None
