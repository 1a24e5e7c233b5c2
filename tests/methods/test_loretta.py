"""``finetuning_type: loretta``: identity at insertion, save/reload and merge through PEFT, the LoRA
comparison, the parameter table, and one-line errors.

The shared promises (the loss falls, only adapters and norms change, reload, resume) are in
``test_matrix.py``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from llmtune.arguments import parse_args
from llmtune.errors import ConfigError
from llmtune.methods.loretta import param_table
from llmtune.methods.loretta.model import adapter_parameter_count, prepare_loretta, report_loretta
from llmtune.model import load_model
from llmtune.train import checkpoint as ckpt
from llmtune.train.run import run_sft

ROOT = Path(__file__).resolve().parents[2]
TINY = param_table.DecoderShape("tiny-llama", 64, 128, 2, 4, 2)

SETUPS = {
    "adapter": {"loretta_mode": "adapter", "loretta_rank": 4, "loretta_bottleneck": 16},
    "adapter-input": {
        "loretta_mode": "adapter",
        "loretta_rank": 3,
        "loretta_bottleneck": 8,
        "loretta_target": "down_proj",
        "loretta_input_target": "gate_proj,up_proj",
    },
    "reparam": {"loretta_mode": "reparam", "loretta_rank": 4, "loretta_target": "q_proj,v_proj"},
}


def run_args(**options):
    config = {"model_name_or_path": "llmtune/tiny-llama", "dataset": "demo_alpaca", "output_dir": "unused"}
    return parse_args({**config, "finetuning_type": "loretta", **options})


def adapted(setup: str):
    args = run_args(**SETUPS[setup])
    return prepare_loretta(load_model(args.model), args).eval(), args


def probe_batch():
    return torch.randint(5, 200, (2, 12), generator=torch.Generator().manual_seed(0))


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch).logits


def randomise_trainables(model) -> None:
    """Move every trainable parameter (adapters and norms) away from its initial value."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("setup", list(SETUPS))
def test_inserted_adapters_leave_the_logits_unchanged(setup):
    args = run_args(**SETUPS[setup])
    base = load_model(args.model).eval()
    batch = probe_batch()
    expected = logits(base, batch)
    model, _ = adapted(setup)
    torch.testing.assert_close(logits(model, batch), expected, rtol=0, atol=0)


@pytest.mark.parametrize("setup", list(SETUPS))
def test_reference_init_starts_every_adapter_random_and_reloads(tmp_path, setup):
    # loretta_init: reference draws the up/B side too (as the reference code does): the logits move
    # at once, every up core and bias is non-zero, and the choice is saved with the adapter.
    from peft import PeftModel

    args = run_args(**SETUPS[setup], loretta_init="reference")
    batch = probe_batch()
    base = logits(load_model(args.model).eval(), batch)
    model = prepare_loretta(load_model(args.model), args).eval()
    assert not torch.allclose(logits(model, batch), base, atol=1e-4)
    ups = [p for n, p in model.named_parameters() if "loretta_up" in n]
    assert ups and all(torch.count_nonzero(p) == p.numel() for p in ups)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["init"] == "reference"
    reloaded = PeftModel.from_pretrained(load_model(args.model), tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, batch), logits(model, batch), rtol=0, atol=1e-6)


@pytest.mark.parametrize("setup", list(SETUPS))
def test_only_adapters_and_norms_are_trainable(setup):
    model, _ = adapted(setup)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    adapters = [n for n in trainable if ".loretta_down." in n or ".loretta_up." in n]
    norms = [n for n in trainable if "norm.modules_to_save." in n]
    assert adapters and norms and sorted(adapters + norms) == sorted(trainable)
    frozen_linear = [n for n, p in model.named_parameters() if n.endswith("base_layer.weight") and p.requires_grad]
    assert not frozen_linear


@pytest.mark.parametrize("setup", list(SETUPS))
def test_saved_adapter_reloads_to_the_same_logits(tmp_path, setup):
    from peft import PeftModel

    model, args = adapted(setup)
    randomise_trainables(model)
    batch = probe_batch()
    expected = logits(model, batch)
    model.save_pretrained(tmp_path)
    # issue 15 §6: the saved files hold every trainable number of the tensor-train adapter.
    assert ckpt.verify_saved_weights(tmp_path, model) > 0
    base = load_model(args.model).eval()
    assert not torch.allclose(logits(base, batch), expected, atol=1e-3)  # the adapters do change the outputs
    reloaded = PeftModel.from_pretrained(base, tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, batch), expected, rtol=0, atol=1e-6)


def test_reparam_merges_into_the_weights_and_unmerges():
    model, _ = adapted("reparam")
    randomise_trainables(model)
    batch = probe_batch()
    expected = logits(model, batch)
    model.base_model.merge_adapter()
    torch.testing.assert_close(logits(model, batch), expected, rtol=0, atol=1e-5)
    model.base_model.unmerge_adapter()
    torch.testing.assert_close(logits(model, batch), expected, rtol=0, atol=1e-5)
    merged = model.merge_and_unload()
    assert not any("loretta" in name for name, _ in merged.named_modules())
    torch.testing.assert_close(logits(merged, batch), expected, rtol=0, atol=1e-5)


def test_adapter_mode_refuses_to_merge_with_one_line():
    model, _ = adapted("adapter")
    with pytest.raises(ValueError, match=r"^loretta_mode: adapter cannot be merged .*loretta_mode: reparam$"):
        model.merge_and_unload()


