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

    A prime above ``max_factor`` stays a mode of its own. Examples: 4096 -> [16, 16, 16],
    64 -> [8, 8], 11008 -> [43, 16, 16], 14336 -> [16, 14, 8, 8], 1 -> [1].
    """
    if max_factor < 2:
        raise ValueError(f"max_factor: {max_factor} must be >= 2")
    primes = prime_factors(n)
    if not primes:
        return [1]
    cap = max(max_factor, primes[0])
    count = max(1, math.ceil(math.log(n) / math.log(cap) - 1e-9))
    while True:
        bins = [1] * count
        for p in primes:  # largest first, each into the currently smallest mode
            smallest = min(range(count), key=lambda i: bins[i])
            bins[smallest] *= p
        if max(bins) <= cap:
            return sorted(bins, reverse=True)
        count += 1


def tt_shape_for(in_features: int, out_features: int, max_factor: int = DEFAULT_MAX_FACTOR) -> list[int]:
    """The automatic TT shape of an ``in_features x out_features`` weight: input modes, then output modes."""
    return factorize(in_features, max_factor) + factorize(out_features, max_factor)


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
