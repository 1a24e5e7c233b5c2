"""The compatibility table: every cell is tested by a test that exists, refused in one line, or allowed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llmtune import compat
from llmtune.arguments import parse_args
from llmtune.errors import ConfigError
from llmtune.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED = {
    "zero2": str(ROOT / "examples/deepspeed/ds_z2_config.json"),
    "zero3": str(ROOT / "examples/deepspeed/ds_z3_config.json"),
}


def config_for(cell: compat.Cell) -> dict:
    """A raw config that asks for ``cell``."""
    config = {
        "finetuning_type": cell.finetuning_type,
        "gradient_accumulation_steps": 1 if cell.accumulation == "1" else 4,
    }
    if cell.engine in DEEPSPEED:
        config["deepspeed"] = DEEPSPEED[cell.engine]
    elif cell.engine == "fsdp":
        config["fsdp"] = "full_shard auto_wrap"
    if cell.precision != "fp32":
        config[cell.precision] = True
    if cell.quantization != "none":
        config["quantization_bit"] = int(cell.quantization.removesuffix("bit"))
    return config


CELLS = [cell for quantization in ("none", *compat.QUANTISED) for cell in compat.all_cells(quantization)]


def world_size_for(cell: compat.Cell) -> int:
    return 1 if cell.engine == "none" else 2


def test_the_table_covers_every_registered_finetuning_type():
    assert set(compat.finetuning_types()) == set(METHODS)


def test_docs_are_generated_from_the_table():
    # Regenerate with: python -m llmtune.compat > docs/compatibility.md
    assert (ROOT / "docs" / "compatibility.md").read_text() == compat.render_markdown()


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_tested_cell_names_a_test_that_exists():
    named = {compat.status_of(cell).detail for cell in CELLS if compat.status_of(cell).status == "tested"}
    assert len(named) >= 10
    for node_id in named:
        file, _, function = node_id.partition("::")
        assert (ROOT / file).is_file(), node_id
        assert function in _test_functions(ROOT / file), node_id


def test_every_cell_round_trips_through_a_config():
    for cell in CELLS:
        assert compat.cell_of(config_for(cell), world_size_for(cell)) == cell


def test_every_refused_cell_refuses_in_one_line_and_every_other_cell_passes():
    refused = 0
    for cell in CELLS:
        rule = compat.status_of(cell)
        if rule.status == "refused":
            with pytest.raises(ConfigError) as info:
                compat.check_config(config_for(cell), world_size=world_size_for(cell), has_gpu=True)
            message = str(info.value)
            assert "\n" not in message and cell.finetuning_type in message and rule.detail in message
            refused += 1
        else:
            assert compat.check_config(config_for(cell), world_size=world_size_for(cell), has_gpu=True) == cell
    # block x 2 sharded engines (ZeRO-2, FSDP; ZeRO-3 and DDP are tested), sparse, zo and adazeta x 3 sharded
    # engines, x 6 columns, and sparse fp16 alone in one process and under DDP x 2 accumulation columns ...
    unquantised = (2 + 3 + 2 * 3) * 6 + 2 * 2
    # ... and quantised (x 2 bit widths): full, block, sparse everywhere (5 engines x 6 columns), zo and adazeta
    # under the 3 sharded engines as unquantised
    assert refused == unquantised + 2 * (3 * 5 * 6 + 2 * 3 * 6)


def test_config_refusals_come_before_anything_loads(make_config, tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr("llmtune.model.loader.load_model", lambda *a, **k: loads.append(a))
    z3 = DEEPSPEED["zero3"]
    cases = [
        ({"finetuning_type": "zo", "deepspeed": z3}, "deepspeed: finetuning_type: zo under DeepSpeed ZeRO-3"),
        ({"finetuning_type": "adazeta", "fsdp": "full_shard"}, "fsdp: finetuning_type: adazeta under FSDP"),
        ({"finetuning_type": "sparse", "deepspeed": "missing.json"}, "deepspeed: finetuning_type: sparse under"),
        ({"finetuning_type": "lora", "deepspeed": "missing.json"}, "deepspeed: 'missing.json' does not exist"),
        ({"finetuning_type": "full", "fsdp": "full_shard auto_wrap"}, "fsdp: FSDP needs GPUs"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError) as info:
            parse_args({**make_config(tmp_path, "lora"), **overrides})
        assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)
    assert loads == []


def test_several_processes_are_counted_before_torchrun_starts(monkeypatch, make_config, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("NPROC_PER_NODE", "4")
    assert compat.cell_of({"finetuning_type": "sparse"}).engine == "ddp"
    monkeypatch.setenv("NPROC_PER_NODE", "1")
    assert compat.cell_of({"finetuning_type": "sparse"}).engine == "none"


def test_a_missing_deepspeed_package_names_the_install_command(monkeypatch, make_config, tmp_path):
    real = compat.importlib.util.find_spec
    monkeypatch.setattr(
        compat.importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"^deepspeed: the deepspeed package is not installed; pip install"):
        parse_args({**make_config(tmp_path, "lora"), "deepspeed": DEEPSPEED["zero2"]})


def test_quantisation_is_an_axis_with_its_own_rules():
    full = compat.cell_of({"finetuning_type": "full", "quantization_bit": 4}, world_size=1)
    assert full.quantization == "4bit" and compat.status_of(full).status == "refused"
    with pytest.raises(ConfigError, match=r"^quantization_bit: finetuning_type: full quantised to 4bit is not supp"):
        compat.check_config({"finetuning_type": "full", "quantization_bit": 4}, world_size=1)
    qlora = compat.cell_of({"finetuning_type": "lora", "quantization_bit": "4"}, world_size=1)
    assert compat.status_of(qlora).status == "tested"
    # a test of plain LoRA under DDP does not make quantised LoRA under DDP tested
    assert compat.status_of(compat.Cell("lora", "ddp", "1", "fp32")).status == "tested"
    assert compat.status_of(compat.Cell("lora", "ddp", "1", "fp32", "4bit")).status == "untested"
    # a refusal of the unquantised combination still holds quantised
    assert compat.status_of(compat.Cell("zo", "zero3", "1", "fp32", "4bit")).status == "refused"
    assert compat.check_config({"finetuning_type": "full"}, world_size=1).quantization == "none"


def test_validate_prints_the_cell_and_its_status(capsys, tmp_path):
    from llmtune.cli import main

    config = ROOT / "examples" / "train_full" / "tiny_full_sft_ds3.yaml"
    assert main(["validate", str(config), "--output_dir", str(tmp_path / "out"), "--max_samples", "8"]) == 0
    out = capsys.readouterr().out
    expected = (
        "compatibility: finetuning_type: full under DeepSpeed ZeRO-3 with gradient_accumulation_steps 1 in fp32: "
    )
    assert (
        expected + "tested (tests/train/test_distributed.py::test_full_under_ddp_zero2_zero3_matches_one_process)"
        in out
    )
