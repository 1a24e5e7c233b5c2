"""The ``llmtune`` command line: subcommands, help, exit codes, one-line errors, the examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmtune.arguments import load_run_arguments
from llmtune.cli import main

ROOT = Path(__file__).resolve().parents[1]
# eval, kernel and accelerate examples are not training configs (eval and kernel have their own parsers and tests)
EXAMPLES = sorted(
    p for p in (ROOT / "examples").rglob("*.yaml") if p.parent.name not in ("eval", "kernel", "accelerate")
)
EVAL_EXAMPLES = sorted((ROOT / "examples" / "eval").glob("*.yaml"))  # parsed by `llmtune eval`'s parser
TINY_LORA = ROOT / "examples" / "train_lora" / "tiny_lora_sft.yaml"


def test_version_and_env(capsys):
    assert main(["version"]) == 0
    import llmtune

    assert capsys.readouterr().out.strip() == llmtune.__version__
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "transformers", "trl", "peft", "deepspeed", "bitsandbytes"):
        assert name in out


def test_unknown_command_suggests(capsys):
    assert main(["trian"]) == 2
    assert "did you mean 'train'?" in capsys.readouterr().err


def test_train_help_lists_keys_from_the_dataclasses(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("--model_name_or_path", "--lora_rank", "--cutoff_len", "--learning_rate", "--overwrite_output_dir"):
        assert key in out
    assert "Rank r of the LoRA update" in out


def test_bad_key_is_one_line_and_exit_2(capsys, tmp_path):
    code = main(["train", str(TINY_LORA), "--lora_rnak", "4", "--output_dir", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "llmtune: error: unknown config key 'lora_rnak' (did you mean 'lora_rank'?); see `llmtune train --help`"
    )


def test_non_empty_output_dir_is_refused_before_the_model_loads(capsys, tmp_path, refuse_model_loading):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code = main(["train", str(TINY_LORA), "--output_dir", str(out), "--overwrite_output_dir", "false"])
    assert code == 2
    err = capsys.readouterr().err
    assert "is not empty (1 entries: precious.txt)" in err and "overwrite_output_dir: true" in err
    assert (out / "precious.txt").read_text() == "keep me"


def test_validate_checks_data_without_loading_weights(capsys, tmp_path, refuse_model_loading):
    assert main(["validate", str(TINY_LORA), "--output_dir", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "config OK" in out and "finetuning_type: lora" in out and "demo_alpaca" in out


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT / "examples")))
def test_every_example_parses(path, monkeypatch, tmp_path):
    monkeypatch.setenv("LLMTUNE_ALLOW_CPU_BF16", "1")  # the GPU examples ask for bf16
    monkeypatch.setattr("llmtune.compat.gpu_available", lambda: True)  # and the FSDP ones for GPUs
    config = yaml.safe_load(path.read_text())
    assert config["stage"] == "sft"
    args = load_run_arguments([str(path), "--output_dir", str(tmp_path / "out")])
    assert args.finetuning.finetuning_type == config["finetuning_type"]


@pytest.mark.parametrize("path", EVAL_EXAMPLES, ids=lambda p: str(p.relative_to(ROOT / "examples")))
def test_every_eval_example_parses(path):
    from llmtune.eval import load_eval_arguments

    config = yaml.safe_load(path.read_text())
    run = load_eval_arguments([str(path)])
    assert run.tasks == [task.strip() for task in config["task"].split(",")]


def test_console_script_trains_the_tiny_default(tmp_path):
    """The README's main command, shortened: a real subprocess through the installed entry point."""
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "llmtune",
        "train",
        str(TINY_LORA),
        "--output_dir",
        str(out),
        "--max_steps",
        "12",
        "--save_steps",
        "6",
        "--logging_steps",
        "2",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"saved to {out}" in proc.stdout
    # no library noise a user cannot act on (DeepSpeed, in the dev extra, is imported by transformers)
    assert "Setting accelerator to CPU" not in proc.stdout + proc.stderr
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "trainer_log.jsonl",
        "training_loss.png",
        "training_args.yaml",
        "llmtune_complete.json",
        "checkpoint-12/llmtune_complete.json",
    ):
        assert (out / name).is_file(), name
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["current_steps"] for r in log if "loss" in r] == [2, 4, 6, 8, 10, 12]
    saved = yaml.safe_load((out / "training_args.yaml").read_text())
    assert saved["max_steps"] == 12 and saved["finetuning_type"] == "lora"


def test_docs_options_page_is_generated_from_the_dataclasses():
    from llmtune.options import options_markdown

    page = (ROOT / "docs" / "options.md").read_text()
    assert page == options_markdown(), "regenerate: python -m llmtune.options > docs/options.md"
