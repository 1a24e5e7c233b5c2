"""What the kernel differentiates: the label-word logits at the prediction position, and over which parameters.

An example of a choice task is its prompt (MeZO's plain text, as ``llmtune eval`` scores it) and
one label word per option; the model's output for it is the vector of the logits of the options'
first tokens at the prompt's last position, ``f(x) in R^C``, as in LM-Kernel-FT. For the
``asymmetric_signgd`` formula (binary tasks) the output is the one number ``logit_1 - logit_0``.
Batches are left-padded, with explicit position ids, so every example's prediction position is the
last one and padding changes no example's output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call

from llmtune.data.task_encoding import encode_choice
from llmtune.data.tasks import TaskExample
from llmtune.errors import ConfigError, DataError
from llmtune.methods.lora.model import linear_module_names

OutputFn = Callable[[dict[str, torch.Tensor], "KernelBatch"], torch.Tensor]


@dataclass
class KernelBatch:
    """Left-padded prompts of ``B`` examples and the label-word ids scored for each.

    ``input_ids``, ``attention_mask``, ``position_ids``: LongTensor ``[B, L]``; ``label_ids``:
    LongTensor ``[B, C]`` (the first token of each option).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    label_ids: torch.Tensor

    def to(self, device: torch.device | str) -> KernelBatch:
        """The same batch on ``device``."""
        return KernelBatch(*(t.to(device) for t in vars(self).values()))

    def __len__(self) -> int:
        return self.label_ids.shape[0]

    def example(self, index: int) -> KernelBatch:
        """Example ``index`` alone, without its left padding (a batch of one)."""
        one = [t[index : index + 1] for t in vars(self).values()]
        if self.attention_mask.dim() == 2:
            width = int(self.attention_mask[index].sum())
            one[:3] = [t[:, t.shape[1] - width :] for t in one[:3]]
        return KernelBatch(*one)


def encode_examples(
    tokenizer: Any, examples: list[TaskExample], task_name: str, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, first token of each option)`` per example, the prompt cut from the left to ``max_length``."""
    encoded = []
    for example in examples:
        try:
            choice = encode_choice(tokenizer, example, max_length=max_length)
        except ValueError as error:
            raise DataError(f"task '{task_name}': {error}") from None
        encoded.append((choice.prompt_ids, [ids[0] for ids in choice.option_ids]))
    return encoded


def collate(items: list[tuple[list[int], list[int]]], pad_token_id: int) -> KernelBatch:
    """Left-pad ``items`` (from :func:`encode_examples`) into one :class:`KernelBatch`."""
    width = max(len(prompt) for prompt, _ in items)
    count = len(items)
    input_ids = torch.full((count, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((count, width), dtype=torch.long)
    position_ids = torch.zeros((count, width), dtype=torch.long)
    for i, (prompt, _) in enumerate(items):
        n = len(prompt)
        input_ids[i, width - n :] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[i, width - n :] = 1
        position_ids[i, width - n :] = torch.arange(n)
    label_ids = torch.tensor([words for _, words in items], dtype=torch.long)
    return KernelBatch(input_ids, attention_mask, position_ids, label_ids)


def batches(items: list, size: int, pad_token_id: int) -> list[KernelBatch]:
    """``items`` in consecutive batches of ``size`` (the last may be smaller)."""
    return [collate(items[start : start + size], pad_token_id) for start in range(0, len(items), size)]


def label_logits(model: torch.nn.Module, difference: bool = False) -> OutputFn:
    """``f(params, batch) -> [B, C]``: the label-word logits at the last position (``[B, 1]``: their difference)."""

    def outputs(params: dict[str, torch.Tensor], batch: KernelBatch) -> torch.Tensor:
        kwargs = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "position_ids": batch.position_ids,
            "logits_to_keep": 1,  # only the last position's vocabulary projection
            "use_cache": False,
        }
        logits = functional_call(model, params, (), kwargs, strict=False).logits[:, -1]  # [B, V]
        words = logits.gather(1, batch.label_ids)
        if difference:
            return (words[:, 1] - words[:, 0]).unsqueeze(1)
        return words

    return outputs


def select_parameters(model: torch.nn.Module, which: str) -> dict[str, torch.Tensor]:
    """The parameters the Jacobians are taken over (``all``, ``no_embeddings``, ``biases``, ``lora``), by name.

    A weight tied to another (the LM head and the input embeddings) appears once, as
    ``named_parameters`` lists it; ``functional_call`` keeps the tie.
    """
    named = dict(model.named_parameters())
    if which == "all":
        chosen = named
    elif which == "no_embeddings":
        embeddings = model.get_input_embeddings().weight
        chosen = {n: p for n, p in named.items() if p is not embeddings}
    elif which == "biases":
        chosen = {n: p for n, p in named.items() if n.endswith("bias")}
    elif which == "lora":
        chosen = {n: p for n, p in named.items() if "lora_" in n}
    else:
        raise ConfigError(f"kernel_params: {which!r} is not one of all, no_embeddings, biases, lora")
    if not chosen:
        raise ConfigError(f"kernel_params: {which!r} selects no parameter of this model; use all or no_embeddings")
    return {n: p.detach() for n, p in chosen.items()}


def add_lora(model: torch.nn.Module, rank: int, target: str) -> torch.nn.Module:
    """``model`` with a fresh LoRA adapter (rank ``rank`` on ``target``, llmtune's LoRA defaults otherwise)."""
    from peft import LoraConfig, get_peft_model

    available = linear_module_names(model)
    targets = [t.strip() for t in target.split(",") if t.strip()]
    targets = available if targets == ["all"] else targets
    missing = [t for t in targets if t not in available]
    if missing:
        raise ConfigError(
            f"lora_target: {', '.join(missing)} matches no linear layer; this model has: {', '.join(available)}"
        )
    config = LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets)
    torch.manual_seed(0)  # the adapter's A matrices: the same kernel on every process and every run
    return get_peft_model(model, config)
