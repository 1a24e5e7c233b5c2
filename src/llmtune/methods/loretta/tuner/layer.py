"""The LoRETTA tuner layer: a linear layer with tensor-train adapters around it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from llmtune.methods.loretta.tuner.config import LorettaConfig
from llmtune.methods.tensor_train import TensorTrainLinear

ACTIVATION_FUNCTIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "identity": lambda x: x,
}


class LorettaLayer(BaseTunerLayer):
    """The adapter state of one wrapped linear layer, per adapter name.

    ``loretta_down[name]`` and ``loretta_up[name]`` are the two :class:`TensorTrainLinear`
    projections; ``loretta_placement[name]`` is ``input``, ``output`` or ``parallel`` (see
    :meth:`LorettaConfig.placement`).
    """

    adapter_layer_names = ("loretta_down", "loretta_up")
    other_param_names = ("loretta_placement", "loretta_scaling", "loretta_activation")

    def __init__(self, base_layer: nn.Module, **kwargs):
        self.base_layer = base_layer
        self.loretta_down = nn.ModuleDict({})
        self.loretta_up = nn.ModuleDict({})
        self.loretta_placement: dict[str, str] = {}
        self.loretta_scaling: dict[str, float] = {}
        self.loretta_activation: dict[str, str] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"loretta adapts torch.nn.Linear layers only, not {type(base).__name__}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.kwargs = kwargs

    def update_layer(self, adapter_name: str, placement: str, config: LorettaConfig) -> None:
        """Add adapter ``adapter_name`` at ``placement`` with the shapes ``config`` asks for."""
        rank, width, factor = config.tensor_rank, config.bottleneck, config.max_factor
        # identity: up starts at zero (the adapter adds nothing until it trains); reference: the
        # reference code's random cores and biases for both, so the model starts perturbed.
        down_init, up_init = ("normal", "zeros") if config.init == "identity" else ("reference", "reference")
        if placement == "parallel":  # reparam: x -> r -> out, no activation, no bias
            down = TensorTrainLinear(self.in_features, width, rank, init=down_init, max_factor=factor)
            up = TensorTrainLinear(width, self.out_features, rank, init=up_init, max_factor=factor)
            activation = "identity"
        else:
            features = self.in_features if placement == "input" else self.out_features
            bias = config.adapter_bias
            down = TensorTrainLinear(features, width, rank, bias=bias, init=down_init, max_factor=factor)
            up = TensorTrainLinear(width, features, rank, bias=bias, init=up_init, max_factor=factor)
            activation = config.activation
        self.loretta_down[adapter_name] = down
        self.loretta_up[adapter_name] = up
        self.loretta_placement[adapter_name] = placement
        self.loretta_scaling[adapter_name] = float(config.scaling)
        self.loretta_activation[adapter_name] = activation
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)


class Linear(nn.Module, LorettaLayer):
    """``nn.Linear`` with LoRETTA adapters: on its input, on its output, or in parallel (reparam)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, placement: str, config: LorettaConfig, **kwargs):
        super().__init__()
        LorettaLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, placement, config)

    def _adapter(self, name: str, h: torch.Tensor) -> torch.Tensor:
        """``scaling * up(act(down(h)))`` in the adapter's dtype, returned in ``h``'s dtype."""
        down, up = self.loretta_down[name], self.loretta_up[name]
        act = ACTIVATION_FUNCTIONS[self.loretta_activation[name]]
        hidden = act(down(self._cast_input_dtype(h, down.core_0.dtype)))
        return (up(hidden) * self.loretta_scaling[name]).to(h.dtype)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.loretta_down]
        inputs = x
        for name in active:
            if self.loretta_placement[name] == "input":
                x = x + self._adapter(name, x)
        result = self.base_layer(x, *args, **kwargs)
        for name in active:
            placement = self.loretta_placement[name]
            if placement == "output":
                result = result + self._adapter(name, result)
            elif placement == "parallel":
                result = result + self._adapter(name, inputs)
        return result

    # -- merging (reparam only: an adapter with a non-linearity is not a weight update) ------------

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``scaling * (down @ up)^T``: the ``[out, in]`` update a ``parallel`` adapter adds to the weight."""
        if self.loretta_placement[adapter] != "parallel":
            raise ValueError(
                "loretta_mode: adapter cannot be merged into the weights (its bottleneck has a non-linearity); "
                "load the adapter with PeftModel.from_pretrained, or train with loretta_mode: reparam"
            )
        down, up = self.loretta_down[adapter], self.loretta_up[adapter]
        delta = (down.to_dense().float() @ up.to_dense().float()).T * self.loretta_scaling[adapter]
        return delta.to(self.get_base_weight().dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.loretta_down:
                continue
            weight = self.get_base_weight()
            merged = weight + self.get_delta_weight(name)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights; the adapter {name} seems to be broken")
            self.set_base_weight(merged)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.loretta_down:
                self.set_base_weight(self.get_base_weight() - self.get_delta_weight(name))

    def __repr__(self) -> str:
        return "loretta." + super().__repr__()
