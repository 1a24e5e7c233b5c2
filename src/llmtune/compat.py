"""The one compatibility table: finetuning_type x engine x gradient accumulation x precision (x quantisation).

Every combination a config can ask for is declared here once, as data (:data:`RULES`), with its status:

* ``tested``: it runs, and the named test proves it (``tests/...py::test_name``);
* ``refused``: ``llmtune train`` and ``llmtune validate`` stop before anything loads, with the reason and the
  alternative in one line;
* ``untested``: it is allowed and expected to work (the engines are DeepSpeed's and PyTorch's own), but no
  test runs it here, for the reason given (mostly: fp16/bf16 and FSDP need a GPU).

:func:`check_config` reads a raw config (after the methods' ``normalise`` hooks), works out the cell it asks
for, and raises the cell's refusal; it also checks what the machine and the installed packages must provide
for that cell (DeepSpeed installed, FSDP only on GPUs). ``python -m llmtune.compat`` writes
``docs/compatibility.md`` from the same table.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.errors import ConfigError
from llmtune.hparams.truth import is_true
from llmtune.launch import launch_plan
from llmtune.methods import finetuning_types as registered


def finetuning_types() -> tuple[str, ...]:
    """The table's rows: every registered ``finetuning_type`` (a method added to the registry appears here)."""

    return registered()


ENGINES = ("none", "ddp", "zero2", "zero3", "fsdp")
ACCUMULATION = ("1", ">1")
PRECISIONS = ("fp32", "bf16", "fp16")
# Quantisation (``quantization_bit``, bitsandbytes) is the fifth axis. Its rules are added to
# QUANTIZATION_RULES by llmtune.model.quantization; until then a quantised cell follows the
# unquantised rules (see quantization_of).
QUANTIZATIONS = ("none", "4bit", "8bit")

ENGINE_NAMES = {
    "none": "one process",
    "ddp": "DDP (torchrun)",
    "zero2": "DeepSpeed ZeRO-0/1/2",
    "zero3": "DeepSpeed ZeRO-3",
    "fsdp": "FSDP",
}

ANY = "*"
MATRIX = "tests/methods/test_matrix.py::test_loss_falls_and_only_intended_parameters_change"
DIST = "tests/train/test_distributed.py"


@dataclass(frozen=True)
class Rule:
    """One line of the table. ``ANY`` or a tuple of values per axis; the first rule that matches a cell wins."""

    finetuning_type: str | tuple[str, ...]
    engine: str | tuple[str, ...]
    accumulation: str | tuple[str, ...]
    precision: str | tuple[str, ...]
    status: str  # "tested" | "refused" | "untested"
    detail: str  # tested: the test's node id; refused: reason + alternative; untested: why not tested here
    quantization: str | tuple[str, ...] = ANY
    key: str = ""  # refused: the config key the message names (default: the engine's key)

    def matches(self, cell: Cell) -> bool:
        pairs = (
            (self.finetuning_type, cell.finetuning_type),
            (self.engine, cell.engine),
            (self.accumulation, cell.accumulation),
            (self.precision, cell.precision),
            (self.quantization, cell.quantization),
        )
        return all(want == ANY or value == want or (isinstance(want, tuple) and value in want) for want, value in pairs)


@dataclass(frozen=True)
class Cell:
    """One combination a config asks for."""

    finetuning_type: str
    engine: str
    accumulation: str
    precision: str
    quantization: str = "none"

    def describe(self, rule: Rule | None = None) -> str:
        """The cell in words; with ``rule``, only the axes the rule constrains (what makes it refused)."""
        parts = [f"finetuning_type: {self.finetuning_type}"]
        if rule is None or rule.engine != ANY:
            parts.append(f"under {ENGINE_NAMES[self.engine]}")
        if rule is None or rule.accumulation != ANY:
            parts.append(f"with gradient_accumulation_steps {self.accumulation}")
        if rule is None or rule.precision != ANY:
            parts.append(f"in {self.precision}")
        if self.quantization != "none" and (rule is None or rule.quantization != ANY):
            parts.append(f"quantised to {self.quantization}")
        return " ".join(parts)


