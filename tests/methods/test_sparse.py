"""``finetuning_type: sparse`` (BAdam's ratio mode): ``RatioBlockOptimizer`` on its own and in the training path."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from llmtune.hparams import parse_args
from llmtune.methods.block.partition import freeze_outside, partition_blocks, scope_parameters
from llmtune.methods.sparse.optimizer import RatioBlockOptimizer
from llmtune.model import load_model
from llmtune.train.run import run_sft


def ratio_optimizer(model, **kwargs):
    blocks = partition_blocks(model)
    freeze_outside(model, blocks)
    return RatioBlockOptimizer(scope_parameters(blocks), **{"lr": 1e-2, "update_ratio": 0.1, **kwargs})


def matrices(model):
    return [(n, p) for n, p in model.named_parameters() if p.ndim == 2 and ".layers." in n]


def test_every_tensor_has_its_own_scatter_selection_not_one_per_shape(bench):
    model = bench.tiny_llama()
    optimizer = ratio_optimizer(model, mask_mode="scatter")
    same_shape = [p for n, p in matrices(model) if p.shape == (16, 16)]  # q_proj and o_proj of each layer
    selections = {tuple(optimizer.selected_indices(p).tolist()) for p in same_shape}
    assert len(same_shape) == 6 and len(selections) == 6


def test_a_step_changes_the_selected_entries_only_and_small_tensors_whole(bench):
    model = bench.tiny_llama()
    optimizer = ratio_optimizer(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = bench.batches(1)[0]
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is None for p in model.parameters())  # dense gradients are freed once collected
    optimizer.step()
    for name, param in model.named_parameters():
        changed = (param != before[name]).reshape(-1).nonzero().squeeze(1)
        if not param.requires_grad:
            assert changed.numel() == 0, name
        elif param.numel() < 100:  # norm weights: 16 entries, updated whole
            assert changed.numel() == param.numel(), name
        else:
            selected = optimizer.selected_indices(param)
            assert selected.numel() == int(param.numel() * 0.1)
            assert set(changed.tolist()) == set(selected.tolist()), name


@pytest.mark.parametrize("mask_mode", ["adjacent", "scatter"])
def test_selections_slide_to_disjoint_windows_and_the_moments_restart(bench, mask_mode):
    model = bench.tiny_llama()
    optimizer = ratio_optimizer(model, update_ratio=0.25, switch_every=2, mask_mode=mask_mode)
    weight = model.get_parameter("model.layers.0.mlp.up_proj.weight")
    windows = [set(optimizer.selected_indices(weight).tolist())]
    for _ in range(4):
        bench.train_steps(model, optimizer, bench.batches(2))
        windows.append(set(optimizer.selected_indices(weight).tolist()))
        assert optimizer.state[weight]["exp_avg"].abs().sum() == 0  # fresh moments for the new window
    assert all(len(w) == weight.numel() // 4 for w in windows)
    assert set().union(*windows[:4]) == set(range(weight.numel()))  # four quarters cover the tensor ...
    assert windows[4] == windows[0]  # ... and then it wraps round


def test_optimizer_state_is_proportional_to_the_ratio(bench):
    model = bench.tiny_llama()
    optimizer = ratio_optimizer(model, update_ratio=0.1)
    bench.train_steps(model, optimizer, bench.batches(1))
    trainable = [p for p in model.parameters() if p.requires_grad]
    selected = sum(p.numel() if p.numel() < 100 else int(0.1 * p.numel()) for p in trainable)  # norms whole
    assert optimizer.optimizer_state_bytes() == 8 * selected  # two fp32 moments each, no master for fp32 weights


def test_update_ratio_one_is_adamw(bench):
    model, reference = bench.tiny_llama(), bench.tiny_llama()
    optimizer = ratio_optimizer(model, update_ratio=1.0, weight_decay=0.1, switch_every=100)
    reference_optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in matrices(reference)], "weight_decay": 0.1},
            {"params": [p for n, p in reference.named_parameters() if "layernorm" in n], "weight_decay": 0.0},
        ],
        lr=1e-2,
    )
    freeze_outside(reference, partition_blocks(reference))
    bench.train_steps(model, optimizer, bench.batches(3))
    bench.train_steps(reference, reference_optimizer, bench.batches(3))
    for (name, a), (_, b) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_weights_keep_an_fp32_master_of_the_selected_entries_only(bench):
    model = bench.tiny_llama(dtype=torch.bfloat16)
    optimizer = ratio_optimizer(model, lr=1e-4, update_ratio=0.1)
    norm = model.get_parameter("model.layers.0.input_layernorm.weight")  # 1.0: bf16 cannot show 1e-4 steps
    matrix = model.get_parameter("model.layers.0.mlp.up_proj.weight")
    bench.train_steps(model, optimizer, bench.batches(3))
    assert optimizer.state[matrix]["master"].dtype == torch.float32
    assert optimizer.state[matrix]["master"].numel() == int(matrix.numel() * 0.1)
    assert torch.equal(norm, torch.ones_like(norm)) and (optimizer.state[norm]["master"] - 1).abs().max() > 1e-4
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_resumes_the_same_selections_and_trajectory(bench, dtype):
    data = bench.batches(9)
    settings = {"mask_mode": "scatter", "switch_every": 4, "seed": 5}
    straight = bench.tiny_llama(dtype=dtype)
    bench.train_steps(straight, ratio_optimizer(straight, **settings), data)

    first = bench.tiny_llama(dtype=dtype)
    optimizer = ratio_optimizer(first, **settings)
    bench.train_steps(first, optimizer, data[:5])  # one step after the first switch
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    optimizer.remove_hooks()

    resumed = bench.tiny_llama(dtype=dtype)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    optimizer = ratio_optimizer(resumed, **settings)
    optimizer.load_state_dict(torch.load(buffer, weights_only=True))
    bench.train_steps(resumed, optimizer, data[5:])
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_clipping_acts_on_the_selected_gradient_entries(bench):
    model, dense = bench.tiny_llama(), bench.tiny_llama()
    optimizer = ratio_optimizer(model, update_ratio=0.2)
    freeze_outside(dense, partition_blocks(dense))
    ids = bench.batches(1)[0]
    model(input_ids=ids, labels=ids).loss.backward()
    dense(input_ids=ids, labels=ids).loss.backward()
    masked = []
    for (_, p), (_, q) in zip(model.named_parameters(), dense.named_parameters(), strict=True):
        if p.requires_grad:
            masked.append(q.grad.reshape(-1)[optimizer.selected_indices(p)])
    expected = torch.linalg.vector_norm(torch.cat(masked))
    norm = optimizer.clip_grad_norm_(0.01)
    torch.testing.assert_close(norm, expected)
    clipped = torch.cat([optimizer.state[p]["grad"] for _, p in scope_parameters(partition_blocks(model))])
    torch.testing.assert_close(torch.linalg.vector_norm(clipped), torch.tensor(0.01), rtol=1e-3, atol=0)


def test_a_non_finite_gradient_skips_the_whole_update(bench, caplog):
    # The dense gradients are gone when the trainer's NaN guard clears them: the optimizer checks its own.
    model = bench.tiny_llama()
    optimizer = ratio_optimizer(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = bench.batches(1)[0]
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.state[model.get_parameter("model.layers.2.mlp.up_proj.weight")]["grad"][0] = float("nan")
    with caplog.at_level("WARNING", logger="llmtune"):
        optimizer.step()
    assert "non-finite gradient at step 1; the update was skipped" in caplog.text
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_training_path_updates_a_fraction_and_logs_the_gradient_norm(tmp_path, make_config):
    config = make_config(tmp_path / "out", "sparse", max_steps=6, save_steps=3, badam_switch_interval=3)
    before = load_model(parse_args(config).model).state_dict()
    result = run_sft(parse_args(config))
    after = result.model.state_dict()
    for key, value in before.items():
        changed = (value != after[key]).float().mean().item()
        if key.startswith(("model.embed_tokens.", "model.norm.", "lm_head.")):
            assert changed == 0, key
        elif value.ndim == 2:
            assert 0 < changed <= 2 * 0.05 + 1e-3, key  # two windows of 5%
    norms = [e["grad_norm"] for e in result.log_history if "grad_norm" in e]
    assert len(norms) == 6 and all(n > 0 for n in norms)
    saved = torch.load(tmp_path / "out" / "checkpoint-3" / "optimizer.pt", weights_only=True)
    assert saved["badam"]["kind"] == "ratio" and saved["badam"]["switches"] == 1
    ids = torch.randint(5, 200, (2, 12))
    result.model(input_ids=ids, labels=ids).loss.backward()  # the gradient hooks are gone after training
    assert result.model.get_parameter("model.layers.0.mlp.up_proj.weight").grad is not None
