"""Split a model's parameters into BAdam blocks; shared by ``finetuning_type: block`` and ``sparse``.

One block per repeated layer (a parameter name with ``layers.<i>.``, ``h.<i>.``, ``blocks.<i>.`` or
``layer.<i>.``), in the order the model lists them. The input embedding is a block of its own only
with ``include_embedding``; the output head, the final norm and anything else outside the layers form
one more block only with ``include_lm_head``; without them these parameters never train. Parameters of
``active_modules`` are taken out of their own block and added to every block.

Blocks are numbered: embedding (when included), layers 0..L-1, head (when included).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from llmtune.errors import ConfigError
from llmtune.parameters import full_numel

LAYER_PATTERN = re.compile(r"^(.*?(?:^|\.)(?:layers|h|blocks|layer)\.\d+)\.")
# Transformers' own rule for parameters that get no weight decay (biases and norms), plus 1-D tensors.
NO_DECAY_PATTERN = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")

NamedParameter = tuple[str, torch.nn.Parameter]


@dataclass(frozen=True)
class ParamBlock:
    """One block: a name (``model.layers.3``, ``embedding``, ``head``) and its named parameters."""

    name: str
    params: tuple[NamedParameter, ...]

    @property
    def numel(self) -> int:
        return sum(full_numel(p) for _, p in self.params)

    @property
    def nbytes(self) -> int:
        return sum(full_numel(p) * p.element_size() for _, p in self.params)


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Whether ``param`` is a bias or a norm weight (no weight decay), as transformers' Trainer decides."""
    return param.ndim < 2 or bool(NO_DECAY_PATTERN.search(name.lower()))


def partition_blocks(
    model: torch.nn.Module,
    *,
    include_embedding: bool = False,
    include_lm_head: bool = False,
    active_modules: Sequence[str] = (),
) -> list[ParamBlock]:
    """The model's BAdam blocks (see the module docstring). A tied weight belongs to the embedding.

    Raises a one-line :class:`ConfigError` when the model has no repeated layers or an active module
    matches no parameter.
    """
    named = list(model.named_parameters())
    embedding_ids = _input_embedding_ids(model, named)
    active = _active_names(named, active_modules)

    layers: dict[str, list[NamedParameter]] = {}
    embedding: list[NamedParameter] = []
    head: list[NamedParameter] = []
    for name, param in named:
        if name in active:
            continue
        match = LAYER_PATTERN.match(name)
        if match:
            layers.setdefault(match.group(1), []).append((name, param))
        elif id(param) in embedding_ids:
            embedding.append((name, param))
        else:
            head.append((name, param))
    if not layers:
        raise ConfigError(
            "finetuning_type: block and sparse need a model with repeated layers (parameters named "
            f"'layers.<i>.', 'h.<i>.', 'blocks.<i>.' or 'layer.<i>.'); {type(model).__name__} has none"
        )
    groups: list[tuple[str, list[NamedParameter]]] = []
    if include_embedding and embedding:
        groups.append(("embedding", embedding))
    groups += list(layers.items())
    if include_lm_head and head:
        groups.append(("head", head))
    shared = [(name, param) for name, param in named if name in active]
    return [ParamBlock(name, tuple(params + shared)) for name, params in groups]


def scope_parameters(blocks: Iterable[ParamBlock]) -> list[NamedParameter]:
    """Every parameter that some block trains, each once, in block order."""
    seen: set[int] = set()
    scope = []
    for block in blocks:
        for name, param in block.params:
            if id(param) not in seen:
                seen.add(id(param))
                scope.append((name, param))
    return scope


def freeze_outside(model: torch.nn.Module, blocks: Iterable[ParamBlock]) -> None:
    """Freeze (``requires_grad=False``, no ``.grad``) every parameter of ``model`` that no block trains."""
    keep = {id(p) for _, p in scope_parameters(blocks)}
    for param in model.parameters():
        if id(param) not in keep:
            param.requires_grad_(False)
            param.grad = None


def _input_embedding_ids(model: torch.nn.Module, named: list[NamedParameter]) -> set[int]:
    get = getattr(model, "get_input_embeddings", None)
    module = get() if callable(get) else None
    if module is not None:
        return {id(p) for p in module.parameters()}
    return {id(p) for name, p in named if "embed" in name}


def _active_names(named: list[NamedParameter], active_modules: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for module in active_modules:
        hits = {name for name, _ in named if name.startswith(module + ".") or f".{module}." in f".{name}"}
        if not hits:
            outside = sorted({name.rsplit(".", 1)[0] for name, _ in named if not LAYER_PATTERN.match(name)})
            raise ConfigError(
                f"badam_active_modules: {module!r} matches no parameter; modules outside the layers: {', '.join(outside)}"
            )
        found |= hits
    return found