BADAM = ("block", "sparse")
ZO = ("zo", "adazeta")
SHARDED = ("zero2", "zero3", "fsdp")
MULTI = ("ddp", "zero2", "zero3", "fsdp")

# Refusals first (one entry per concept), then what tests prove, then the rest.
RULES: list[Rule] = [
    Rule(
        "block",
        ("zero2", "fsdp"),
        ANY,
        ANY,
        "refused",
        "BAdam changes which parameters train every badam_switch_interval steps, but ZeRO-2 and FSDP build their "
        "partitions of gradients and optimizer states for the parameters trainable when training starts; use "
        "DeepSpeed ZeRO-3 (its partitions are rebuilt at each switch), DDP (NPROC_PER_NODE without "
        "deepspeed/fsdp: the active block's gradients are averaged across processes), or one GPU (llmtune "
        "estimate: Llama-3-8B fits 24 GB)",
    ),
    Rule(
        "sparse",
        SHARDED,
        ANY,
        ANY,
        "refused",
        "sparse keeps compact gradients of the selected entries that ZeRO and FSDP partitions never see, so "
        "processes would drift apart; use DDP (NPROC_PER_NODE without deepspeed/fsdp: the compact gradients are "
        "averaged across processes) or one process",
    ),
    Rule(
        "sparse",
        ANY,
        ANY,
        "fp16",
        "refused",
        "sparse keeps only the selected gradient entries, which fp16 loss scaling cannot see; use bf16: true, or neither",
        key="fp16",
    ),
    Rule(
        ZO,
        SHARDED,
        ANY,
        ANY,
        "refused",
        "zeroth-order training keeps no gradients or optimizer states to shard; remove deepspeed/fsdp and launch "
        "with NPROC_PER_NODE (data-parallel ZO: the same seed stream on every process, projected gradients averaged)",
    ),
    # What tests prove.
    Rule(ANY, "none", "1", "fp32", "tested", MATRIX),
    Rule(
        "zo",
        "none",
        ">1",
        "fp32",
        "tested",
        "tests/methods/test_zo.py::test_gradient_accumulation_equals_a_batch_k_times_larger",
    ),
    Rule(
        "adazeta",
        "none",
        ">1",
        "fp32",
        "tested",
        "tests/methods/test_adazeta.py::test_accumulation_in_the_trainer_equals_the_larger_batch",
    ),
    Rule(
        "block",
        "none",
        "1",
        "bf16",
        "tested",
        "tests/methods/test_block.py::test_bf16_run_keeps_bf16_weights_and_warns_when_blocks_get_no_turn",
    ),
    Rule(
        "sparse",
        "none",
        "1",
        "bf16",
        "tested",
        "tests/methods/test_sparse.py::test_bf16_weights_keep_an_fp32_master_of_the_selected_entries_only",
    ),
    Rule("zo", "none", "1", "bf16", "tested", "tests/methods/test_zo.py::test_bf16_forwards_leave_the_weights_exact"),
    Rule(
        "adazeta",
        "none",
        "1",
        "bf16",
        "tested",
        "tests/methods/test_adazeta.py::test_bf16_keeps_the_adapters_in_bf16_and_resumes_them_bitwise",
    ),
    Rule(
        "full",
        ("ddp", "zero2", "zero3"),
        "1",
        "fp32",
        "tested",
        f"{DIST}::test_full_under_ddp_zero2_zero3_matches_one_process",
    ),
    Rule(
        "full", ("ddp", "zero3"), ">1", "fp32", "tested", f"{DIST}::test_full_under_ddp_zero2_zero3_matches_one_process"
    ),
    Rule(
        ("lora", "loretta"),
        "zero3",
        "1",
        "fp32",
        "tested",
        f"{DIST}::test_zero3_adapters_reload_in_one_process_to_the_same_logits",
    ),
    Rule(
        "zo", "ddp", "1", "fp32", "tested", f"{DIST}::test_zo_under_ddp_matches_one_process_with_the_same_global_batch"
    ),
    Rule(
        "block",
        "ddp",
        "1",
        "fp32",
        "tested",
        f"{DIST}::test_block_under_ddp_matches_one_process_and_switches_on_both_ranks",
    ),
    Rule("block", "ddp", ">1", "fp32", "tested", f"{DIST}::test_block_and_sparse_under_ddp_match_one_process"),
    Rule("block", "zero3", "1", "fp32", "tested", f"{DIST}::test_block_under_zero3_matches_one_process_and_resumes"),
    Rule("sparse", "ddp", ANY, "fp32", "tested", f"{DIST}::test_block_and_sparse_under_ddp_match_one_process"),
    Rule(
        "adazeta",
        "ddp",
        "1",
        "fp32",
        "tested",
        "tests/methods/test_adazeta.py::test_torchrun_with_two_processes_trains_as_one_process",
    ),
    Rule(
        "lora",
        "ddp",
        "1",
        "fp32",
        "tested",
        "tests/train/test_distributed_signals.py::test_sigterm_to_one_rank_stops_all_ranks_at_the_same_step",
    ),
    # The rest runs on the engines' own code paths but is not run by a test here.
    Rule(ANY, "fsdp", ANY, ANY, "untested", "FSDP needs GPUs (on CPU it is refused); not run by the CPU tests"),
    Rule(ANY, ANY, ANY, ("bf16", "fp16"), "untested", "mixed precision needs a GPU; not run by the CPU tests"),
    Rule(ANY, ANY, ANY, ANY, "untested", "expected to work; no test runs this combination yet"),
]

