"""What a parameter is, whoever holds it: one place for the facts several layers need."""

from __future__ import annotations

import torch


def full_numel(param: torch.Tensor) -> int:
    """The parameter's element count, also when DeepSpeed ZeRO-3 holds only this process's partition of it
    (its local tensor is then empty and ``ds_numel`` is the full size)."""
    return int(getattr(param, "ds_numel", 0) or param.numel())
