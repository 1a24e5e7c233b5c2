"""``finetuning_type: zo``: the SPSA estimate, the sgd/adamu updates, the guard, the objectives, the wiring.

The shared promises (the loss falls, reload, resume) are in ``test_matrix.py``; these tests check
what is particular to zeroth-order training.
"""

from __future__ import annotations

import copy
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import TrainerCallback

from llmtune.arguments import parse_args
from llmtune.errors import ConfigError, NotImplementedYetError, NumericalError, TrainingInterrupted
from llmtune.methods.zo import objectives
from llmtune.methods.zo.adamu import ZerothOrderAdaMU
from llmtune.methods.zo.optimizer import ZerothOrderSGD, mix_seed
from llmtune.methods.zo.rounding import add_stochastic_
from llmtune.methods.zo.schedule import adamu_anneal
from llmtune.model import load_model
from llmtune.train import checkpoint as ckpt
from llmtune.train.run import run_sft

ZO = {"learning_rate": 1e-4}  # the tiny model's zo learning rate (see test_matrix.METHOD_OVERRIDES)


def train(config: dict, callbacks=None):
    return run_sft(parse_args(config), callbacks=callbacks)


def losses(result) -> list[float]:
    return [e["loss"] for e in result.log_history if "loss" in e]


def tiny_model():
    args = parse_args({"model_name_or_path": "llmtune/tiny-llama", "dataset": "demo_alpaca", "output_dir": "unused"})
    return load_model(args.model)


