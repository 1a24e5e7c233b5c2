"""One intra-op thread for the kernel tests: their many small Jacobians run 5-10x faster so on a shared CPU."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