QUANTISED = ("4bit", "8bit")
QUANT_TESTS = "tests/model/test_quantization.py"
# Rules for quantised cells (quantization_bit), checked before RULES. The value checks of the
# quantization_* keys themselves are in llmtune.model.quantization.check_quantization.
QUANTIZATION_RULES: list[Rule] = [
    Rule(
        ("full", *BADAM),
        ANY,
        ANY,
        ANY,
        "refused",
        "it trains the base weights, which quantisation stores as integers with no gradient; use lora (QLoRA), "
        "loretta, or zo/adazeta with adapters, or drop quantization_bit",
        quantization=QUANTISED,
        key="quantization_bit",
    ),
    Rule("lora", "none", "1", "fp32", "tested", f"{QUANT_TESTS}::test_qlora_loss_falls", quantization="4bit"),
    Rule(
        ("loretta", "zo"),
        "none",
        "1",
        "fp32",
        "tested",
        f"{QUANT_TESTS}::test_zo_and_loretta_train_only_their_adapters_over_a_4bit_base",
        quantization="4bit",
    ),
]


def all_rules() -> list[Rule]:
    return [*QUANTIZATION_RULES, *RULES]


def status_of(cell: Cell) -> Rule:
    """The first rule that matches ``cell``.

    A quantised cell no quantisation rule names follows the unquantised rules, except that a test of
    the unquantised combination does not make it tested.
    """
    for rule in all_rules():
        if rule.matches(cell):
            if cell.quantization != "none" and rule.status == "tested" and rule not in QUANTIZATION_RULES:
                return Rule(ANY, ANY, ANY, ANY, "untested", "tested unquantised only", quantization=QUANTISED)
            return rule
    raise AssertionError(f"no rule for {cell}")  # the last rule matches everything


def refuse(cell: Cell) -> None:
    """Raise the table's one-line refusal when ``cell`` is refused."""
    _refuse(cell)


def all_cells(quantization: str = "none") -> list[Cell]:
    """Every combination of the table (for one quantisation value), in the docs' order."""
    return [
        Cell(ft, engine, accumulation, precision, quantization)
        for ft in finetuning_types()
        for engine in ENGINES
        for accumulation in ACCUMULATION
        for precision in PRECISIONS
    ]


# ---------------------------------------------------------------------------------------------
# From a config to its cell