def lm_batch(rows: int = 4, length: int = 16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (rows, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bitwise_equal(before: dict, after: dict) -> None:
    for key, value in before.items():
        assert torch.equal(value.view(torch.uint8), after[key].view(torch.uint8)), f"{key} changed"


# ---------------------------------------------------------------------------------------------
# The optimizer on its own


@pytest.mark.parametrize("optimizer_class", [ZerothOrderSGD, ZerothOrderAdaMU])
def test_lr_zero_leaves_every_parameter_bitwise_equal(optimizer_class):
    model = tiny_model().eval()
    before = snapshot(model)
    extra = {"total_steps": 10, "warmup_end": 2} if optimizer_class is ZerothOrderAdaMU else {"num_queries": 2}
    optimizer = optimizer_class(model.parameters(), lr=0.0, eps=1e-2, weight_decay=0.1, **extra)
    batch = lm_batch()
    for _ in range(5):
        for query in range(optimizer.num_queries):
            optimizer.estimate(model, lambda: model(**batch).loss, query)
        optimizer.step()
    assert optimizer.last_report.skipped is None
    assert_bitwise_equal(before, snapshot(model))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_directions_give_the_same_run_bitwise_with_a_third_of_the_draws(dtype, monkeypatch):
    """zo_cache_directions: each step's z drawn once (not for each forward and the update), the weights and
    losses bitwise those of the uncached run, with two queries, two micro-batches each and a skipped step."""
    batches = [lm_batch(), {k: v.flip(0) for k, v in lm_batch().items()}]
    draws: list[tuple] = []
    real = ZerothOrderSGD._draw
    monkeypatch.setattr(ZerothOrderSGD, "_draw", lambda self, *a: draws.append(a[:2]) or real(self, *a))

    def run(cache: bool) -> tuple:
        draws.clear()
        model = tiny_model().to(dtype).eval()
        optimizer = ZerothOrderSGD(model.parameters(), lr=1e-3, eps=1e-2, num_queries=2, cache_directions=cache)
        seen = []
        for step in range(3):
            for query in range(2):
                for batch in batches:  # the same perturbation on every micro-batch
                    seen.append(optimizer.estimate(model, lambda b=batch: model(**b).loss / 2, query)[:2])
            if step == 1:
                optimizer._pending.loss_plus = float("nan")  # the guard skips this update
            optimizer.step()
        return snapshot(model), seen, len(draws), optimizer

    runs = {cache: run(cache) for cache in (False, True)}
    assert runs[True][1] == runs[False][1]
    assert_bitwise_equal(runs[False][0], runs[True][0])
    params = len(runs[True][3].params)
    assert runs[True][2] == 3 * 2 * params  # once per step, query and parameter
    assert runs[False][2] == 3 * 2 * 2 * 2 * params  # each forward of each micro-batch (the update draws via randn)
    assert not runs[True][3]._cached  # nothing kept across steps


def test_adamu_with_cached_draws_gives_the_same_run_bitwise_with_a_third_of_the_draws(monkeypatch):
    """zo_cache_directions with adamu: its two draws per parameter made once a step (not for each forward
    and the update), the weights, momenta and losses bitwise those of the uncached run, with two
    micro-batches a step, a skipped step and the annealing under way (warm-up ends at step 1)."""
    batches = [lm_batch(), {k: v.flip(0) for k, v in lm_batch().items()}]
    draws: list[int] = []
    real = ZerothOrderSGD.normal
    monkeypatch.setattr(ZerothOrderSGD, "normal", lambda self, *a, **k: draws.append(a[0]) or real(self, *a, **k))
    seeded = ZerothOrderSGD._draw  # the cache's first draw (the second goes on from the same generator)
    monkeypatch.setattr(ZerothOrderSGD, "_draw", lambda self, *a, **k: draws.append(a[0]) or seeded(self, *a, **k))

    def run(cache: bool) -> tuple:
        draws.clear()
        model = tiny_model().eval()
        optimizer = ZerothOrderAdaMU(
            model.parameters(), lr=1e-3, eps=1e-2, total_steps=4, warmup_end=1, anneal_end=3, cache_directions=cache
        )
        seen = []
        for step in range(4):
            for batch in batches:  # the same perturbation on every micro-batch
                seen.append(optimizer.estimate(model, lambda b=batch: model(**b).loss / 2, 0)[:2])
            if step == 1:
                optimizer._pending.loss_plus = float("nan")  # the guard skips this update
            optimizer.step()
        momenta = [optimizer.state[p]["momentum"].clone() for p in optimizer.params]
        return snapshot(model), seen, len(draws), optimizer, momenta

    runs = {cache: run(cache) for cache in (False, True)}
    assert runs[True][1] == runs[False][1]
    assert_bitwise_equal(runs[False][0], runs[True][0])
    for a, b in zip(runs[False][4], runs[True][4], strict=True):
        assert torch.equal(a, b)
    params = len(runs[True][3].params)
    assert runs[True][2] == 4 * params  # once per step and parameter (both draws from one seeding)
    assert runs[False][2] == 4 * 2 * 2 * params + 3 * params  # each forward of each micro-batch, and each update
    assert not runs[True][3]._cached  # nothing kept across steps


def test_perturb_and_restore_is_exact_under_bf16_autocast():
    # bf16: true runs the forwards in bfloat16; the float32 weights must come back bit for bit.
    model = tiny_model().eval()
    before = snapshot(model)
    optimizer = ZerothOrderSGD(model.parameters(), lr=0.0, eps=1e-3)
    batch = lm_batch()
    seen = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plus, minus, _ = optimizer.estimate(model, lambda: model(**batch).loss)
        seen.append(model.lm_head(torch.ones(1, 64)).dtype)
    assert plus != minus  # the forwards did see the perturbation
    assert seen == [torch.bfloat16]
    assert_bitwise_equal(before, snapshot(model))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stochastic_rounding_keeps_an_update_that_rounding_to_nearest_loses(dtype):
    # 64 weights and one update each far below their ulp (1e-4 of weights near 1: bf16's ulp there is
    # 2^-7), applied in 10,000 independent draws: the mean stored weight is the float32 result.
    draws, generator = 10_000, torch.Generator().manual_seed(0)
    weights = (1 + torch.rand(64, generator=generator)).to(dtype)
    update = torch.randn(64, generator=generator)
    lr, decay = 1e-4, 0.5
    exact = weights.float() - lr * (update + decay * weights.float())  # the hand-computed float32 step
    stored = weights.repeat(draws, 1)
    add_stochastic_(stored, update.repeat(draws, 1), lr, decay, generator, chunk_numel=1000)
    mean, error = stored.float().mean(0), stored.float().std(0) / math.sqrt(draws)
    assert torch.all((mean - exact).abs() <= 4 * error + 1e-9)
    assert (mean - weights.float()).abs().mean() > 10 * error.mean()  # it did move the weights
    nearest = exact.to(dtype)  # rounding to nearest: every update is lost
    assert torch.equal(nearest, weights)


def test_a_half_precision_step_rounds_the_float32_step_to_a_neighbour_without_bias():
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 256, bias=False).to(torch.bfloat16)
    start = layer.weight.detach().clone()
    optimizer = ZerothOrderSGD(layer.parameters(), lr=1e-3, eps=1e-2, chunk_numel=5000)
    inputs = torch.randn(8, 256, dtype=torch.bfloat16)
    _, _, projected = optimizer.estimate(layer, lambda: layer(inputs).float().square().mean())
    z = torch.randn(start.shape, generator=torch.Generator().manual_seed(mix_seed(0, 0, 0, 0)), dtype=torch.bfloat16)
    step = z * 1e-2  # the direction the bf16 forwards compared: (round(w + eps*z) - round(w - eps*z)) / (2*eps)
    seen = ((start + step) - (start - step)) / 2e-2
    assert (seen == 0).any() and not torch.equal(seen, z)
    exact = start.float() + seen.float() * (-1e-3 * projected)  # MeZO's step along it, in float32
    optimizer.step()
    stored = layer.weight.detach().float()
    nearest = exact.to(torch.bfloat16)
    other = torch.nextafter(nearest, torch.where(nearest.float() > exact, -torch.inf, torch.inf).bfloat16())
    low, high = torch.minimum(nearest, other).float(), torch.maximum(nearest, other).float()
    assert torch.all((low <= exact) & (exact <= high))
    assert torch.all((stored == low) | (stored == high))  # one of the two bf16 neighbours of the float32 step
    spread = (high - low).square().sum().sqrt() / 2  # bounds the standard deviation of the summed rounding
    assert abs((stored - exact).sum()) < 4 * spread
    assert (stored != start.float()).float().mean() > 0.3  # rounding to nearest would leave most weights


class Allocations(TorchDispatchMode):
    """Records (dtype, numel) of every tensor an operator returns that aliases none of its inputs."""

    def __init__(self):
        super().__init__()
        self.made: list[tuple[torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                self.made.append((tensor.dtype, tensor.numel()))
        return out


@pytest.mark.parametrize("optimizer_class", [ZerothOrderSGD, ZerothOrderAdaMU])
def test_a_half_precision_step_allocates_no_parameter_sized_float32_tensor(optimizer_class):
    model = tiny_model().to(torch.bfloat16).eval()
    largest = max(p.numel() for p in model.parameters())
    extra = {"total_steps": 10, "warmup_end": 0} if optimizer_class is ZerothOrderAdaMU else {}
    optimizer = optimizer_class(model.parameters(), lr=1e-3, eps=1e-2, chunk_numel=largest // 8, **extra)
    batch = lm_batch(rows=1, length=8)  # logits of 8 tokens: smaller than the largest weight
    before = snapshot(model)
    with Allocations() as recorder:
        for _ in range(2):
            optimizer.estimate(model, lambda: model(**batch).loss)
            optimizer.step()
    assert optimizer.last_report.skipped is None
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    big = [(dtype, n) for dtype, n in recorder.made if dtype == torch.float32 and n >= largest]
    assert big == []
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_the_mean_estimate_points_along_the_true_gradient():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3).double()
    inputs, targets = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 3, dtype=torch.float64)

    def loss():
        return ((model(inputs) - targets) ** 2).mean()

    true = torch.autograd.grad(loss(), list(model.parameters()))
    true = torch.cat([g.flatten() for g in true])
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = ZerothOrderSGD(model.parameters(), lr=1.0, eps=1e-4, num_queries=4, seed=1)
    total = torch.zeros_like(true)
    draws = 500
    for _ in range(draws):
        for query in range(4):
            optimizer.estimate(model, loss, query)
        optimizer.step()
        with torch.no_grad():
            total -= torch.cat([(p - s).flatten() for p, s in zip(model.parameters(), start, strict=True)])
            for p, s in zip(model.parameters(), start, strict=True):
                p.copy_(s)
    cosine = torch.nn.functional.cosine_similarity(total / draws, true, dim=0)
    assert cosine > 0.9, f"cosine {cosine:.3f}"


def test_estimate_builds_no_graph_and_no_gradient():
    model = tiny_model().eval()
    outputs = []
    model.register_forward_hook(lambda module, args, output: outputs.append(output.logits.requires_grad))
    optimizer = ZerothOrderSGD(model.parameters(), lr=1e-3)
    batch = lm_batch()
    optimizer.estimate(model, lambda: model(**batch).loss)
    optimizer.step()
    assert outputs == [False, False]
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_a_nan_loss_or_a_spike_skips_the_update():
    layer = torch.nn.Linear(3, 1)
    before = snapshot(layer)
    optimizer = ZerothOrderSGD(layer.parameters(), lr=1e-2, eps=1e-3, max_grad_ratio=20)
    x = torch.ones(1, 3)
    optimizer.estimate(layer, lambda: layer(x).sum() * float("nan"))
    optimizer.step()
    assert optimizer.last_report.skipped.startswith("non-finite loss")
    assert optimizer.consecutive_skips == 1
    assert_bitwise_equal(before, snapshot(layer))

    for _ in range(12):  # enough accepted steps to know the projected gradient's scale
        optimizer.estimate(layer, lambda: layer(x).sum())
        optimizer.step()
        assert optimizer.last_report.skipped is None
    before = snapshot(layer)
    optimizer.estimate(layer, lambda: layer(x).sum() * 1e6)
    optimizer.step()
    assert "its running scale" in optimizer.last_report.skipped
    assert_bitwise_equal(before, snapshot(layer))


def test_the_spike_guard_watches_the_loss_objective_only():
    """The accuracy and f1 objectives give a projected gradient of 0 on most steps: their first step that moves
    is then 'infinitely' above the running scale of 0. Under the loss objective such a step is skipped (with a
    message, not a ZeroDivisionError); the bounded objectives train with no ratio guard."""
    from llmtune.methods.zo.config import ZerothOrderArguments
    from llmtune.methods.zo.trainer import build_optimizer

    def run(objective: str) -> ZerothOrderSGD:
        layer = torch.nn.Linear(3, 1)
        zo = ZerothOrderArguments(zo_objective=objective)
        optimizer = build_optimizer(zo, layer.parameters(), lr=1e-2, seed=0)
        x = torch.ones(1, 3)
        for _ in range(12):  # a discrete objective that does not move: g = 0
            optimizer.estimate(layer, lambda: layer(x).sum() * 0 + 0.25)
            optimizer.step()
        with torch.no_grad():
            middle = layer(x).sum().item()
        optimizer.estimate(layer, lambda: (layer(x).sum() > middle).float())  # flips between the two forwards
        optimizer.step()
        return optimizer

    for objective in ("accuracy", "f1"):
        assert run(objective).last_report.skipped is None
    skipped = run("loss").last_report.skipped  # the same steps under the loss objective's guard
    assert skipped is not None and "above its running scale 0" in skipped


def test_a_parameter_read_outside_its_module_forward_is_refused():
    class ReadsChildWeight(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(2, 2)

        def forward(self, x):
            return x @ self.inner.weight.T  # the perturbation hook of `inner` never runs

    model = ReadsChildWeight()
    optimizer = ZerothOrderSGD([model.inner.weight], lr=1e-3)
    with pytest.raises(ConfigError, match=r"not read through their module.s forward.*inner\.weight"):
        optimizer.estimate(model, lambda: model(torch.ones(1, 2)).sum())


def test_the_seed_stream_is_in_the_state_dict():
    layer = torch.nn.Linear(4, 4)
    first = ZerothOrderAdaMU(layer.parameters(), lr=1e-2, total_steps=20, warmup_end=0.05)
    x = torch.randn(2, 4)
    for _ in range(3):
        first.estimate(layer, lambda: layer(x).pow(2).sum())
        first.step()
    state = copy.deepcopy(first.state_dict())  # as torch.save/torch.load would: no tensors shared
    assert state["zo"]["step_count"] == 3

    twin = torch.nn.Linear(4, 4)
    twin.load_state_dict(layer.state_dict())
    second = ZerothOrderAdaMU(twin.parameters(), lr=1e-2, total_steps=20, warmup_end=0.05, seed=99)
    second.load_state_dict(state)  # the saved seed and position win over the constructor's
    for optimizer, module in ((first, layer), (second, twin)):
        optimizer.estimate(module, lambda m=module: m(x).pow(2).sum())
        optimizer.step()
    assert torch.equal(layer.weight, twin.weight)


def test_adamu_schedule_is_eq_7_of_the_paper():
    # T1, T2, T3 = 0, 50, 100 at t = 25, phi 1: period 100 - 25 * 50 / 50 = 75, 0.5 + 0.5 cos(pi / 3) = 0.75;
    # phi 0 keeps the period at 100: 0.5 + 0.5 cos(pi / 4); at T2 with phi 1 the period is 50: cos(pi) = -1.
    assert adamu_anneal(25, 1.0, 0, 50, 100) == pytest.approx(0.75)
    assert adamu_anneal(25, 0.0, 0, 50, 100) == pytest.approx(0.5 + 0.5 * math.sqrt(0.5))
    assert adamu_anneal(50, 1.0, 0, 50, 100) == pytest.approx(0.0, abs=1e-12)
    # Warm-up until T1, continuous at T1, and the value reached at T2 holds until T3.
    assert adamu_anneal(0, 1.0, 10, 50, 100) == adamu_anneal(10, 1.0, 10, 50, 100) == 1.0
    assert adamu_anneal(50, 1.5, 10, 50, 100) == adamu_anneal(99, 1.5, 10, 50, 100)
    # The paper's run (T1, T2, T3 = 1024, 16000, 20000): alpha, beta1, beta2 end at 0.010, 0.131, 0.012
    # (cos(pi * 14976 / 16000), cos(pi * 14976 / 19600), cos(pi * 14976 / 14000), each as 0.5 + 0.5 cos).
    finals = [adamu_anneal(16000, phi, 1024, 16000, 20000) for phi in (1.0, 0.1, 1.5)]
    assert finals == pytest.approx([0.01007, 0.13116, 0.01194], abs=1e-5)


def test_adamu_defaults_leave_the_warm_up_in_short_runs():
    optimizer = ZerothOrderAdaMU([torch.nn.Parameter(torch.zeros(2))], total_steps=1000)
    assert (optimizer.warmup_end, optimizer.anneal_end) == (51, 800)  # 1024/20000 and 0.8 of the run
    assert optimizer.weights(50) == optimizer.weights(51) == (1.0, 1.0, 1.0)
    alpha, beta1, beta2 = optimizer.weights(400)
    assert beta2 < alpha < beta1 < 1  # phi 1.5, 1, 0.1: the larger phi anneals faster
    assert optimizer.weights(800) == optimizer.weights(999) == optimizer.weights(10**6)
    assert optimizer.weights(800) == pytest.approx((0.01007, 0.13116, 0.01194), abs=1e-3)  # same fractions


def test_one_adamu_step_is_algorithm_1_of_the_paper():
    # Four steps of ZO-AdaMU against the paper's Algorithm 1 written out by hand, with the momentum
    # oriented as the reference code does (h = sign(g) m) and z drawn from the optimizer's seed stream.
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2, bias=False).double()
    x, target = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    lr, eps, decay, seed = 0.05, 1e-3, 0.1, 5
    optimizer = ZerothOrderAdaMU(
        layer.parameters(),
        lr=lr,
        eps=eps,
        weight_decay=decay,
        seed=seed,
        warmup_end=0.1,
        anneal_end=0.5,
        total_steps=10,
    )

    def anneal(t: int, phi: float) -> float:  # Eq. 7 with T1, T2, T3 = 1, 5, 10
        return 1.0 if t <= 1 else 0.5 + 0.5 * math.cos(math.pi * (t - 1) / (10 - phi * (t - 1) * 5 / 4))

    def loss(w):
        return ((x @ w.T - target) ** 2).sum()

    w, h, signs = layer.weight.detach().clone(), torch.zeros(2, 3, dtype=torch.float64), []
    for t in range(4):
        alpha, beta1, beta2 = anneal(t, 1.0), anneal(t, 0.1), anneal(t, 1.5)
        generator = torch.Generator().manual_seed(mix_seed(seed, t, 0, 0))
        draws = [torch.randn(2, 3, generator=generator, dtype=torch.float64) for _ in range(2)]
        z_c, z_h = math.sqrt(alpha) * draws[0], h + math.sqrt(1 - alpha) * draws[1]
        m = beta1 * z_c + (1 - beta1) * z_h
        g = float(loss(w + eps * m) - loss(w - eps * m)) / (2 * eps)
        v = beta2 * z_c**2 + (1 - beta2) * z_h**2
        w = w - lr * (g * m / torch.sqrt(v + 1e-8) + decay * w)
        h = math.copysign(1.0, g) * m
        signs.append(g > 0)

        optimizer.estimate(layer, lambda: ((layer(x) - target) ** 2).sum())
        optimizer.step()
        torch.testing.assert_close(layer.weight.detach(), w, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(optimizer.state[layer.weight]["momentum"], h, rtol=1e-9, atol=1e-12)
    # The mixture was used, and the momentum of both signs (with seed 5, g < 0 at steps 0 and 2).
    assert optimizer.weights(3) != (1.0, 1.0, 1.0) and signs == [False, True, False, True]


# ---------------------------------------------------------------------------------------------
# The objectives, on constructed batches (the classification/QA data pipeline is issue #6)


def test_token_f1_is_squad_f1():
    assert objectives.token_f1("The Eiffel Tower!", "eiffel tower") == 1.0
    assert objectives.token_f1("in Paris, France", "Paris") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert objectives.token_f1("London", "Paris") == 0.0
    assert objectives.token_f1("", "") == 1.0 and objectives.token_f1("the", "Paris") == 0.0


def test_negative_accuracy_reads_the_label_words_at_the_last_token():
    class FixedLogits(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, 10)
            logits[0, 2, 7] = 5.0  # row 0 (right-padded, last token at 2) prefers word 7
            logits[1, 3, 4] = 5.0  # row 1 (no padding) prefers word 4
            logits[1, 2, 7] = 9.0  # ...but not at the wrong position
            return type("Out", (), {"logits": logits})()

    batch = {
        "input_ids": torch.ones(2, 4, dtype=torch.long),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
        objectives.LABEL_WORD_IDS: torch.tensor([4, 7]),  # class 0 = word 4, class 1 = word 7
        objectives.CLASS_LABELS: torch.tensor([1, 1]),
    }
    assert objectives.negative_accuracy(FixedLogits(), batch).item() == -0.5


def test_negative_f1_scores_greedy_answers_and_trains_through_the_optimizer():
    from llmtune.model import load_tokenizer

    args = parse_args({"model_name_or_path": "llmtune/tiny-llama", "dataset": "demo_alpaca", "output_dir": "unused"})
    model, tokenizer = load_model(args.model).eval(), load_tokenizer(args.model)
    tokenizer.padding_side = "left"
    prompts = tokenizer(["What is 2 + 2?", "Reverse abc:"], return_tensors="pt", padding=True)
    with torch.no_grad():
        generated = model.generate(**prompts, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answers = tokenizer.batch_decode(generated[:, prompts["input_ids"].shape[1] :], skip_special_tokens=True)
    batch = {**prompts, objectives.GOLD_ANSWERS: [[answers[0]], ["no such answer zzz"]]}
    value = objectives.negative_f1(model, batch, tokenizer, max_new_tokens=4)
    expected = -(objectives.token_f1(answers[0], answers[0]) + objectives.token_f1(answers[1], "no such answer zzz"))
    assert value.item() == pytest.approx(expected / 2)

    optimizer = ZerothOrderSGD([p for p in model.parameters()], lr=1e-3, eps=1e-1)
    plus, minus, projected = optimizer.estimate(model, lambda: objectives.negative_f1(model, batch, tokenizer, 4))
    assert -1.0 <= plus <= 0.0 and -1.0 <= minus <= 0.0 and projected == (plus - minus) / 0.2


def test_accuracy_and_loss_on_a_classification_batch():
    classification = pytest.importorskip("llmtune.train.classification")

    class OptionLogits(torch.nn.Module):
        """Row r puts all probability on token 5 + r at every position."""

        def forward(self, input_ids, attention_mask):
            rows = torch.arange(input_ids.shape[0])
            logits = torch.full((*input_ids.shape, 10), -30.0)
            logits[rows, :, 5 + rows] = 0.0
            return type("Out", (), {"logits": logits})()

    # Two examples with two options each; rows 0-1 belong to example 0, rows 2-3 to example 1.
    # Row r's option token is 5 + r, so every row's own option scores log(1) = 0, except row 3's (token 3).
    option_tokens = torch.tensor([5, 6, 7, 3])
    input_ids = torch.stack([torch.tensor([1, 2, int(t)]) for t in option_tokens])
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        classification.OPTION_MASK: torch.tensor([[0, 0, 1]] * 4),
        classification.OPTION_INDEX: torch.tensor([[0, 1], [2, 3]]),
        classification.CLASS_LABELS: torch.tensor([1, 1]),
    }
    model = OptionLogits()
    # Example 0: options tie at 0, argmax picks option 0 (label 1: wrong); example 1: option 0 wins (wrong).
    assert objectives.negative_accuracy(model, batch).item() == -0.0
    batch[classification.CLASS_LABELS] = torch.tensor([0, 0])
    assert objectives.negative_accuracy(model, batch).item() == -1.0
    expected = classification.classification_loss(model, batch)[0]
    assert objectives.language_model_loss(model, batch).item() == pytest.approx(expected.item())


def test_zo_trains_a_choice_task_on_its_accuracy(tmp_path, make_config):
    pytest.importorskip("llmtune.train.classification")
    config = make_config(
        tmp_path / "out",
        "zo",
        dataset="demo_sst2",
        train_as_classification=True,
        zo_objective="accuracy",
        zo_eps=1e-1,
        max_steps=6,
    )
    result = train(config)
    logged = [e for e in result.log_history if "loss" in e]
    assert len(logged) == 6 and all(-1.0 <= e["zo_loss_plus"] <= 0.0 for e in logged)


def test_accuracy_without_its_batch_keys_is_refused(tmp_path, make_config):
    message = r"zo_objective: 'accuracy' needs batches with .* or train_as_classification: true on a choice"
    with pytest.raises(NotImplementedYetError, match=message):
        train(make_config(tmp_path / "out", "zo", zo_objective="accuracy"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {},
            r"^zo_objective: f1: 'demo_alpaca' is a dataset_info.json dataset; it needs question-answering tasks "
            r"with gold answers \(demo_squad, drop, squad\); use zo_objective: loss",
        ),
        ({"dataset": "demo_sst2"}, r"^zo_objective: f1: 'demo_sst2' is a choice task"),
        ({"dataset": "demo_squad", "train_as_classification": True}, r"^zo_objective: f1 trains on generated answers"),
    ],
)
def test_f1_without_qa_data_is_one_line_before_the_model_loads(tmp_path, make_config, monkeypatch, overrides, message):
    import llmtune.model

    monkeypatch.setattr(llmtune.model, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(ConfigError, match=message):
        train(make_config(tmp_path / "out", "zo", zo_objective="f1", **overrides))


def test_qa_batches_hold_the_rendered_prompts_left_padded_and_the_gold_answers():
    import json

    from llmtune.hparams import DataArguments, ModelArguments
    from llmtune.methods.zo.qa import AnswerCollator, get_answer_dataset
    from llmtune.model import load_tokenizer

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path="llmtune/tiny-llama"))
    data = get_answer_dataset(DataArguments(dataset="demo_squad", eval_dataset="demo_squad", max_samples=3), tokenizer)
    assert (len(data.train), len(data.eval)) == (3, 3)
    rows = [json.loads(line) for line in (Path("data/tasks/demo_squad_train.jsonl")).read_text().splitlines()[:3]]
    batch = AnswerCollator(pad_token_id=0)([data.train[i] for i in range(3)])
    assert batch[objectives.GOLD_ANSWERS] == [row["answers"]["text"] for row in rows]
    for row, ids, mask in zip(rows, batch["input_ids"], batch["attention_mask"], strict=True):
        assert mask[-1] == 1 and mask.tolist() == sorted(mask.tolist())  # padding on the left only
        prompt = f"Title: {row['title']}\nContext: {row['context']}\nQuestion: {row['question']}\nAnswer:"
        assert tokenizer.decode(ids[mask.bool()], skip_special_tokens=True) == prompt


def test_f1_trains_on_qa_tasks_and_evaluates_minus_the_f1_of_the_saved_model(tmp_path, make_config):
    import json

    from llmtune.hparams import DataArguments, ModelArguments
    from llmtune.methods.zo.qa import get_answer_dataset
    from llmtune.model import load_tokenizer

    # A QA task whose gold answers are, for every other row, what the untrained model answers: F1 is neither 0 nor 1.
    tokenizer = load_tokenizer(ModelArguments(model_name_or_path="llmtune/tiny-llama"))
    base = load_model(ModelArguments(model_name_or_path="llmtune/tiny-llama")).eval()
    # rows whose prompts have one length: no padding, so batched and one-by-one greedy answers agree
    lines = Path("data/tasks/demo_squad_train.jsonl").read_text().splitlines()[:64]
    demo = get_answer_dataset(DataArguments(dataset="demo_squad", max_samples=64), tokenizer).train
    lengths = [len(ids) for ids in demo["prompt_ids"]]
    common = max(set(lengths), key=lengths.count)
    rows = [json.loads(line) for line, n in zip(lines, lengths, strict=True) if n == common][:6]

    def greedy(model, ids: list[int]) -> str:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]), max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        return tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)

    folder = tmp_path / "qa"
    folder.mkdir()
    (folder / "tasks.json").write_text(
        json.dumps({"qa": {"base": "squad", "file_name": {"train": "qa.jsonl", "eval": "qa.jsonl"}}})
    )
    (folder / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = get_answer_dataset(DataArguments(dataset="qa", dataset_dir=str(folder)), tokenizer)
    for i, row in enumerate(rows):
        row["answers"]["text"] = [greedy(base, data.train[i]["prompt_ids"]) if i % 2 == 0 else "zzz qqq"]
    (folder / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    config = make_config(
        tmp_path / "out", "zo", dataset="qa", eval_dataset="qa", dataset_dir=str(folder), zo_objective="f1",
        zo_max_new_tokens=3, zo_eps=1e-3, max_steps=2, per_device_eval_batch_size=3, learning_rate=1e-9,
    )  # fmt: skip
    result = train(config)
    steps = [e for e in result.log_history if "zo_loss_plus" in e]
    assert len(steps) == 2 and all(-1.0 <= e["zo_loss_plus"] <= 0.0 for e in steps)
    # the final eval loss is minus the mean token F1 of the saved model's greedy answers, computed here anew
    eval_loss = [e["eval_loss"] for e in result.log_history if "eval_loss" in e][-1]
    model = load_model(ModelArguments(model_name_or_path=str(tmp_path / "out"))).eval()
    data = get_answer_dataset(DataArguments(dataset="qa", dataset_dir=str(folder)), tokenizer)
    scores = [
        max(objectives.token_f1(greedy(model, row["prompt_ids"]), g) for g in row["answers"]) for row in data.train
    ]
    assert 0 < sum(scores) < len(scores)
    assert eval_loss == pytest.approx(-sum(scores) / len(scores), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# The trainer


class NoBackward(TrainerCallback):
    """Fail if autograd computes any gradient for a trainable weight; check no .grad after each step."""

    def __init__(self):
        self.fired: list[str] = []
        self.steps = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.register_hook(lambda grad, name=name: self.fired.append(name))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        assert all(p.grad is None for p in model.parameters())
        self.steps += 1


def test_training_runs_no_backward_and_leaves_no_grad(tmp_path, make_config, monkeypatch):
    def no_backward(*args, **kwargs):
        raise AssertionError("backward called")

    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    probe = NoBackward()
    train(make_config(tmp_path / "out", "zo", max_steps=5, **ZO), callbacks=[probe])
    assert probe.steps == 5 and probe.fired == []


def test_the_same_seed_gives_the_same_trajectory(tmp_path, make_config):
    runs = [train(make_config(tmp_path / f"run{i}", "zo", max_steps=15, **ZO)) for i in range(2)]
    other = train(make_config(tmp_path / "other", "zo", max_steps=15, seed=1, **ZO))
    assert losses(runs[0]) == losses(runs[1])
    assert losses(other) != losses(runs[0])
    logged = [e for e in runs[0].log_history if "loss" in e]
    assert all({"zo_loss_plus", "zo_loss_minus", "zo_projected_grad", "zo_skipped"} <= set(e) for e in logged)
    assert "grad_norm" not in logged[0]


@pytest.mark.parametrize("master", [True, False])
def test_bf16_forwards_leave_the_weights_exact(tmp_path, make_config, monkeypatch, master):
    # With the update switched off, a bf16 run returns the weights it started from bit for bit: float32
    # ones with zo_master_weights, else the checkpoint's weights in bf16 (no float32 copy is kept).
    monkeypatch.setenv("LLMTUNE_ALLOW_CPU_BF16", "1")
    monkeypatch.setattr(ZerothOrderSGD, "_update", lambda self, *args: None)
    config = make_config(tmp_path / "out", "zo", max_steps=5, bf16=True, zo_master_weights=master, **ZO)
    before = snapshot(load_model(parse_args(config).model))
    if not master:
        before = {k: v.to(torch.bfloat16) for k, v in before.items()}
    result = train(config)
    assert_bitwise_equal(before, snapshot(result.model))
    assert {p.dtype for p in result.model.parameters()} == {torch.float32 if master else torch.bfloat16}
    assert result.log_history[0]["zo_loss_plus"] != result.log_history[0]["zo_loss_minus"]


@pytest.mark.slow
def test_a_bf16_run_follows_the_float32_run(tmp_path, make_config, monkeypatch):
    # Measured: 300 steps, mean loss of the last 50. On an AMD EPYC (bf16 matmuls emulated): fp32 2.988,
    # bf16 2.965 (0.8%); updating along z instead of the direction the bf16 forwards saw gave 3.104. On an
    # Intel Xeon with AMX-BF16 (native bf16 kernels): fp32 2.986, bf16 3.084 (3.3%). The end point depends
    # on the CPU's bf16 kernels, so this asks that the bf16 run learn most of what the float32 run learns;
    # the update direction itself is checked exactly by
    # test_a_half_precision_step_rounds_the_float32_step_to_a_neighbour_without_bias.
    monkeypatch.setenv("LLMTUNE_ALLOW_CPU_BF16", "1")
    common = {"max_steps": 300, "save_steps": 1000, **ZO}
    full = losses(train(make_config(tmp_path / "fp32", "zo", **common)))
    half = train(make_config(tmp_path / "bf16", "zo", bf16=True, **common))
    assert all(p.dtype == torch.bfloat16 for p in half.model.parameters())
    start, end = sum(full[:20]) / 20, sum(full[-50:]) / 50
    assert end < 0.8 * start  # the float32 run did learn
    assert start - sum(losses(half)[-50:]) / 50 >= 0.8 * (start - end)


def test_a_bf16_run_resumes_to_the_same_trajectory(tmp_path, make_config, monkeypatch):
    # The rounding draws come from the seed stream in optimizer.pt: the resumed weights are bitwise the same.
    monkeypatch.setenv("LLMTUNE_ALLOW_CPU_BF16", "1")
    common = {"bf16": True, "max_steps": 12, "save_steps": 100, **ZO}
    straight = train(make_config(tmp_path / "straight", "zo", **common))
    config = make_config(tmp_path / "resumed", "zo", **{**common, "save_steps": 6})
    with pytest.raises(TrainingInterrupted):
        train(config, callbacks=[SignalAtStep(8)])
    resumed = train({**config, "resume_from_checkpoint": True})
    first = {e["step"]: e["loss"] for e in straight.log_history if "loss" in e}
    second = {e["step"]: e["loss"] for e in resumed.log_history if "loss" in e}
    assert [second[s] for s in range(9, 13)] == [first[s] for s in range(9, 13)]
    assert all(p.dtype == torch.bfloat16 for p in resumed.model.parameters())
    assert_bitwise_equal(snapshot(straight.model), snapshot(resumed.model))


@pytest.mark.parametrize("target", ["lora", "prefix"])
def test_an_adapter_target_changes_only_adapter_parameters(tmp_path, make_config, target):
    config = make_config(tmp_path / "out", "zo", max_steps=10, zo_target=target, learning_rate=5e-3, zo_eps=1e-2)
    before = snapshot(load_model(parse_args(config).model))
    model = train(config).model
    base = model.get_base_model().state_dict()
    for key, value in before.items():
        name = key.replace(".weight", ".base_layer.weight") if f"{key[:-7]}.base_layer.weight" in base else key
        assert torch.equal(value, base[name]), f"frozen weight {key} changed"
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    kind = "lora_" if target == "lora" else "prompt_encoder"
    assert trained and all(kind in n for n, _ in trained)
    if target == "lora":
        assert all(p.abs().sum() > 0 for n, p in trained if "lora_B" in n)  # B starts at zero


def test_adamu_runs_and_differs_from_sgd(tmp_path, make_config):
    common = {"max_steps": 12, "zo_adamu_warmup_end": 4, "learning_rate": 5e-5}
    sgd = train(make_config(tmp_path / "sgd", "zo", **common))
    adamu = train(make_config(tmp_path / "adamu", "zo", zo_optimizer="adamu", **common))
    assert all(math.isfinite(x) for x in losses(adamu))
    assert losses(adamu)[1:] != losses(sgd)[1:]  # step 1's loss is before any update
    weights = [dict(r.model.named_parameters())["lm_head.weight"] for r in (sgd, adamu)]
    assert not torch.equal(*weights)


def test_gradient_accumulation_equals_a_batch_k_times_larger(tmp_path, make_config):
    big = train(make_config(tmp_path / "big", "zo", max_steps=4, per_device_train_batch_size=16, **ZO))
    accumulated = train(
        make_config(
            tmp_path / "acc", "zo", max_steps=4, per_device_train_batch_size=8, gradient_accumulation_steps=2, **ZO
        )
    )
    logs = [[e for e in r.log_history if "loss" in e] for r in (big, accumulated)]
    for one, two in zip(*logs, strict=True):
        assert two["zo_projected_grad"] == pytest.approx(one["zo_projected_grad"], rel=1e-3, abs=1e-3)
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    for (name, a), b in zip(big.model.named_parameters(), accumulated.model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)


class PoisonAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step - 1:
            with torch.no_grad():
                model.get_input_embeddings().weight.fill_(float("nan"))


def test_nan_losses_skip_updates_then_stop_the_run(tmp_path, make_config, caplog):
    config = make_config(tmp_path / "out", "zo", save_steps=4, zo_max_skips=3, **ZO)
    with (
        caplog.at_level("WARNING", logger="llmtune"),
        pytest.raises(
            NumericalError,
            match=r"zo: 3 updates in a row were skipped \(steps 6-8; last: non-finite loss .*weights of step 5 "
            r"and the last good checkpoint is .*checkpoint-4",
        ),
    ):
        train(config, callbacks=[PoisonAtStep(6)])
    assert "zo: step 6: update skipped: non-finite loss" in caplog.text
    assert [c.step for c in ckpt.list_checkpoints(tmp_path / "out") if c.complete] == [4]


class SignalAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_adamu_resumes_to_the_same_trajectory(tmp_path, make_config):
    # The momentum buffers and the seed stream travel in optimizer.pt (the sgd row is in test_matrix).
    common = {"zo_optimizer": "adamu", "zo_adamu_warmup_end": 3, "learning_rate": 5e-5}
    straight = train(make_config(tmp_path / "straight", "zo", **common))
    config = make_config(tmp_path / "resumed", "zo", **common)
    with pytest.raises(TrainingInterrupted):
        train(config, callbacks=[SignalAtStep(7)])
    resumed = train({**config, "resume_from_checkpoint": True})
    first = {e["step"]: e["loss"] for e in straight.log_history if "loss" in e}
    second = {e["step"]: e["loss"] for e in resumed.log_history if "loss" in e}
    assert [second[s] for s in range(8, 21)] == pytest.approx([first[s] for s in range(8, 21)], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"zo_target": "lroa"}, "zo_target: 'lroa' is not one of full, lora, prefix (did you mean 'lora'?)"),
        ({"zo_optimizer": "adam"}, "zo_optimizer: 'adam' is not one of adamu, sgd"),
        ({"zo_eps": 0}, "zo_eps: 0.0 must be > 0"),
        ({"zo_eps": "nan"}, "zo_eps: nan must be > 0"),
        ({"zo_num_queries": 0}, "zo_num_queries: 0 must be a positive integer"),
        ({"zo_optimizer": "adamu", "zo_num_queries": 2}, "zo_num_queries: 2 is not supported with zo_optimizer: adamu"),
        ({"zo_adamu_phi_beta2": 6}, "zo_adamu_phi_beta2: 6.0 must be in [0, 5) with zo_adamu_anneal_end 0.8"),
        ({"zo_adamu_warmup_end": -1}, "zo_adamu_warmup_end: -1.0 must be a fraction in [0, 1] or a step count"),
    ],
)
def test_bad_zo_options_are_one_line(tmp_path, make_config, override, message):
    with pytest.raises(ConfigError) as info:
        parse_args(make_config(tmp_path / "out", "zo", **override))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_dora_is_refused_with_zo_lora(tmp_path, make_config):
    with pytest.raises(ConfigError, match="use_dora: true is not supported with zo_target: lora"):
        train(make_config(tmp_path / "out", "zo", zo_target="lora", use_dora=True))


