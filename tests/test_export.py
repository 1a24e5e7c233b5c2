"""``llmtune export``: a LoRA adapter trained on a 4-bit base, merged into the de-quantised base."""

from __future__ import annotations

import pytest
import torch
import yaml

from llmtune.arguments import parse_args
from llmtune.cli import main
from llmtune.model import load_model

BASE = "llmtune/tiny-llama"


@pytest.fixture(scope="module")
def qlora_adapter(tmp_path_factory, bnb_logits):
    """A LoRA adapter with random (non-zero) weights on the 4-bit tiny base, saved as `llmtune train` saves one."""
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("run")
    args = parse_args(
        {"model_name_or_path": BASE, "quantization_bit": 4, "output_dir": str(folder)}, for_training=False
    )
    torch.manual_seed(0)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj", "down_proj"])
    config.init_lora_weights = False  # random B as well as A, so the adapter changes the output
    model = get_peft_model(load_model(args.model, for_training=False), config)
    model.save_pretrained(folder)
    (folder / "training_args.yaml").write_text(yaml.safe_dump({"model_name_or_path": BASE, "quantization_bit": 4}))
    ids = torch.randint(5, 200, (2, 12))
    return folder, ids, bnb_logits(model, ids)


def test_exported_model_computes_what_base_and_adapter_computed(qlora_adapter, tmp_path, capsys, bnb_logits, bnb):
    from transformers import AutoModelForCausalLM

    adapter, ids, expected = qlora_adapter
    out = tmp_path / "merged"
    argv = ["export", "--model_name_or_path", BASE, "--adapter_name_or_path", str(adapter)]
    assert main([*argv, "--export_dir", str(out), "--export_dtype", "fp32"]) == 0
    assert "exported to" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert getattr(merged.config, "quantization_config", None) is None and merged.dtype == torch.float32
    assert torch.allclose(bnb_logits(merged, ids), expected, atol=1e-4)
    plain = load_model(parse_args({"model_name_or_path": BASE}, for_training=False).model, for_training=False)
    assert not torch.allclose(bnb_logits(plain, ids), expected, atol=1e-2)  # the merge changed the weights


@pytest.mark.slow
def test_a_bf16_export_is_the_fp32_export_rounded(qlora_adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter, _, _ = qlora_adapter
    argv = ["export", "--model_name_or_path", BASE, "--adapter_name_or_path", str(adapter)]
    assert main([*argv, "--export_dir", str(tmp_path / "fp32"), "--export_dtype", "fp32"]) == 0
    assert main([*argv, "--export_dir", str(tmp_path / "bf16")]) == 0  # bf16 is the default
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "fp32").state_dict()
    half = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto").state_dict()
    assert full.keys() == half.keys()
    for name, weight in half.items():
        assert weight.dtype == torch.bfloat16, name
        assert torch.equal(weight, full[name].to(torch.bfloat16)), name  # merged in fp32, rounded once


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--export_dir", "{full}"], "export_dir: '{full}' is not empty; choose a new folder"),
        (["--export_dir", "{new}", "--export_dtype", "int4"], "export_dtype: 'int4' is not one of bf16, fp16, fp32"),
        (
            ["--export_dir", "{new}", "--export_dri", "x"],
            "unknown export key 'export_dri' (did you mean 'export_dir'?)",
        ),
        ([], "export_dir: required"),
    ],
)
def test_bad_export_arguments_are_one_line_and_write_nothing(qlora_adapter, tmp_path, capsys, extra, expected):
    adapter, _, _ = qlora_adapter
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    paths = {"full": str(full), "new": str(tmp_path / "new")}
    extra = [token.format(**paths) for token in extra]
    code = main(["export", "--model_name_or_path", BASE, "--adapter_name_or_path", str(adapter), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected.format(**paths) in err and "\n" not in err
    assert (full / "keep.txt").read_text() == "mine" and not (tmp_path / "new").exists()


def test_a_folder_without_an_adapter_is_refused(tmp_path, capsys):
    code = main(["export", "--model_name_or_path", BASE, "--adapter_name_or_path", str(tmp_path), "--export_dir", "x"])
    assert code == 2 and "has no adapter_config.json" in capsys.readouterr().err


@pytest.fixture(scope="module")
def loretta_runs(tmp_path_factory):
    """Two short LoRETTA runs on the tiny model: reparam (a tensor-train ΔW) and adapter (bottlenecks)."""
    from llmtune.train.run import run_sft

    runs = {}
    for mode in ("reparam", "adapter"):
        folder = tmp_path_factory.mktemp(f"loretta_{mode}")
        config = {
            "model_name_or_path": BASE, "finetuning_type": "loretta", "loretta_mode": mode, "loretta_rank": 4,
            "loretta_bottleneck": 8, "dataset": "demo_alpaca", "max_samples": 16, "cutoff_len": 32,
            "max_steps": 3, "learning_rate": 1e-2, "output_dir": str(folder), "report_to": "none",
        }  # fmt: skip
        run_sft(parse_args(config))
        runs[mode] = folder
    return runs


def test_a_loretta_reparam_run_exports_and_computes_what_base_and_adapter_computed(loretta_runs, tmp_path):
    """After ``import llmtune`` alone, PEFT loads the saved LoRETTA adapter; the exported model matches it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = loretta_runs["reparam"]
    out = tmp_path / "merged"
    assert main(["export", "--model_name_or_path", BASE, "--adapter_name_or_path", str(run),
                 "--export_dir", str(out), "--export_dtype", "fp32"]) == 0  # fmt: skip
    ids = torch.randint(5, 200, (2, 12))
    adapted = PeftModel.from_pretrained(load_model(parse_args({"model_name_or_path": BASE}, for_training=False).model,
                                                   for_training=False), run).eval()  # fmt: skip
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        expected, got = adapted(input_ids=ids).logits, merged(input_ids=ids).logits
        base = load_model(parse_args({"model_name_or_path": BASE}, for_training=False).model, for_training=False)
        assert (base(input_ids=ids).logits - expected).abs().max() > 1e-3  # the adapter changed the model
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert not any("loretta" in name for name, _ in merged.named_modules())


def test_loretta_bottleneck_adapters_are_refused_in_one_line(loretta_runs, tmp_path, capsys):
    code = main(["export", "--model_name_or_path", BASE, "--adapter_name_or_path", str(loretta_runs["adapter"]),
                 "--export_dir", str(tmp_path / "x")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot be merged" in err and "loretta_mode: reparam" in err and "\n" not in err
    assert not (tmp_path / "x").exists()
