"""``TensorTrainLinear`` and the TT shape helpers: the forward is x @ W, the count is the TT formula."""

from __future__ import annotations

import math

import pytest
import torch

from llmtune.methods.tensor_train import TensorTrainLinear, factorize, split_tt_shape, tt_parameter_count, tt_shape_for


@pytest.mark.parametrize(
    ("in_features", "out_features", "rank", "tt_shape", "bias"),
    [
        (64, 8, 4, None, False),
        (8, 64, 3, None, True),
        (128, 64, 5, None, True),
        (48, 30, 2, [4, 12, 5, 6], False),  # an explicit shape with uneven modes
        (64, 64, 8, [2, 32, 64], True),  # one input mode split, one output mode
        (7, 11, 3, None, False),  # primes: one mode each
    ],
)
def test_to_dense_is_what_the_forward_computes(in_features, out_features, rank, tt_shape, bias):
    torch.manual_seed(0)
    layer = TensorTrainLinear(in_features, out_features, rank, tt_shape=tt_shape, bias=bias).double()
    if bias:
        torch.nn.init.normal_(layer.bias)
    x = torch.randn(3, 5, in_features, dtype=torch.float64)
    expected = x @ layer.to_dense() + (layer.bias if bias else 0)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    assert layer.to_dense().shape == (in_features, out_features)


def test_the_forward_never_builds_the_dense_weight(monkeypatch):
    layer = TensorTrainLinear(64, 16, 4)
    monkeypatch.setattr(TensorTrainLinear, "to_dense", lambda self: pytest.fail("forward called to_dense"))
    layer(torch.randn(2, 64))


@pytest.mark.parametrize(("shape", "rank"), [([16, 16, 16, 4, 4, 4], 8), ([8, 8, 8, 8], 5), ([3, 5], 4), ([9], 3)])
def test_parameter_count_matches_the_tt_formula(shape, rank):
    # sum_k r_{k-1} n_k r_k with r_0 = r_d = 1 and every inner rank equal to `rank`.
    d = len(shape)
    ranks = [1] + [rank] * (d - 1) + [1]
    formula = sum(ranks[k] * shape[k] * ranks[k + 1] for k in range(d))
    assert tt_parameter_count(shape, rank) == formula
    in_modes = 1 if d == 1 else d // 2
    fan_in, fan_out = math.prod(shape[:in_modes]), math.prod(shape[in_modes:])
    if d == 1:  # a single mode cannot hold both sides
        return
    layer = TensorTrainLinear(fan_in, fan_out, rank, tt_shape=shape, bias=True)
    assert sum(p.numel() for p in layer.parameters()) == formula + fan_out == layer.parameter_count


def test_the_reference_adapter_shape_counts_as_published():
    # LoRETTA_adp on Llama-2-7B: TT [16,16,16,4,4,4] down and up, rank 8, biases, 3 adapters x 32 layers.
    per_adapter = 2 * tt_parameter_count([16, 16, 16, 4, 4, 4], 8) + 64 + 4096
    assert 3 * 32 * per_adapter == 921_600


@pytest.mark.parametrize(
    ("n", "expected"),
    [(4096, [16, 16, 16]), (64, [8, 8]), (11008, [43, 16, 16]), (14336, [16, 14, 8, 8]), (1, [1]), (97, [97])],
)
def test_factorize_uses_few_balanced_modes(n, expected):
    assert factorize(n) == expected
    assert math.prod(factorize(n)) == n


@pytest.mark.parametrize("n", [2, 30, 100, 768, 1000, 5120, 8192, 13824, 65536])
def test_factorize_modes_multiply_back_and_respect_the_cap(n):
    modes = factorize(n, max_factor=16)
    assert math.prod(modes) == n
    assert all(m <= 16 for m in modes)
    assert len(modes) == max(1, math.ceil(math.log(n, 16) - 1e-9))  # the fewest modes possible


def test_tt_shape_puts_input_modes_first():
    shape = tt_shape_for(4096, 64)
    assert shape == [16, 16, 16, 8, 8]
    assert split_tt_shape(shape, 4096, 64) == ([16, 16, 16], [8, 8])


def test_a_shape_that_does_not_fit_the_dimensions_is_refused():
    with pytest.raises(ValueError, match=r"tt_shape: \[4, 4, 4\] does not split into input modes multiplying to 16"):
        TensorTrainLinear(16, 8, 2, tt_shape=[4, 4, 4])


def test_zero_init_gives_a_zero_map_that_still_learns():
    torch.manual_seed(0)
    layer = TensorTrainLinear(32, 16, 4, init="zeros", bias=True)
    x = torch.randn(4, 32)
    assert torch.count_nonzero(layer(x)) == 0
    assert torch.count_nonzero(layer.to_dense()) == 0
    (layer(x) - 1).pow(2).sum().backward()
    assert layer.cores[-1].grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0


def test_normal_init_gives_the_target_weight_scale():
    torch.manual_seed(0)
    layer = TensorTrainLinear(256, 256, 4, std=0.05)
    # A product of d Gaussians is heavy-tailed: compare the second moment, loosely.
    rms = layer.to_dense().pow(2).mean().sqrt().item()
    assert 0.03 < rms < 0.08


def test_every_core_is_a_parameter_of_the_layer_itself():
    # zo perturbs a parameter through its owning module's forward hooks: no ParameterList in between.
    layer = TensorTrainLinear(64, 8, 4, bias=True)
    own = dict(layer.named_parameters(recurse=False))
    assert set(own) == {f"core_{k}" for k in range(layer.num_cores)} | {"bias"}
