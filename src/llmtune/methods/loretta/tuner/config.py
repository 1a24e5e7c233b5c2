"""``LorettaConfig``: the PEFT configuration of LoRETTA adapters (saved as ``adapter_config.json``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.config import PeftConfig

from llmtune.methods.loretta.tuner.peft_type import LORETTA_PEFT_TYPE
from llmtune.methods.tensor_train.shape import DEFAULT_MAX_FACTOR

MODES = ("adapter", "reparam")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "identity")
INITS = ("identity", "reference")

# Where each mode goes when no target is named. adapter: the last linear layer of the attention
# block and of the MLP block (the adapter sits on their outputs, i.e. "after" each block);
# reparam: the query and value projections, as in the LoRETTA paper.
_LLAMA_LIKE = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2")
DEFAULT_TARGETS = {
    "adapter": {**{t: ["o_proj", "down_proj"] for t in _LLAMA_LIKE}, "opt": ["out_proj", "fc2"]},
    "reparam": {**{t: ["q_proj", "v_proj"] for t in _LLAMA_LIKE}, "opt": ["q_proj", "v_proj"]},
}
# The reference code's LoRETTA_adp placement, which AdaZeta uses (loretta_adp.py's adapter-type table:
# "mh_adapter" on the input of the MLP's up-projections, "output_adapter" on its down-projection):
# {model type: (layers adapted on their output, layers adapted on their input)}.
REFERENCE_ADAPTER_PLACEMENT = {
    **{t: (["down_proj"], ["gate_proj", "up_proj"]) for t in _LLAMA_LIKE},
    "opt": (["fc2"], ["fc1"]),
}


@dataclass
class LorettaConfig(PeftConfig):
    """Tensor-train adapters of LoRETTA (Yang et al., NAACL 2024).

    ``mode: adapter`` (LoRETTA_adp) puts a bottleneck adapter ``h + scaling * up(act(down(h)))``
    on the output ``h`` of each ``target_modules`` layer (on its input for ``input_target_modules``);
    ``mode: reparam`` (LoRETTA_rep) adds ``scaling * up(down(x))`` to each target's output, a
    LoRA-style update ``W + scaling * (down @ up)^T`` that can be merged. ``down`` and ``up`` are
    :class:`~llmtune.methods.tensor_train.TensorTrainLinear` of TT rank ``tensor_rank``. With
    ``init: identity`` ``up`` is zero at initialisation, so an inserted adapter leaves the model's
    outputs unchanged; ``init: reference`` draws every core and bias as the reference code does,
    so the adapted model starts away from the base model.
    """

    mode: str = field(default="adapter", metadata={"help": "adapter (LoRETTA_adp) or reparam (LoRETTA_rep)."})
    tensor_rank: int = field(default=8, metadata={"help": "Inner rank of the tensor-train cores."})
    bottleneck: int = field(
        default=64, metadata={"help": "adapter: the bottleneck width; reparam: the inner dimension r of up(down(x))."}
    )
    scaling: float = field(default=1.0, metadata={"help": "Multiplier of the adapter's output (reparam: alpha / r)."})
    activation: str = field(default="relu", metadata={"help": "adapter: the bottleneck non-linearity."})
    adapter_bias: bool = field(default=True, metadata={"help": "adapter: biases in the down and up projections."})
    init: str = field(
        default="identity",
        metadata={"help": "identity (up starts at zero: the adapter is an identity) or reference (all random)."},
    )
    max_factor: int = field(
        default=DEFAULT_MAX_FACTOR, metadata={"help": "Largest TT mode size when shapes are chosen automatically."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Linear layers to adapt (adapter: on their output); default per model type and mode."},
    )
    input_target_modules: list[str] | None = field(
        default=None, metadata={"help": "adapter: linear layers whose input (not output) passes through an adapter."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained fully and saved beside the adapters (e.g. the norms)."}
    )
    bias: str = field(default="none", metadata={"help": "Base-layer biases trained: only 'none' is supported."})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = LORETTA_PEFT_TYPE
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.init not in INITS:
            raise ValueError(f"init: {self.init!r} is not one of {', '.join(INITS)}")
        for name in ("tensor_rank", "bottleneck"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: {getattr(self, name)} must be a positive integer")
        if self.bias != "none":
            raise ValueError(f"bias: {self.bias!r} is not supported; use 'none'")
        inputs = list(self.input_target_modules or [])
        if inputs and self.mode != "adapter":
            raise ValueError("input_target_modules: only mode 'adapter' places adapters on a layer's input")
        self.input_target_modules = sorted(inputs) or None
        if isinstance(self.target_modules, (list, set, tuple)):  # None: LorettaModel fills in the defaults
            self.target_modules = set(self.target_modules) | set(inputs)

    def placement(self, module_name: str) -> str:
        """Where the adapter of the layer called ``module_name`` sits: ``input``, ``output`` or ``parallel``."""
        if self.mode == "reparam":
            return "parallel"
        return "input" if module_name in (self.input_target_modules or ()) else "output"
