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
    [
        (4096, [16, 16, 16]),
        (64, [8, 8]),
        (576, [9, 8, 8]),  # not [12, 8, 6]: the smallest largest mode
        (1536, [16, 12, 8]),
        (11008, [43, 16, 16]),
        (14336, [16, 14, 8, 8]),
        (1, [1]),
        (97, [97]),
    ],
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


# Every shape LoRETTA's reference hard-codes (loretta/utils/tensor_util.py,
# TRANSFORMERS_HIDDEN_SIZE_TO_TENSOR_SHAPE[width][features]) that is a TT matrix (the features' modes,
# then the width's): {(features, width): shape of the features -> width projection}.
REFERENCE_TT_MATRIX_SHAPES = {
    (768, 64): [8, 8, 12, 8, 8],
    (4096, 64): [16, 16, 16, 4, 4, 4],
    (5120, 64): [5, 8, 8, 16, 8, 8],
    (4096, 128): [16, 16, 16, 8, 4, 4],
    (4096, 16): [16, 16, 16, 4, 4],
    (768, 8): [8, 8, 12, 8],
    (5120, 8): [8, 8, 10, 8, 8],
    (1280, 5): [4, 8, 5, 8, 5],
    (1600, 5): [5, 8, 5, 8, 5],
}


@pytest.mark.parametrize(("features", "width"), sorted(REFERENCE_TT_MATRIX_SHAPES))
def test_tt_shapes_are_the_references_both_ways(features, width):
    shape = REFERENCE_TT_MATRIX_SHAPES[(features, width)]
    assert tt_shape_for(features, width) == shape
    assert tt_shape_for(width, features) == shape[::-1]  # the up-projection: the same cores, reversed
    assert TensorTrainLinear(features, width, 2).tt_shape == shape


@pytest.mark.parametrize(
    ("in_features", "out_features", "shape"),
    [
        # SmolLM2-135M (hidden 576, MLP 1536) at bottleneck 64, and a 64-wide model: the input's modes
        # ascending, the output's descending, as the reference orders its shapes.
        (576, 64, [8, 8, 9, 8, 8]),
        (64, 576, [8, 8, 9, 8, 8]),
        (1536, 64, [8, 12, 16, 8, 8]),
        (64, 1536, [8, 8, 16, 12, 8]),
        (64, 64, [8, 8, 8, 8]),
        (4096, 8, [16, 16, 16, 8]),  # the reference's [16, 16, 8, 4, 4] is not a TT matrix
    ],
)
def test_tt_shapes_of_other_sizes_follow_the_rule(in_features, out_features, shape):
    assert tt_shape_for(in_features, out_features) == shape
    assert tt_shape_for(out_features, in_features) == shape[::-1]


def test_tt_shape_puts_input_modes_first_and_respects_max_factor():
    shape = tt_shape_for(4096, 64)
    assert split_tt_shape(shape, 4096, 64) == ([16, 16, 16], [4, 4, 4])
    assert tt_shape_for(4096, 64, max_factor=8) == [8, 8, 8, 8, 8, 8]  # the reference's 16s do not fit


def test_reference_init_draws_the_cores_as_the_reference_code():
    # The reference's TensorTrain.build_factors_Gaussian: core k = randn(r_k, n_k, r_{k+1}) / sqrt(r_{k+1})
    # * sdv ** (1 / d) with sdv = sqrt(1 / (in + out)); its bias uniform in +-1 / sqrt(out).
    torch.manual_seed(3)
    layer = TensorTrainLinear(64, 16, 4, bias=True, init="reference")
    torch.manual_seed(3)
    shape, ranks, sdv = [8, 8, 16], [1, 4, 4, 1], math.sqrt(1 / (64 + 16))
    assert layer.tt_shape == shape and layer.ranks == ranks
    for k, core in enumerate(layer.cores):
        expected = torch.randn(ranks[k], shape[k], ranks[k + 1]) / math.sqrt(ranks[k + 1]) * sdv ** (1 / 3)
        torch.testing.assert_close(core.detach(), expected, rtol=1e-6, atol=1e-7)
    assert 0 < layer.bias.abs().max() <= 1 / math.sqrt(16) and torch.count_nonzero(layer.bias) == 16


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
