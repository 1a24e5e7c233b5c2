"""Fixtures for the optimizer tests of ``block`` and ``sparse``: a 3-layer Llama small enough to step in milliseconds."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(layers: int = 3, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A randomly initialised Llama (hidden 16, ``layers`` layers, untied head), the same for the same arguments."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=40,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).to(dtype)


def token_batches(count: int) -> list[torch.Tensor]:
    """``count`` fixed batches of 2 x 8 token ids."""
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, 40, (2, 8), generator=generator) for _ in range(count)]


def train_steps(model, optimizer, batches) -> None:
    """One optimizer step per batch, on the language-model loss."""
    for ids in batches:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


class OptimizerBench:
    """The helpers above, as one fixture."""

    tiny_llama = staticmethod(tiny_llama)
    batches = staticmethod(token_batches)
    train_steps = staticmethod(train_steps)


@pytest.fixture
def bench() -> OptimizerBench:
    return OptimizerBench()
