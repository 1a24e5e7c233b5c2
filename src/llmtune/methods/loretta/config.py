"""Options of ``finetuning_type: loretta`` (LoRETTA, Yang et al., NAACL 2024); ``adazeta`` uses them too."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmtune.errors import ConfigError, one_of

LORETTA_MODES = ("adapter", "reparam")
LORETTA_ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "identity")
LORETTA_INITS = ("identity", "reference")
DEFAULT_BOTTLENECK = {"adapter": 64, "reparam": 8}


@dataclass
class LorettaArguments:
    """Shape and placement of the tensor-train (TT) adapters.

    ``adapter`` (LoRETTA_adp) puts a bottleneck adapter ``h + up(act(down(h))) * alpha / bottleneck``
    after each target layer; ``reparam`` (LoRETTA_rep) adds ``up(down(x)) * alpha / r`` to each
    target's output, like LoRA. ``down`` and ``up`` are tensor-train matrices of rank
    ``loretta_rank``; with ``loretta_init: identity`` (the default) ``up`` starts at zero, so the
    model's outputs are unchanged before training (the reference code starts both at random:
    ``loretta_init: reference``).
    """

    loretta_mode: str = field(
        default="adapter",
        metadata={
            "choices": LORETTA_MODES,
            "help": "adapter (bottleneck adapters after the attention and MLP blocks) or reparam (a TT ΔW).",
        },
    )
    loretta_rank: int | None = field(
        default=None,
        metadata={
            "help": "Tensor-train rank of the adapter cores (default: the paper's, 8 for loretta and 5 for adazeta)."
        },
    )
    loretta_bottleneck: int | None = field(
        default=None,
        metadata={"help": "adapter: the bottleneck width (default 64); reparam: the inner dimension r (default 8)."},
    )
    loretta_alpha: float | None = field(
        default=None,
        metadata={
            "help": "The adapter output is scaled by loretta_alpha / loretta_bottleneck (default: adapter "
            "1 x bottleneck, reparam 2 x r, i.e. alpha 16 at r 8)."
        },
    )
    loretta_target: str = field(
        default="auto",
        metadata={
            "help": "Comma-separated linear layers to adapt; 'auto': the paper's placement: loretta adapter after "
            "o_proj,down_proj (the attention and MLP blocks), reparam q_proj,v_proj; adazeta the inputs of "
            "gate_proj,up_proj and the output of down_proj; 'all': every linear layer but the output head."
        },
    )
    loretta_input_target: str | None = field(
        default=None,
        metadata={
            "help": "adapter mode: comma-separated linear layers whose input, not output, passes through an adapter "
            "(AdaZeta's placement, its default: loretta_input_target gate_proj,up_proj with loretta_target down_proj)."
        },
    )
    loretta_activation: str = field(
        default="relu", metadata={"choices": LORETTA_ACTIVATIONS, "help": "adapter mode: the bottleneck non-linearity."}
    )
    loretta_init: str = field(
        default="identity",
        metadata={
            "choices": LORETTA_INITS,
            "help": "How the adapters start: identity (the up/B projection is zero, so the adapted model equals the "
            "base model until it trains; llmtune's default) or reference (every tensor-train core random and the "
            "adapter biases uniform, as the LoRETTA/AdaZeta code initialises them: the model starts perturbed).",
        },
    )
    loretta_train_norms: bool = field(
        default=True,
        metadata={"help": "Also train the layer norms, as LoRETTA does (adazeta always freezes them)."},
    )

    def __post_init__(self):
        if self.loretta_mode not in LORETTA_MODES:
            raise one_of("loretta_mode", self.loretta_mode, LORETTA_MODES)
        if self.loretta_activation not in LORETTA_ACTIVATIONS:
            raise one_of("loretta_activation", self.loretta_activation, LORETTA_ACTIVATIONS)
        if self.loretta_init not in LORETTA_INITS:
            raise one_of("loretta_init", self.loretta_init, LORETTA_INITS)
        for name in ("loretta_rank", "loretta_bottleneck"):
            value = getattr(self, name)
            if value is not None and not value >= 1:
                raise ConfigError(f"{name}: {value} must be a positive integer")
        if self.loretta_alpha is not None and not 0 < self.loretta_alpha < float("inf"):
            raise ConfigError(f"loretta_alpha: {self.loretta_alpha} must be > 0")
        if self.loretta_input_target and self.loretta_mode != "adapter":
            raise ConfigError(
                "loretta_input_target: only loretta_mode: adapter places adapters on a layer's input; "
                "remove it or set loretta_mode: adapter"
            )
        if self.loretta_bottleneck is None:
            self.loretta_bottleneck = DEFAULT_BOTTLENECK[self.loretta_mode]
        if self.loretta_alpha is None:
            multiple = 1 if self.loretta_mode == "adapter" else 2
            self.loretta_alpha = float(multiple * self.loretta_bottleneck)

    @property
    def scaling(self) -> float:
        """The multiplier of the adapter's output, ``loretta_alpha / loretta_bottleneck``."""
        return self.loretta_alpha / self.loretta_bottleneck
