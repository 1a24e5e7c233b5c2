"""Empirical NTK kernels of the label-word logits (Malladi et al., 2023, "A Kernel-Based View of LM Fine-Tuning").

For outputs ``f(x) in R^C`` and parameters ``theta``, with ``J(x) = df(x)/dtheta`` of shape ``[C, P]``:

* ``sgd``:               ``K[i, c, j, d] = <J_c(x_i), J_d(x_j)>`` (the eNTK; symmetric PSD);
* ``signgd``:            ``K[i, c, j, d] = <sign J_c(x_i), sign J_d(x_j)>``;
* ``asymmetric_signgd`` (binary tasks): ``K[i, j] = <sign D(x_i), D(x_j)>`` with ``D = J_1 - J_0`` the
  Jacobian of the logit difference, ``x_i`` a training example: one signGD step on ``x_i`` moves
  ``f(x_j)`` by this much (not symmetric: both orders are kept).

All three are products of the same per-example Jacobians ``J`` of the ``C`` label-word logits, so
one pass computes every formula asked for: a formula costs only its products (the signs and the
difference are taken slice by slice inside them, so no second copy of the rows is held).

The order of the work follows the cost. Parameters are streamed in blocks (``parameter_blocks``) and
the kernel is a sum over blocks. For one block, the Jacobians of all the training examples (the
kernel's rows) are computed once and held; every column example's Jacobian is then computed once
and multiplied with all of them, so a column example costs one forward and backward per block,
whatever the number of rows. Jacobians are per example (``torch.func.jacrev`` of one unpadded
example's ``C`` outputs): the Jacobian of a padded batch's ``[B, C]`` outputs costs ``B x C``
backward passes through the whole batch, ``B`` times the work. Parameters where every row's
Jacobian is zero (most of the embedding matrix) are dropped. Jacobians are in the model's dtype;
products are taken 65,536 parameters at a time and summed in float64. Columns are cut into batches of
``kernel_batch_size``; under torchrun each process takes every ``world``-th column batch (and
computes the rows itself), and a sum across processes fills the rest, so the result does not depend
on the number of processes.
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

    One example at a time, without its padding: ``jacrev`` of the ``C`` outputs of one example is one
    forward and ``C`` backward passes of that example alone.
    """
    block = {name: params[name] for name in names}
    out = None
    for index in range(len(batch)):
        example = batch.example(index)

        def outputs(part: dict[str, torch.Tensor], example: KernelBatch = example) -> torch.Tensor:
            return output_fn({**params, **part}, example)[0]

        with warnings.catch_warnings():
            # SDPA's CPU backward has no vmap rule yet: torch falls back to a loop and says so on every call.
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            jac = jacrev(outputs)(block)
        if out is None:
            size = sum(block[name].numel() for name in names)
            out = torch.empty(
                len(batch), jac[names[0]].shape[0], size, dtype=jac[names[0]].dtype, device=jac[names[0]].device
            )
        offset = 0
        for name in names:  # written in place: no concatenated copies of a block
            count = block[name].numel()
            out[index, :, offset : offset + count] = jac[name].reshape(-1, count)
            offset += count
        del jac
    return out


PRODUCT_SLICE = 1 << 16  # parameters per matrix product; the products of the slices are summed in float64

View = Callable[[torch.Tensor], torch.Tensor]  # [N, C, S] -> [N, C', S], applied to one slice


def _difference(jac: torch.Tensor) -> torch.Tensor:
    """``[N, 2, S] -> [N, 1, S]``: the Jacobian of the logit difference ``f_1 - f_0``."""
    return (jac[:, 1] - jac[:, 0]).unsqueeze(1)


def _sign_of_difference(jac: torch.Tensor) -> torch.Tensor:
    return _difference(jac).sign()


# formula -> (view of the rows' Jacobians, view of the columns'); None: the Jacobians as they are
VIEWS: dict[str, tuple[View | None, View | None]] = {
    "sgd": (None, None),
    "signgd": (torch.sign, torch.sign),
    "asymmetric_signgd": (_sign_of_difference, _difference),
}