def test_report_compares_with_lora_on_the_same_layers():
    model, args = adapted("adapter")  # o_proj 64->64 and down_proj 128->64, two layers
    lora = 2 * 8 * ((64 + 64) + (128 + 64))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    line = report_loretta(model, args)
    assert f"{trainable / lora:.3f}x LoRA r=8 on the same layers (down_proj, o_proj: {lora:,})" in line
    assert f"tensor-train adapters: {adapter_parameter_count(model):,} parameters" in line


@pytest.mark.parametrize(
    ("setup", "row"),
    [
        ("adapter", lambda: param_table.loretta_count(TINY, "adapter", 4, 16, ["o_proj", "down_proj"])),
        (
            "adapter-input",
            lambda: param_table.loretta_count(TINY, "adapter", 3, 8, ["down_proj"], ("gate_proj", "up_proj")),
        ),
        ("reparam", lambda: param_table.loretta_count(TINY, "reparam", 4, 8, ["q_proj", "v_proj"])),
    ],
)
def test_table_formulas_match_adapters_built_on_a_model(setup, row):
    model, _ = adapted(setup)
    assert adapter_parameter_count(model) == row()
    norms = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "norm.modules_to_save." in n)
    assert norms == TINY.norm_parameters


def test_table_counts_the_reference_adapters_as_published():
    # LoRETTA_adp at rank 8 and AdaZeta's rank-5 adapters on Llama-2-7B (inputs of gate/up_proj, output
    # of down_proj): the reference's [16, 16, 16, 4, 4, 4] shapes give its 921,600 and about 0.61M.
    places = (["down_proj"], ("gate_proj", "up_proj"))
    assert param_table.loretta_count(param_table.LLAMA2_7B, "adapter", 8, 64, *places) == 921_600
    assert param_table.loretta_count(param_table.LLAMA2_7B, "adapter", 5, 64, *places) == 610_560


def test_committed_parameter_table_is_current():
    page = (ROOT / "docs" / "tensor_train_params.md").read_text()
    assert page == param_table.table(), (
        "regenerate: python -m llmtune.methods.loretta.param_table > docs/tensor_train_params.md"
    )


def test_training_logs_the_ratio_and_reloads(tmp_path, make_config, caplog):
    from peft import PeftModel

    config = make_config(tmp_path / "out", "loretta", max_steps=4, save_steps=100, **SETUPS["reparam"])
    with caplog.at_level(logging.INFO, logger="llmtune"):
        result = run_sft(parse_args(config))
    assert any("x LoRA r=8 on the same layers (q_proj, v_proj" in r.getMessage() for r in caplog.records)
    batch = probe_batch()
    expected = logits(result.model.eval(), batch)
    base = load_model(parse_args(config).model).eval()
    assert not torch.allclose(logits(base, batch), expected, atol=1e-4)  # four steps moved the adapters
    reloaded = PeftModel.from_pretrained(base, result.output_dir).eval()
    torch.testing.assert_close(logits(reloaded, batch), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"loretta_mode": "adpter"},
            r"^loretta_mode: 'adpter' is not one of adapter, reparam \(did you mean 'adapter'\?\)$",
        ),
        (
            {"loretta_activation": "swish"},
            r"^loretta_activation: 'swish' is not one of gelu, identity, relu, silu, tanh",
        ),
        ({"loretta_rank": 0}, r"^loretta_rank: 0 must be a positive integer$"),
        ({"loretta_init": "random"}, r"^loretta_init: 'random' is not one of identity, reference"),
        (
            {"loretta_mode": "reparam", "loretta_input_target": "gate_proj"},
            r"^loretta_input_target: only loretta_mode: adapter",
        ),
    ],
)
def test_bad_options_are_one_line_before_anything_loads(options, message):
    with pytest.raises(ConfigError, match=message):
        run_args(**options)


def test_a_target_the_model_lacks_names_the_layers_it_has():
    args = run_args(loretta_target="q_proj,qkv")
    with pytest.raises(ConfigError, match=r"^loretta_target: qkv matches no linear layer; this model has: down_proj, "):
        prepare_loretta(load_model(args.model), args)


def test_the_readmes_lines_load_a_saved_adapter_in_a_fresh_process(tmp_path):
    """What the README tells a user: ``import llmtune``, then PEFT loads the adapter as any other
    (without the import PEFT does not know the type)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    model, args = adapted("adapter")
    randomise_trainables(model)
    batch = probe_batch()
    expected = logits(model, batch)
    model.save_pretrained(tmp_path / "adapter")
    torch.save({"batch": batch, "expected": expected}, tmp_path / "probe.pt")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    lines = re.search(r"```python\n(import llmtune  #.*?)```", readme, re.S).group(1)
    from llmtune.model import resolve_model_path

    script = f"""
import torch
BASE = {str(resolve_model_path(args.model))!r}
{lines.replace('"saves/my-loretta-run"', repr(str(tmp_path / "adapter")))}
probe = torch.load({str(tmp_path / "probe.pt")!r})
with torch.no_grad():
    out = model.eval()(input_ids=probe["batch"]).logits
torch.testing.assert_close(out, probe["expected"], rtol=0, atol=1e-5)
print("same logits")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "same logits" in done.stdout, done.stderr[-2000:]
    without = script.replace("import llmtune  #", "pass  #")
    assert subprocess.run([sys.executable, "-c", without], capture_output=True, text=True, timeout=600).returncode != 0
