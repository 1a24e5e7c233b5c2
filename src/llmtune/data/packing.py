"""Packing: several tokenised rows in one ``cutoff_len`` sequence, each row still on its own.

Short rows padded to the longest in a batch waste most of a step on padding. Packing concatenates
rows into sequences of at most ``cutoff_len`` tokens, and keeps two promises that plain packing
breaks (trl #3728 lost the response-only loss; concatenation lets a row attend to the rows before it):

* the labels are each row's own labels (prompts stay -100), with the first token of every row set to
  -100 so that no row is trained to predict the start of the next one; the unpacked rows never train
  that position either (a causal LM has nothing before it to predict it from);
* every row restarts its ``position_ids`` at 0 and batches carry no ``attention_mask``: transformers
  then builds a block-diagonal causal mask from the position ids (sdpa, eager and flash attention
  alike) as long as the model builds no key/value cache. :func:`prepare_model_for_packing` turns the
  cache off and proves the separation on the loaded model before training starts, so a model whose
  attention ignores it is refused instead of silently mixing rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmtune.errors import ConfigError

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100

Example = tuple[list[int], list[int]]


def pack_examples(examples: list[Example], capacity: int) -> list[dict[str, list[int]]]:
    """Pack ``(input_ids, labels)`` rows into sequences of at most ``capacity`` tokens.

    First-fit decreasing: longest rows first, each into the first sequence with room. Deterministic
    for the same input. Returns rows with ``input_ids``, ``labels`` and ``position_ids``.
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i][0]), i))
    bins: list[list[int]] = []
    room: list[int] = []
    for index in order:
        length = len(examples[index][0])
        if length > capacity:
            raise ValueError(f"row {index} has {length} tokens, more than the packing capacity {capacity}")
        slot = next((b for b, free in enumerate(room) if free >= length), None)
        if slot is None:
            bins.append([])
            room.append(capacity)
            slot = len(bins) - 1
        bins[slot].append(index)
        room[slot] -= length
    return [_concatenate([examples[i] for i in sorted(members)]) for members in bins]


def _concatenate(rows: list[Example]) -> dict[str, list[int]]:
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, row_labels in rows:
        input_ids += ids
        labels += [IGNORE_INDEX, *row_labels[1:]]
    return {"input_ids": input_ids, "labels": labels, "seq_lengths": [len(ids) for ids, _ in rows]}


def position_ids(seq_lengths: list[int], width: int) -> list[int]:
    """Positions restarting at 0 for every row, then for the padding up to ``width``."""
    positions = [p for length in seq_lengths for p in range(length)]
    return positions + list(range(width - len(positions)))


@dataclass
class PackedCollator:
    """Batches of packed rows: right-padded ``input_ids``/``labels``/``position_ids``, no attention mask.

    The padding restarts its positions at 0, so it is a segment of its own that no real token sees.
    """

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(row["input_ids"]) for row in rows)
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
        for row in rows:
            pad = width - len(row["input_ids"])
            batch["input_ids"].append(list(row["input_ids"]) + [self.pad_token_id] * pad)
            batch["labels"].append(list(row["labels"]) + [IGNORE_INDEX] * pad)
            batch["position_ids"].append(position_ids(row["seq_lengths"], width))
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


def prepare_model_for_packing(model: torch.nn.Module, atol: float = 1e-4) -> None:
    """Switch off ``model``'s key/value cache and prove that packed rows stay apart; refuse otherwise.

    transformers separates rows by their ``position_ids`` only when no cache is built, and a model
    builds one by default (``config.use_cache``) even while training, which silently mixes the rows
    (measured: 0.05 logit difference on a 2-layer Llama). So the cache is turned off, then two 3-token
    rows are run packed together and the second alone (no gradient, called as the trainer calls the
    model) and the second row's logits compared.
    """
    import torch

    config = getattr(model, "config", None)
    if config is not None:
        config.use_cache = False
    device = next(model.parameters()).device
    first, second = [3, 4, 5], [6, 7, 8]
    packed = {
        "input_ids": torch.tensor([first + second], device=device),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2]], device=device),
    }
    alone = {"input_ids": torch.tensor([second], device=device)}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            together = model(**packed).logits[0, 3:].float()
            separate = model(**alone).logits[0].float()
    finally:
        model.train(was_training)
    if not torch.allclose(together, separate, atol=atol, rtol=1e-3):
        kind = getattr(config, "model_type", type(model).__name__)
        attention = getattr(config, "_attn_implementation", "?")
        raise ConfigError(
            f"packing: this model ({kind}, attn_implementation {attention}) lets packed rows attend to each other "
            "(it ignores position_ids restarts); set packing: false"
        )