def check_formulas(formulas: tuple[str, ...]) -> None:
    unknown = [f for f in formulas if f not in FORMULAS]
    if unknown:
        raise ValueError(f"unknown kernel formula {unknown[0]!r}; formulas: {', '.join(FORMULAS)}")


def outputs_of(formula: str, classes: int) -> int:
    """The kernel's outputs per example: one logit difference for ``asymmetric_signgd``, else the classes."""
    return 1 if formula == "asymmetric_signgd" else classes


def initial_of(formula: str, f0: torch.Tensor) -> torch.Tensor:
    """The initial outputs ``[N, C]`` as ``formula``'s kernel sees them (``[N, 1]``: their difference)."""
    return (f0[:, 1] - f0[:, 0]).unsqueeze(1) if formula == "asymmetric_signgd" else f0


def kernel_product(
    left: torch.Tensor, right: torch.Tensor, left_view: View | None = None, right_view: View | None = None
) -> torch.Tensor:
    """``[Ba, C, P] x [Bb, D, P] -> [Ba, C', Bb, D']`` (float64): ``PRODUCT_SLICE`` parameters at a time in
    float32 (float64 for float64 Jacobians), each slice seen through its view first, the slices' products
    summed in float64.

    A float32 product of 65,536 terms is within ~1e-6 of the float64 one, the float32 Jacobians' own
    rounding; for signs (the signgd kernel) it is exact. Converting every slice to float64 instead
    took 3-10x longer on the CPU (the rows are converted again for every column batch).
    """
    dtype = torch.float64 if left.dtype == torch.float64 else torch.float32
    out = None
    # at least one slice: a block whose rows are all zero (no position kept) gives a kernel of zeros
    for start in range(0, max(left.shape[-1], 1), PRODUCT_SLICE):
        # in the product's precision before the view: a half-precision difference would round once more
        a = left[..., start : start + PRODUCT_SLICE].to(dtype)
        b = right[..., start : start + PRODUCT_SLICE].to(dtype)
        a = a if left_view is None else left_view(a)
        b = b if right_view is None else right_view(b)
        if out is None:
            shape = (a.shape[0], a.shape[1], b.shape[0], b.shape[1])
            out = torch.zeros(shape[0] * shape[1], shape[2] * shape[3], dtype=torch.float64, device=left.device)
        a2 = a.reshape(shape[0] * shape[1], a.shape[-1])
        b2 = b.reshape(shape[2] * shape[3], b.shape[-1])
        out += (a2 @ b2.T).double()
    return out.reshape(shape)