def test_the_loss_trend_guard_sees_a_slow_climb_but_not_noise():
    import random

    from llmtune.methods.zo.trainer import LossTrend

    climbing = LossTrend(factor=2.0, window=20)
    losses = [4.0 + 0.05 * step for step in range(200)]  # +0.05 a step: no single step is outsized
    stopped = next(step for step, loss in enumerate(losses) if climbing.update(loss))
    # the start is the first 20 losses' mean, 4.475; the average lags a steady climb by (1 - a) / a = 9.5 steps
    # (a = 2 / 21), so it passes 2 x 4.475 = 8.95 when 4 + 0.05 (step - 9.5) does: step 108.5
    assert stopped == 109
    noisy, rng = LossTrend(factor=2.0, window=20), random.Random(0)
    assert not any(noisy.update(0.7 + rng.uniform(-0.5, 0.5)) for _ in range(2000))
    assert not any(LossTrend(factor=0.0).update(10.0**step) for step in range(50))  # 0: never


def test_a_climbing_zo_run_stops_with_a_hint(tmp_path, make_config):
    from llmtune.arguments import parse_args
    from llmtune.errors import NumericalError
    from llmtune.train.run import run_sft

    config = make_config(tmp_path / "out", "zo", learning_rate=3e-2, max_steps=400, zo_max_grad_ratio=0.0)
    with pytest.raises(NumericalError, match=r"the loss is climbing.*Lower learning_rate \(now 0.03\)"):
        run_sft(parse_args(config))


def test_the_forwards_see_w_plus_eps_z_in_buffers_reused_across_modules_and_steps():
    # Each module's perturbed weights live in buffers the optimizer keeps (no allocation per module and
    # forward); a module's weight and bias get separate ones, and the values are direction()'s exactly.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = ZerothOrderSGD(list(model.parameters()), lr=0.1, eps=1e-2, seed=5)
    seen: list[dict[str, torch.Tensor]] = []
    for module in model:
        module.register_forward_hook(lambda m, a, o: seen.append({n: p.clone() for n, p in m._parameters.items()}))
    x = torch.ones(1, 3)
    kept = []
    for sign in (1.0, -1.0):
        seen.clear()
        with torch.no_grad(), optimizer.perturbed(model, 0, sign):
            model(x)
        for module, values in zip(model, seen, strict=True):
            for name, value in values.items():
                param = module._parameters[name]  # the stored weight again
                z = optimizer.direction(optimizer._index[id(param)], 0)
                assert torch.equal(value, param.detach() + sign * 1e-2 * z), name
        kept.append({id(b) for buffers in optimizer._free.values() for b in buffers})
    assert len(kept[0]) == 2 and kept[0] == kept[1]  # weight and bias: two buffers, the same ones both times