def is_set(value: Any) -> bool:
    """Whether a config value such as ``deepspeed`` or ``fsdp`` asks for something (``false``/``""`` do not)."""
    if value is None or value is False or (isinstance(value, str | list | dict) and not value):
        return False
    return not (isinstance(value, str) and value.strip().lower() in ("false", "no", "none", "null", "0"))


def deepspeed_stage(value: Any) -> int:
    """ZeRO stage of a ``deepspeed`` value (a JSON file's path or a dict); a one-line error for a bad file."""
    if isinstance(value, dict):
        config = value
    else:
        path = Path(str(value))
        try:
            found = path.is_file()
        except (OSError, ValueError):  # a name too long for the file system, a NUL byte
            found = False
        if not found:
            raise ConfigError(
                f"deepspeed: {str(value)!r} does not exist; give a DeepSpeed JSON config, e.g. "
                "examples/deepspeed/ds_z3_config.json"
            )
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise ConfigError(f"deepspeed: {path} is not valid JSON ({err})") from None
    zero = config.get("zero_optimization", {}) if isinstance(config, dict) else {}
    stage = zero.get("stage", 0) if isinstance(zero, dict) else 0
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"deepspeed: zero_optimization.stage is {stage!r} in {value}; allowed: 0, 1, 2, 3")
    return int(stage)


def planned_world_size() -> int:
    """Processes this run has or will have: torchrun's WORLD_SIZE, else NPROC_PER_NODE x NNODES, else 1."""
    if os.environ.get("WORLD_SIZE"):
        return int(os.environ["WORLD_SIZE"])

    plan = launch_plan(os.environ)
    return plan.world_size if plan else 1


def quantization_of(config: dict[str, Any]) -> str:
    """``quantization_bit`` as an axis value (the key arrives with llmtune.model.quantization)."""
    bits = config.get("quantization_bit")
    try:
        return f"{int(bits)}bit" if bits not in (None, "", "none", "null") else "none"
    except (TypeError, ValueError):  # a bad value is reported by the quantisation options' own check
        return "none"


def cell_of(config: dict[str, Any], world_size: int | None = None, *, deepspeed_engine: str | None = None) -> Cell:
    """The table cell a (normalised) raw config asks for (``deepspeed_engine``: skip reading the JSON)."""
    world_size = planned_world_size() if world_size is None else world_size
    if is_set(config.get("deepspeed")):
        engine = deepspeed_engine or ("zero3" if deepspeed_stage(config["deepspeed"]) == 3 else "zero2")
    elif is_set(config.get("fsdp")):
        engine = "fsdp"
    else:
        engine = "ddp" if world_size > 1 else "none"
    accumulation = ">1" if int(config.get("gradient_accumulation_steps") or 1) > 1 else "1"
    precision = "bf16" if is_true(config.get("bf16")) else "fp16" if is_true(config.get("fp16")) else "fp32"
    return Cell(str(config.get("finetuning_type") or "lora"), engine, accumulation, precision, quantization_of(config))


def check_config(config: dict[str, Any], *, world_size: int | None = None, has_gpu: bool | None = None) -> Cell:
    """Refuse, in one line and before anything loads, a combination the table refuses or this machine cannot run.

    Returns the cell (for logging). ``world_size`` and ``has_gpu`` default to what this process sees.
    """
    try:
        cell = cell_of(config, world_size)
    except ConfigError:
        # An unreadable deepspeed file: when every ZeRO stage is refused for this config, that says more.
        cells = [cell_of(config, world_size, deepspeed_engine=engine) for engine in ("zero2", "zero3")]
        if all(c.finetuning_type in finetuning_types() and status_of(c).status == "refused" for c in cells):
            _refuse(cells[-1])
        raise
    if cell.finetuning_type not in finetuning_types():
        return cell  # an unknown finetuning_type is reported by the method registry
    _refuse(cell)
    check_machine(cell, config, has_gpu)
    return cell