def row_jacobians(
    output_fn: OutputFn, params: dict[str, torch.Tensor], names: list[str], batches: list[KernelBatch]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows' Jacobians ``[N, C, P_kept]`` of one block and the kept parameter positions (``None``: all).

    Positions where every row's Jacobian is exactly zero add nothing to any product and are dropped:
    the embedding matrix's Jacobian has non-zero rows only for the prompts' tokens and the label
    words (85k of 28M entries for 32 tweets on SmolLM2), a fresh LoRA adapter's A matrices none.
    Each batch is kept sparse until all are known, so a dense block is held once.
    """
    total = sum(len(batch) for batch in batches)
    dense: torch.Tensor | None = None  # [N, C, P] once a batch is not sparse
    parts: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (first row, positions, values) while all are
    row = 0
    for batch in batches:
        jac = jacobian(output_fn, params, names, batch)
        size = jac.shape[-1]
        nonzero = jac.reshape(-1, size).ne(0).any(0).nonzero()[:, 0]
        if dense is None and len(nonzero) < size // 2:
            parts.append((row, nonzero, jac[..., nonzero]))
        else:
            if dense is None:
                dense = torch.zeros(total, jac.shape[1], size, dtype=jac.dtype, device=jac.device)
                for first, positions, values in parts:
                    dense[first : first + len(values), :, positions] = values
                parts = []
            dense[row : row + len(jac)] = jac
        row += len(jac)
        del jac
    if dense is not None:
        return dense, None
    kept = torch.unique(torch.cat([positions for _, positions, _ in parts]))
    left = torch.zeros(total, parts[0][2].shape[1], len(kept), dtype=parts[0][2].dtype, device=parts[0][2].device)
    for first, positions, values in parts:
        left[first : first + len(values), :, torch.searchsorted(kept, positions)] = values
    return left, kept


def compute_kernel(
    output_fn: OutputFn,
    params: dict[str, torch.Tensor],
    blocks: list[list[str]],
    row_batches: list[KernelBatch],
    columns: dict[str, list[KernelBatch] | None],
    formulas: tuple[str, ...],
    rank: int = 0,
    world: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """``{formula: {name: kernel [N_rows, C', N_cols, C']}}`` (float64, on the CPU) of the rows against each
    column set, for every formula of ``formulas`` from the one set of Jacobians of ``output_fn``'s ``C``
    label-word logits (``C' = 1`` for ``asymmetric_signgd``, which needs ``C = 2``).

    A column set of ``None`` is the rows themselves. This process fills the column batches
    ``rank, rank + world, ...`` (counted over all column sets, the rows themselves first) and
    leaves zeros elsewhere: sum the results of all processes. Memory: the rows' Jacobians of one
    block (``N x C x kernel_block_params`` in the model's dtype, less the dropped positions) and one
    column batch's, whatever the number of formulas.
    """
    check_formulas(formulas)
    row_count = sum(len(b) for b in row_batches)
    classes = _classes(output_fn, params, row_batches[0])
    if "asymmetric_signgd" in formulas and classes != 2:
        raise ValueError(f"asymmetric_signgd needs two label words (one logit difference), not {classes}")
    work = [(name, 0) for name, cols in columns.items() if cols is None]  # the rows themselves first
    work += [(name, index) for name, cols in columns.items() if cols is not None for index in range(len(cols))]
    mine = work[rank::world]
    kernels = {
        formula: {
            name: torch.zeros(
                row_count,
                outputs_of(formula, classes),
                row_count if cols is None else sum(len(b) for b in cols),
                outputs_of(formula, classes),
                dtype=torch.float64,
            )
            for name, cols in columns.items()
        }
        for formula in formulas
    }
    starts = {name: _starts(cols) for name, cols in columns.items() if cols is not None}
    done = 0
    for names in blocks:
        if not mine:
            break
        # The rows' Jacobians of this block, held while every column batch of this process passes by.
        rows, kept = row_jacobians(output_fn, params, names, row_batches)
        for name, index in mine:
            cols = columns[name]
            if cols is None:  # the rows themselves
                right, span = rows, slice(None)
            else:
                right = jacobian(output_fn, params, names, cols[index])
                right = right if kept is None else right[..., kept]
                span = slice(starts[name][index], starts[name][index + 1])
            for formula in formulas:
                kernels[formula][name][:, :, span] += kernel_product(rows, right, *VIEWS[formula]).cpu()
            del right
            done += 1
            if progress is not None:
                progress(done, len(mine) * len(blocks))
        del rows
    for formula in formulas:
        for name, cols in columns.items():
            if cols is None and formula in SYMMETRIC:  # a matrix product with itself is symmetric only up to rounding
                kernels[formula][name] = (kernels[formula][name] + kernels[formula][name].permute(2, 3, 0, 1)) / 2
    return kernels


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
    """Logs the column batches done (over all blocks) every ~30 s, with the time left at this pace."""

    def __init__(self, what: str):
        self.what, self.started, self.last = what, time.perf_counter(), 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter() - self.started
        if done == total or now - self.last > 30:
            self.last = now
            left = now / done * (total - done)
            logger.info(
                "kernel %s: %d/%d column batches x blocks (%.0f s, about %.0f s left)",
                self.what,
                done,
                total,
                now,
                left,
            )
