"""``finetuning_type: sparse`` (BAdam's ratio mode): ``RatioBlockOptimizer`` on its own and in the training path."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from llmtune.arguments import parse_args
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


def adjacent_window(numel: int, ratio: float, window: int) -> torch.Tensor:
    """The flat indices BAdam's adjacent mode updates in its ``window``-th window (tensors under 100 entries: all)."""
    if numel < 100:
        return torch.arange(numel)
    count = int(numel * ratio)
    return (window * count + torch.arange(count)) % numel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("max_norm", [None, 0.05])
def test_every_step_is_adamw_on_the_window_computed_by_hand(bench, dtype, max_norm):
    """Five steps, switch every 2 (windows 0, 0, 1, 1, 2): AdamW on the window's entries, fresh moments per window.

    The twin model is updated by hand: its dense gradient restricted to the window (clipped jointly when
    ``max_norm``), AdamW with bias correction counted from the window's first step, decay on matrices
    only, an fp32 copy of the window's entries for bf16 weights; every other entry untouched.
    """
    lr, ratio, every, (beta1, beta2), eps, decay = 1e-2, 0.25, 2, (0.9, 0.999), 1e-8, 0.1
    model, twin = bench.tiny_llama(dtype=dtype), bench.tiny_llama(dtype=dtype)
    optimizer = ratio_optimizer(model, lr=lr, update_ratio=ratio, switch_every=every, weight_decay=decay)
    freeze_outside(twin, partition_blocks(twin))
    params = {n: p for n, p in twin.named_parameters() if p.requires_grad}
    for step, ids in enumerate(bench.batches(5)):
        if step % every == 0:  # a new window: its entries, zero moments, an fp32 copy of the weights
            windows = {n: adjacent_window(p.numel(), ratio, step // every) for n, p in params.items()}
            moments = {n: (torch.zeros(len(i)), torch.zeros(len(i))) for n, i in windows.items()}
            masters = {n: p.detach().reshape(-1)[windows[n]].float() for n, p in params.items()}
            t = 0
        t += 1
        model(input_ids=ids, labels=ids).loss.backward()
        if max_norm:
            optimizer.clip_grad_norm_(max_norm)
        optimizer.step()
        optimizer.zero_grad()

        twin(input_ids=ids, labels=ids).loss.backward()
        grads = {n: p.grad.reshape(-1)[windows[n]].float() for n, p in params.items()}
        if max_norm:  # torch.nn.utils.clip_grad_norm_'s rule, over the window's entries only
            total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
            grads = {n: g * torch.clamp(max_norm / (total + 1e-6), max=1.0) for n, g in grads.items()}
        with torch.no_grad():
            for name, param in params.items():
                m, v = moments[name]
                m.mul_(beta1).add_(grads[name], alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grads[name], grads[name], value=1 - beta2)
                denominator = v.sqrt() / math.sqrt(1 - beta2**t) + eps
                if param.ndim == 2:  # decoupled decay on matrices, none on norms
                    masters[name].mul_(1 - lr * decay)
                masters[name].addcdiv_(m, denominator, value=-lr / (1 - beta1**t))
                param.view(-1)[windows[name]] = masters[name].to(dtype)
                param.grad = None
        for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
            assert torch.equal(a, b), f"step {step + 1}: {name}: {(a - b).abs().max():.3g} apart"
    assert optimizer.switches == 2


def test_matches_the_badam_packages_ratio_optimizer_over_two_switches(bench, badam):
    """Adjacent windows, against ``badam.BlockOptimizerRatio`` (1.4), step for step.

    The reference masks tensors under its threshold too and shares one mask per shape (the same
    windows in adjacent mode), decays nothing and puts eps after the bias correction, so: every
    tensor masked (min_masked_numel 0, preserve_threshold 0), no weight decay, and an eps too small
    to matter. A model without tied embeddings, whose embedding and head the reference freezes.
    """
    ours, reference = bench.tiny_llama(), bench.tiny_llama()
    # Some gradient entries here are ~1e-8, where eps 1e-8 before or after the bias correction moves an
    # entry by up to 0.7 lr: eps 1e-20 leaves 1e-7 between the two over five steps (a wrong window: lr).
    settings = {"lr": 1e-2, "update_ratio": 0.25, "switch_every": 2, "eps": 1e-20}
    optimizer = ratio_optimizer(ours, min_masked_numel=0, **settings)
    freeze_outside(reference, partition_blocks(reference))
    trained = [p for p in reference.parameters() if p.requires_grad]
    reference_optimizer = badam.BlockOptimizerRatio(
        [{"params": trained}],
        list(reference.named_parameters()),
        update_ratio=settings["update_ratio"],
        switch_every=settings["switch_every"],
        preserve_threshold=0,
        mask_mode="adjacent",
        lr=settings["lr"],
        eps=settings["eps"],
        verbose=0,
    )
    before = {n: p.detach().clone() for n, p in reference.named_parameters()}
    for step, ids in enumerate(bench.batches(5)):
        bench.train_steps(ours, optimizer, [ids])
        bench.train_steps(reference, reference_optimizer, [ids])
        for (name, a), (_, b) in zip(ours.named_parameters(), reference.named_parameters(), strict=True):
            torch.testing.assert_close(
                a, b, rtol=1e-5, atol=1e-6, msg=lambda m, s=step, n=name: f"step {s + 1}: {n}: {m}"
            )
    changed = {n: (p != before[n]).float().mean().item() for n, p in reference.named_parameters()}
    assert changed["model.layers.0.self_attn.q_proj.weight"] == 0.75  # three windows of a quarter each


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


def test_clipping_scales_the_selected_gradient_entries_and_only_them(bench):
    model, dense = bench.tiny_llama(), bench.tiny_llama()
    optimizer = ratio_optimizer(model, update_ratio=0.2)
    freeze_outside(dense, partition_blocks(dense))
    ids = bench.batches(1)[0]
    model(input_ids=ids, labels=ids).loss.backward()
    dense(input_ids=ids, labels=ids).loss.backward()
    pairs = zip(model.parameters(), dense.parameters(), strict=True)
    trained = [(p, q) for p, q in pairs if p.requires_grad]
    masked = [q.grad.reshape(-1)[optimizer.selected_indices(p)] for p, q in trained]
    expected = torch.linalg.vector_norm(torch.cat(masked))
    torch.testing.assert_close(optimizer.clip_grad_norm_(1e9), expected)  # under the limit: nothing changes
    for (p, _), grad in zip(trained, masked, strict=True):
        assert torch.equal(optimizer.state[p]["grad"], grad)
    norm = optimizer.clip_grad_norm_(0.01)
    torch.testing.assert_close(norm, expected)
    for (p, _), grad in zip(trained, masked, strict=True):  # every selected entry times 0.01 / norm
        torch.testing.assert_close(optimizer.state[p]["grad"], grad * (0.01 / expected), rtol=1e-5, atol=0)


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
