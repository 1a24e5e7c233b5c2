"""Tensor-train shapes: how a weight ``in x out`` is split into mode sizes, and what it costs.

A TT weight of shape ``in x out`` is a tensor with modes ``in_shape + out_shape`` where
``prod(in_shape) == in`` and ``prod(out_shape) == out``; core ``k`` has shape
``[r_{k-1}, n_k, r_k]`` with ``r_0 = r_d = 1`` and every inner rank equal to ``rank``
(as in the LoRETTA and AdaZeta reference code, whose published parameter counts assume it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

DEFAULT_MAX_FACTOR = 16

# The shapes LoRETTA's reference code hard-codes (``utils/tensor_util.py``,
# TRANSFORMERS_HIDDEN_SIZE_TO_TENSOR_SHAPE[width][features]) that are tensor-train matrices:
# {(features, width): (modes of features, modes of width)} for the ``features -> width`` projection;
# ``width -> features`` takes the reverse. The rest of that table splits the dense weight across
# mode boundaries (e.g. 4096 x 8 as [16, 16, 8, 4, 4]; the reference reshapes the contracted tensor),
# which a TT matrix contracted mode by mode cannot represent: those sizes follow the rule below.
# (AdaZeta's copy of the table changes 4096 x 64 to [8, 8, 8, 8, 8, 8]; llmtune follows LoRETTA's.)
REFERENCE_SHAPES = {
    (768, 64): ([8, 8, 12], [8, 8]),
    (4096, 64): ([16, 16, 16], [4, 4, 4]),
    (5120, 64): ([5, 8, 8, 16], [8, 8]),
    (4096, 128): ([16, 16, 16], [8, 4, 4]),
    (4096, 16): ([16, 16, 16], [4, 4]),
    (768, 8): ([8, 8, 12], [8]),
    (5120, 8): ([8, 8, 10, 8], [8]),
    (1280, 5): ([4, 8, 5, 8], [5]),
    (1600, 5): ([5, 8, 5, 8], [5]),
}


def prime_factors(n: int) -> list[int]:
    """The prime factors of ``n >= 1``, largest first (``[]`` for 1)."""
    if n < 1:
        raise ValueError(f"cannot factorise {n}: it must be a positive integer")
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return sorted(factors, reverse=True)


def factorize(n: int, max_factor: int = DEFAULT_MAX_FACTOR) -> list[int]:
    """Split ``n`` into the fewest mode sizes ``<= max_factor``, as equal as possible, largest first.

    "As equal as possible": the smallest largest mode, then the smallest next one, and so on. A
    prime above ``max_factor`` stays a mode of its own. Examples: 4096 -> [16, 16, 16],
    576 -> [9, 8, 8], 64 -> [8, 8], 11008 -> [43, 16, 16], 14336 -> [16, 14, 8, 8], 1 -> [1].
    """
    if max_factor < 2:
        raise ValueError(f"max_factor: {max_factor} must be >= 2")
    primes = prime_factors(n)
    if not primes:
        return [1]
    cap = max(max_factor, primes[0])
    count = max(1, math.ceil(math.log(n) / math.log(cap) - 1e-9))
    while True:
        modes = _most_equal(n, count, cap)
        if modes is not None:
            return modes
        count += 1


def _most_equal(n: int, count: int, cap: int) -> list[int] | None:
    """``n`` as ``count`` factors ``<= cap``, largest first, with the lexicographically smallest such list."""
    if count == 1:
        return [n] if n <= cap else None
    smallest_largest = math.ceil(n ** (1 / count) - 1e-9)
    for largest in range(max(smallest_largest, 1), min(cap, n) + 1):
        if n % largest == 0:
            rest = _most_equal(n // largest, count - 1, largest)
            if rest is not None:
                return [largest, *rest]
    return None


def tt_shape_for(in_features: int, out_features: int, max_factor: int = DEFAULT_MAX_FACTOR) -> list[int]:
    """The automatic TT shape of an ``in_features x out_features`` weight: input modes, then output modes.

    The reference's hard-coded shape where it has one (:data:`REFERENCE_SHAPES`, e.g. 4096 x 64 ->
    [16, 16, 16, 4, 4, 4], 64 x 4096 -> [4, 4, 4, 16, 16, 16], 768 x 64 -> [8, 8, 12, 8, 8]);
    otherwise each side in the fewest modes ``<= max_factor`` (:func:`factorize`), the input's in
    ascending and the output's in descending order as the reference orders them, so the largest
    modes meet in the middle and ``width -> features`` is the reverse of ``features -> width``:
    576 x 64 -> [8, 8, 9, 8, 8], 64 x 1536 -> [8, 8, 16, 12, 8].
    """
    if (in_features, out_features) in REFERENCE_SHAPES:
        modes_in, modes_out = REFERENCE_SHAPES[(in_features, out_features)]
        shape = modes_in + modes_out
    elif (out_features, in_features) in REFERENCE_SHAPES:
        features, width = REFERENCE_SHAPES[(out_features, in_features)]
        shape = width[::-1] + features[::-1]
    else:
        shape = []
    if shape and max(shape) <= max_factor:
        return shape
    return sorted(factorize(in_features, max_factor)) + factorize(out_features, max_factor)


def split_tt_shape(tt_shape: Sequence[int], in_features: int, out_features: int) -> tuple[list[int], list[int]]:
    """Split ``tt_shape`` into ``(in_shape, out_shape)``; raises ValueError when no split matches the dimensions."""
    shape = [int(n) for n in tt_shape]
    if any(n < 1 for n in shape):
        raise ValueError(f"tt_shape: {shape} has a mode size below 1")
    product = 1
    for k, n in enumerate(shape):
        product *= n
        if product == in_features and math.prod(shape[k + 1 :]) == out_features and k + 1 < len(shape):
            return shape[: k + 1], shape[k + 1 :]
    raise ValueError(
        f"tt_shape: {shape} does not split into input modes multiplying to {in_features} followed by output "
        f"modes multiplying to {out_features}"
    )


def tt_ranks(num_modes: int, rank: int) -> list[int]:
    """``[1, rank, ..., rank, 1]``: the ``num_modes + 1`` bond dimensions of a TT with ``num_modes`` cores."""
    if rank < 1:
        raise ValueError(f"rank: {rank} must be a positive integer")
    return [1] + [rank] * (num_modes - 1) + [1]


def tt_parameter_count(tt_shape: Sequence[int], rank: int, bias: int = 0) -> int:
    """Numbers in the cores of a TT with mode sizes ``tt_shape`` and inner rank ``rank`` (plus ``bias``).

    ``sum_k r_{k-1} * n_k * r_k``; e.g. ``[16, 16, 16, 4, 4, 4]`` at rank 8: 2,720.
    """
    ranks = tt_ranks(len(tt_shape), rank)
    return sum(ranks[k] * n * ranks[k + 1] for k, n in enumerate(tt_shape)) + bias