def _refuse(cell: Cell) -> None:
    rule = status_of(cell)
    if rule.status == "refused":
        key = rule.key or {"zero2": "deepspeed", "zero3": "deepspeed", "fsdp": "fsdp"}.get(
            cell.engine, "finetuning_type"
        )
        what = cell.describe(rule)
        what = what.removeprefix("finetuning_type: ") if key == "finetuning_type" else what
        raise ConfigError(f"{key}: {what} is not supported: {rule.detail}")


def check_machine(cell: Cell, config: dict[str, Any], has_gpu: bool | None = None) -> None:
    """What the cell needs from the installed packages and the machine, checked before anything loads."""
    if cell.engine in ("zero2", "zero3") and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "deepspeed: the deepspeed package is not installed; pip install 'llmtune[deepspeed]' (or remove deepspeed)"
        )
    if cell.engine == "fsdp":
        if not (gpu_available() if has_gpu is None else has_gpu):
            raise ConfigError(
                "fsdp: FSDP needs GPUs (on CPU accelerate would silently run plain DDP instead); remove fsdp to "
                "train with DDP under torchrun, or use deepspeed: examples/deepspeed/ds_z3_config.json to shard on CPU"
            )


def gpu_available() -> bool:
    """Whether this machine has a CUDA GPU (FSDP's requirement)."""
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# docs/compatibility.md


def render_markdown() -> str:
    """``docs/compatibility.md``: one table per finetuning_type, notes numbered once."""
    notes: dict[str, str] = {}

    def mark(rule: Rule) -> str:
        key = f"{rule.status}: {rule.detail}"
        if key not in notes:
            notes[key] = str(len(notes) + 1)
        word = {"tested": "tested", "refused": "**refused**", "untested": "untested"}[rule.status]
        return f"{word} [{notes[key]}]"

    columns = [(a, p) for a in ACCUMULATION for p in PRECISIONS]
    lines = [
        "# Compatibility",
        "",
        "Generated by `python -m llmtune.compat > docs/compatibility.md` from `src/llmtune/compat.py`; "
        "a test keeps this file in sync.",
        "",
        "Every `finetuning_type` x engine x `gradient_accumulation_steps` x precision is one cell: **tested** "
        "(the test named in the notes runs it), **refused** (`llmtune train` and `llmtune validate` stop before "
        "anything loads, with the reason and the alternative), or untested (allowed, not run by a test here).",
        "Engine: `none` one process; `ddp` torchrun with several processes (`NPROC_PER_NODE`/`NNODES`); "
        "`zero2` a `deepspeed` config with ZeRO stage 0, 1 or 2 (weights replicated); `zero3` ZeRO stage 3; "
        "`fsdp` the `fsdp` key.",
        "Checked at the same point: `deepspeed` needs the deepspeed package (`pip install 'llmtune[deepspeed]'`); "
        "`fsdp` needs GPUs (refused on CPU, where accelerate would silently run DDP); `bf16` needs a bf16 GPU and "
        "`fp16` a CUDA GPU. Quantisation (`quantization_bit`) is the table's fifth axis: see the last table.",
        "",
    ]
    for ft in finetuning_types():
        lines += [f"## `{ft}`", ""]
        lines.append("| engine | " + " | ".join(f"accum {a}, {p}" for a, p in columns) + " |")
        lines.append("|---|" + "---|" * len(columns))
        for engine in ENGINES:
            cells = [mark(status_of(Cell(ft, engine, a, p))) for a, p in columns]
            lines.append(f"| {engine} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Quantised (`quantization_bit: 4` or `8`)", ""]
    lines.append("| finetuning_type | " + " | ".join(f"{q}, {e}" for q in QUANTISED for e in ENGINES) + " |")
    lines.append("|---|" + "---|" * (len(QUANTISED) * len(ENGINES)))
    for ft in finetuning_types():
        cells = [mark(status_of(Cell(ft, e, "1", "fp32", q))) for q in QUANTISED for e in ENGINES]
        lines.append(f"| {ft} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "(gradient_accumulation_steps 1, fp32 compute; other accumulation and precision follow the rows above.)",
        "",
    ]
    lines += ["## Notes", ""]
    lines += [f"{number}. {text.replace('::', ' :: ')}" for text, number in notes.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
