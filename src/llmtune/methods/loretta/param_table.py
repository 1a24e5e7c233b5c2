"""Trainable-parameter counts of LoRA and LoRETTA computed from a model's config (no weights needed).

``python -m llmtune.methods.loretta.param_table > docs/tensor_train_params.md`` writes the table in
``docs/``; a test checks that the committed file is what this module prints. The counts use the
same TT shapes (:func:`~llmtune.methods.tensor_train.shape.tt_shape_for`) the adapters are built
with, and a test builds adapters on a small model to check the formulas against real parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmtune.methods.tensor_train.shape import DEFAULT_MAX_FACTOR, tt_parameter_count, tt_shape_for


@dataclass(frozen=True)
class DecoderShape:
    """The dimensions of a Llama-style decoder that decide adapter sizes (from its ``config.json``)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``{short name: (in_features, out_features)}`` of the linear layers of one decoder layer."""
        kv = self.num_key_value_heads * self.head_dim
        h, m = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, m),
            "up_proj": (h, m),
            "down_proj": (m, h),
        }

    @property
    def norm_parameters(self) -> int:
        """Two RMSNorms per layer and the final one."""
        return (2 * self.num_hidden_layers + 1) * self.hidden_size


# From the models' config.json files on the Hugging Face Hub.
LLAMA2_7B = DecoderShape("Llama-2-7B", 4096, 11008, 32, 32, 32)
LLAMA3_8B = DecoderShape("Llama-3-8B", 4096, 14336, 32, 32, 8)


def lora_count(model: DecoderShape, targets: list[str], rank: int) -> int:
    """LoRA: ``rank * (in + out)`` per target layer, every layer."""
    shapes = model.linear_shapes()
    return model.num_hidden_layers * sum(rank * sum(shapes[t]) for t in targets)


def tt_pair_count(in_features: int, width: int, out_features: int, rank: int, bias: bool) -> int:
    """A ``down`` (in -> width) and ``up`` (width -> out) TT pair, with biases when ``bias``."""
    down = tt_parameter_count(tt_shape_for(in_features, width, DEFAULT_MAX_FACTOR), rank, width if bias else 0)
    up = tt_parameter_count(tt_shape_for(width, out_features, DEFAULT_MAX_FACTOR), rank, out_features if bias else 0)
    return down + up


def loretta_count(
    model: DecoderShape,
    mode: str,
    rank: int,
    width: int,
    targets: list[str],
    input_targets: tuple[str, ...] = (),
) -> int:
    """LoRETTA adapters (no norms): ``adapter`` pairs on the target's output (input for ``input_targets``,
    with biases), ``reparam`` pairs from the target's input to its output (no biases)."""
    shapes = model.linear_shapes()
    per_layer = 0
    for name in [*targets, *input_targets]:
        fan_in, fan_out = shapes[name]
        if mode == "reparam":
            per_layer += tt_pair_count(fan_in, width, fan_out, rank, bias=False)
        else:
            features = fan_in if name in input_targets else fan_out
            per_layer += tt_pair_count(features, width, features, rank, bias=True)
    return model.num_hidden_layers * per_layer


@dataclass(frozen=True)
class Row:
    method: str
    settings: str
    adapters: int
    norms: int

    @property
    def total(self) -> int:
        return self.adapters + self.norms


def rows(model: DecoderShape) -> list[Row]:
    """The table's rows for ``model``: LoRA r=8, and LoRETTA at the papers' ranks and placements."""
    norms = model.norm_parameters
    return [
        Row("LoRA", "r=8, q_proj,v_proj", lora_count(model, ["q_proj", "v_proj"], 8), 0),
        Row("LoRA", "r=8, every linear layer", lora_count(model, list(model.linear_shapes()), 8), 0),
        Row(
            "loretta adapter",
            "TT rank 8, bottleneck 64, after o_proj,down_proj (default), norms trained",
            loretta_count(model, "adapter", 8, 64, ["o_proj", "down_proj"]),
            norms,
        ),
        Row(
            "loretta adapter",
            "TT rank 8, bottleneck 64, the reference LoRETTA_adp placement (input of gate/up_proj, output of "
            "down_proj), norms not counted",
            loretta_count(model, "adapter", 8, 64, ["down_proj"], ("gate_proj", "up_proj")),
            0,
        ),
        Row(
            "adazeta",
            "TT rank 5, bottleneck 64, AdaZeta placement (input of gate/up_proj, output of down_proj; default), "
            "norms frozen",
            loretta_count(model, "adapter", 5, 64, ["down_proj"], ("gate_proj", "up_proj")),
            0,
        ),
        Row(
            "loretta reparam",
            "TT rank 8, r=8, q_proj,v_proj, norms trained",
            loretta_count(model, "reparam", 8, 8, ["q_proj", "v_proj"]),
            norms,
        ),
    ]


def table() -> str:
    """The Markdown of ``docs/tensor_train_params.md``."""
    lines = [
        "# Trainable parameters: LoRA and tensor-train adapters",
        "",
        "Generated by `python -m llmtune.methods.loretta.param_table > docs/tensor_train_params.md` from the",
        "models' configs (no weights); `tests/methods/test_loretta.py` checks that this file is current and that",
        "the formulas match adapters built on a real model. TT shapes are the reference code's where it",
        "hard-codes a tensor-train matrix (4096 x 64 -> [16, 16, 16, 4, 4, 4] and the reverse for 64 x 4096),",
        "else llmtune's rule (the fewest balanced modes of at most 16): 11008 x 64 -> [16, 16, 43, 8, 8].",
        "",
    ]
    for model in (LLAMA2_7B, LLAMA3_8B):
        lines += [
            f"## {model.name} (hidden {model.hidden_size}, MLP {model.intermediate_size}, "
            f"{model.num_hidden_layers} layers, {model.num_key_value_heads} KV heads)",
            "",
            "| method | settings | adapter parameters | trainable norms | total | vs LoRA r=8 q,v |",
            "|---|---|---:|---:|---:|---:|",
        ]
        table_rows = rows(model)
        lora_qv = table_rows[0].total
        for row in table_rows:
            lines.append(
                f"| {row.method} | {row.settings} | {row.adapters:,} | {row.norms:,} | {row.total:,} | "
                f"{row.total / lora_qv:.3f}x |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(), end="")
