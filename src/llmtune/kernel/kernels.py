"""Empirical NTK kernels of the label-word logits (Malladi et al., 2023, "A Kernel-Based View of LM Fine-Tuning").

For outputs ``f(x) in R^C`` and parameters ``theta``, with ``J(x) = df(x)/dtheta`` of shape ``[C, P]``:

* ``sgd``:               ``K[i, c, j, d] = <J_c(x_i), J_d(x_j)>`` (the eNTK; symmetric PSD);
* ``signgd``:            ``K[i, c, j, d] = <sign J_c(x_i), sign J_d(x_j)>``;
* ``asymmetric_signgd``: ``K[i, c, j, d] = <sign J_c(x_i), J_d(x_j)>``, ``x_i`` a training example: one
  signGD step on ``x_i`` moves ``f(x_j)`` by this much (not symmetric: both orders are kept).

Memory: parameters are streamed in blocks (``parameter_blocks``); the kernel is a sum over blocks,
so only one block's Jacobians of one row batch and one column batch are alive at a time (the row
batch's is reused across its column batches; the column batches' are recomputed per row batch). Jacobians
come from ``torch.func.jacrev`` (one forward, a vmapped backward per batch) in the model's dtype;
the products are accumulated in float64. The kernel is cut into tiles (row batch x column batch);
under torchrun each process computes every ``world``-th tile and a sum across processes fills the rest,
so the result does not depend on the number of processes.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable

import torch
from torch.func import jacrev

from llmtune.kernel.features import KernelBatch, OutputFn

logger = logging.getLogger("llmtune")

FORMULAS = ("sgd", "signgd", "asymmetric_signgd")
SYMMETRIC = ("sgd", "signgd")


def parameter_blocks(params: dict[str, torch.Tensor], block_params: int) -> list[list[str]]:
    """Consecutive groups of parameter names of at most ``block_params`` elements (a larger tensor alone)."""
    blocks: list[list[str]] = []
    size = 0
    for name, tensor in params.items():
        if not blocks or size + tensor.numel() > block_params:
            blocks.append([])
            size = 0
        blocks[-1].append(name)
        size += tensor.numel()
    return blocks


def jacobian(
    output_fn: OutputFn, params: dict[str, torch.Tensor], names: list[str], batch: KernelBatch
) -> torch.Tensor:
    """Per-example Jacobians ``[B, C, P_block]`` of ``output_fn`` with respect to the parameters ``names``.

    Examples do not interact in a forward pass (no batch statistics), so the Jacobian of the
    batch's ``[B, C]`` outputs holds each example's own Jacobian.
    """
    block = {name: params[name] for name in names}

    def outputs(part: dict[str, torch.Tensor]) -> torch.Tensor:
        return output_fn({**params, **part}, batch)

    with warnings.catch_warnings():
        # SDPA's CPU backward has no vmap rule yet: torch falls back to a loop and says so on every call.
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        jac = jacrev(outputs)(block)
    rows = batch.label_ids.shape[0]
    return torch.cat([jac[name].reshape(rows, -1, block[name].numel()) for name in names], dim=2)


def kernel_product(left: torch.Tensor, right: torch.Tensor, formula: str) -> torch.Tensor:
    """``[Ba, C, P] x [Bb, C, P] -> [Ba, C, Bb, C]`` in float64 for ``formula``."""
    if formula == "sgd":
        a, b = left.double(), right.double()
    elif formula == "signgd":
        a, b = left.sign().double(), right.sign().double()
    elif formula == "asymmetric_signgd":
        a, b = left.sign().double(), right.double()
    else:
        raise ValueError(f"unknown kernel formula {formula!r}; formulas: {', '.join(FORMULAS)}")
    return torch.einsum("acp,bdp->acbd", a, b)


def tiles(rows: int, cols: int, symmetric: bool) -> list[tuple[int, int]]:
    """Tile indices (row batch, column batch); a symmetric kernel of a set with itself needs only ``a <= b``."""
    return [(a, b) for a in range(rows) for b in range(cols) if not symmetric or a <= b]


def compute_kernel(
    output_fn: OutputFn,
    params: dict[str, torch.Tensor],
    blocks: list[list[str]],
    row_batches: list[KernelBatch],
    col_batches: list[KernelBatch] | None,
    formula: str,
    rank: int = 0,
    world: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The kernel ``[N_rows, C, N_cols, C]`` (float64, on the CPU) between two sets of examples.

    ``col_batches=None`` means the rows with themselves. This process fills the tiles
    ``rank, rank + world, ...`` and leaves zeros elsewhere (sum the results of all processes).
    """
    same = col_batches is None
    cols = row_batches if same else col_batches
    symmetric = same and formula in SYMMETRIC
    row_start = _starts(row_batches)
    col_start = _starts(cols)
    classes = _classes(output_fn, params, row_batches[0])
    kernel = torch.zeros(row_start[-1], classes, col_start[-1], classes, dtype=torch.float64)
    mine = tiles(len(row_batches), len(cols), symmetric)[rank::world]
    by_row: dict[int, list[int]] = {}
    for a, b in mine:
        by_row.setdefault(a, []).append(b)
    done = 0
    for a, col_indices in by_row.items():
        # One row batch's Jacobian per block, reused for all of this process's tiles in that row.
        rows = row_start[a + 1] - row_start[a]
        sums = {
            b: torch.zeros(rows, classes, col_start[b + 1] - col_start[b], classes, dtype=torch.float64)
            for b in col_indices
        }
        for names in blocks:
            left = jacobian(output_fn, params, names, row_batches[a])
            for b in col_indices:
                right = left if same and a == b else jacobian(output_fn, params, names, cols[b])
                sums[b] += kernel_product(left, right, formula).cpu()
                del right
            del left
        for b, tile in sums.items():
            if symmetric and a == b:  # a matrix product with itself is symmetric only up to rounding
                tile = (tile + tile.permute(2, 3, 0, 1)) / 2
            kernel[row_start[a] : row_start[a + 1], :, col_start[b] : col_start[b + 1]] = tile
            if symmetric and a != b:
                kernel[col_start[b] : col_start[b + 1], :, row_start[a] : row_start[a + 1]] = tile.permute(2, 3, 0, 1)
        done += len(col_indices)
        if progress is not None:
            progress(done, len(mine))
    return kernel


def initial_outputs(output_fn: OutputFn, params: dict[str, torch.Tensor], batches: list[KernelBatch]) -> torch.Tensor:
    """The model's outputs ``[N, C]`` (float64, CPU) before any training: ``f_0(x)``."""
    with torch.no_grad():
        return torch.cat([output_fn(params, batch).double().cpu() for batch in batches])


def _starts(batches: list[KernelBatch]) -> list[int]:
    starts = [0]
    for batch in batches:
        starts.append(starts[-1] + batch.label_ids.shape[0])
    return starts


def _classes(output_fn: OutputFn, params: dict[str, torch.Tensor], batch: KernelBatch) -> int:
    with torch.no_grad():
        return output_fn(params, batch).shape[1]


class Progress:
    """Logs the tiles done every ~30 s (kernels on large models take a while)."""

    def __init__(self, what: str):
        self.what, self.started, self.last = what, time.perf_counter(), 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter() - self.started
        if done == total or now - self.last > 30:
            self.last = now
            logger.info("kernel %s: %d/%d tiles (%.0f s)", self.what, done, total, now)
