"""``TensorTrainLinear``: a linear map whose weight is stored as tensor-train cores.

Novikov et al., "Tensorizing Neural Networks" (NeurIPS 2015), as LoRETTA (Yang et al., NAACL 2024)
and AdaZeta (Yang et al., EMNLP 2024) use it. The weight ``W`` (``in x out``, so ``y = x @ W + b``)
is the tensor with modes ``in_shape + out_shape``::

    W[(i_1..i_m), (o_1..o_p)] = G_1[:, i_1, :] @ ... @ G_m[:, i_m, :] @ G_{m+1}[:, o_1, :] @ ... @ G_d[:, o_p, :]

(row-major multi-indices). The forward contracts the input with the cores one at a time and never
builds ``W`` (the reference code builds it on every call); :meth:`TensorTrainLinear.to_dense` does,
for tests, merging and export.

Each core is a parameter of this module itself (``core_0``, ``core_1``, ...), read in ``forward``:
zeroth-order training substitutes perturbed parameters through the owning module's forward hooks
(:mod:`llmtune.methods.zo.optimizer`), which a ``ParameterList`` would hide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from llmtune.methods.tensor_train.shape import (
    DEFAULT_MAX_FACTOR,
    split_tt_shape,
    tt_parameter_count,
    tt_ranks,
    tt_shape_for,
)

INITS = ("normal", "zeros", "reference")


class TensorTrainLinear(nn.Module):
    """``y = x @ W + b`` with ``W`` (``in_features x out_features``) in tensor-train format.

    Args:
        in_features, out_features: the dimensions of ``W``.
        rank: the inner TT rank (every bond but the two outer ones, which are 1).
        tt_shape: mode sizes, input modes first (their product ``in_features``), then output modes
            (product ``out_features``); default :func:`~llmtune.methods.tensor_train.shape.tt_shape_for`.
        bias: whether to add a bias ``b`` (``[out_features]``, zero at initialisation).
        init: ``normal``: cores drawn so that the entries of ``W`` have standard deviation ``std``;
            ``zeros``: the same but with the last core zero, so ``W = 0`` at the start while every
            core still gets gradients once the last one moves (the "B = 0" of LoRA);
            ``reference``: as the LoRETTA/AdaZeta code draws them (core ``k`` from
            ``N(0, 1) * std**(1/d) / sqrt(r_k)``, the same variance of ``W``; the bias, if any,
            uniform in ``+-1/sqrt(out_features)``).
        std: target standard deviation of the entries of ``W`` (default ``sqrt(1 / (in + out))``).
        max_factor: the largest mode size the automatic shape uses.

    Shapes: input ``[..., in_features]``, output ``[..., out_features]``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        tt_shape: Sequence[int] | None = None,
        bias: bool = False,
        init: str = "normal",
        std: float | None = None,
        max_factor: int = DEFAULT_MAX_FACTOR,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init: {init!r} is not one of {', '.join(INITS)}")
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        shape = list(tt_shape) if tt_shape is not None else tt_shape_for(in_features, out_features, max_factor)
        self.in_shape, self.out_shape = split_tt_shape(shape, self.in_features, self.out_features)
        self.tt_shape = self.in_shape + self.out_shape
        self.ranks = tt_ranks(len(self.tt_shape), self.rank)
        for k, n in enumerate(self.tt_shape):
            core = torch.empty(self.ranks[k], n, self.ranks[k + 1], device=device, dtype=dtype)
            self.register_parameter(f"core_{k}", nn.Parameter(core))
        bias_tensor = nn.Parameter(torch.empty(self.out_features, device=device, dtype=dtype)) if bias else None
        self.register_parameter("bias", bias_tensor)
        self.reset_parameters(init, std)

    @property
    def num_cores(self) -> int:
        return len(self.tt_shape)

    @property
    def cores(self) -> list[torch.Tensor]:
        # Read through _parameters so that a substituted (perturbed) tensor is what the forward sees.
        return [self._parameters[f"core_{k}"] for k in range(self.num_cores)]

    @property
    def parameter_count(self) -> int:
        """Numbers this layer trains: :func:`tt_parameter_count` of its shape, plus the bias."""
        return tt_parameter_count(self.tt_shape, self.rank, self.out_features if self.bias is not None else 0)

    @torch.no_grad()
    def reset_parameters(self, init: str = "normal", std: float | None = None) -> None:
        """Draw the cores so that the entries of ``W`` have standard deviation ``std`` (see the class doc).

        With ``d`` cores of i.i.d. N(0, s^2) entries and ``d - 1`` inner bonds of size ``r``, an entry
        of ``W`` is a sum of ``r^(d-1)`` products of ``d`` entries: variance ``s^(2d) * r^(d-1)``.
        """
        std = math.sqrt(1.0 / (self.in_features + self.out_features)) if std is None else float(std)
        d = self.num_cores
        core_std = (std**2 / self.rank ** (d - 1)) ** (1.0 / (2 * d))
        for k, core in enumerate(self.cores):
            # reference: the scale moves to the bonds (1/sqrt(r) per outgoing bond); Var(W) is the same.
            core.normal_(0.0, std ** (1.0 / d) / math.sqrt(self.ranks[k + 1]) if init == "reference" else core_std)
        if init == "zeros":
            self.cores[-1].zero_()
        if self.bias is not None:
            if init == "reference":
                bound = 1.0 / math.sqrt(self.out_features)
                self.bias.uniform_(-bound, bound)
            else:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        cores = self.cores
        m = len(self.in_shape)
        # Input side: h is [batch, bond, remaining input modes]; each core absorbs the leading mode.
        h = x.reshape(-1, 1, self.in_features)
        for core, n in zip(cores[:m], self.in_shape, strict=True):
            batch, bond, rest = h.shape
            h = torch.einsum("brnm,rnq->bqm", h.reshape(batch, bond, n, rest // n), core)
        # Output side: y is [batch, output modes so far, bond]; each core appends a mode.
        y = h.reshape(h.shape[0], 1, h.shape[1])
        for core in cores[m:]:
            batch, width, bond = y.shape
            y = torch.einsum("bwr,rnq->bwnq", y, core).reshape(batch, width * core.shape[1], core.shape[2])
        y = y.reshape(*lead, self.out_features)
        return y + self.bias if self.bias is not None else y

    def to_dense(self) -> torch.Tensor:
        """The weight ``W`` as a dense ``[in_features, out_features]`` tensor (``y = x @ W + b``)."""
        cores = self.cores
        w = cores[0].reshape(self.tt_shape[0], self.ranks[1])
        for core in cores[1:]:
            bond, n, nxt = core.shape
            w = (w @ core.reshape(bond, n * nxt)).reshape(-1, nxt)
        return w.reshape(self.in_features, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"tt_shape={self.tt_shape}, bias={self.bias is not None}"
        )
