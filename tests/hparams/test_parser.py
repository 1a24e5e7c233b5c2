"""The config parser: YAML + flags -> dataclasses, and one clear line for every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtune.arguments import load_run_arguments, parse_args
from llmtune.errors import ConfigError, DataFileNotFoundError, NotImplementedYetError
from llmtune.hparams.parser import parse_cli_overrides, read_config_file

BASE = {"model_name_or_path": "llmtune/tiny-llama", "dataset": "demo_alpaca", "output_dir": "unused"}


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_then_flags_override(tmp_path):
    config = write(
        tmp_path,
        "model_name_or_path: llmtune/tiny-llama\ndataset: demo_alpaca\nlearning_rate: 1.0e-4\n"
        "finetuning_type: lora\nlora_rank: 4\nnum_train_epochs: 2\n",
    )
    args = load_run_arguments([str(config), "--learning_rate", "3e-4", "--lora_rank=16", "num_train_epochs=5"])
    assert args.training.learning_rate == pytest.approx(3e-4)
    assert args.methods["lora"].lora_rank == 16
    assert args.methods["lora"].lora_alpha == 32  # 2 x rank by default
    assert args.training.num_train_epochs == 5.0
    assert args.given["learning_rate"] == pytest.approx(3e-4)


def test_flags_alone_and_bare_bool_flag():
    args = load_run_arguments(
        [
            "--stage",
            "sft",
            "--finetuning_type",
            "full",
            "--model_name_or_path",
            "llmtune/tiny-llama",
            "--dataset",
            "demo_alpaca",
            "--plot_loss",
            "--cutoff_len",
            "64",
        ]
    )
    assert args.finetuning.finetuning_type == "full"
    assert args.finetuning.plot_loss is True
    assert args.data.cutoff_len == 64


def test_yaml_scientific_notation_without_dot_is_a_float():
    # PyYAML reads "1e-4" as a string; the field's type decides.
    args = parse_args({**BASE, "learning_rate": "1e-4"})
    assert args.training.learning_rate == pytest.approx(1e-4)


def test_cli_splits_config_and_overrides():
    path, overrides = parse_cli_overrides(["a.yaml", "--x", "1", "--flag", "--y=2", "z=3"])
    assert path == "a.yaml"
    assert overrides == {"x": "1", "flag": True, "y": "2", "z": "3"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"learning_rte": 1e-4}, "unknown config key 'learning_rte' (did you mean 'learning_rate'?)"),
        ({"finetuning_type": "lorra"}, "finetuning_type: 'lorra' is not one of"),
        ({"template": "llama33"}, "template: 'llama33' is not one of"),
        ({"learning_rate": -1e-4}, "learning_rate: -0.0001 must be > 0"),
        ({"learning_rate": 0}, "learning_rate: 0.0 must be > 0"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size: 0 must be > 0"),
        ({"gradient_accumulation_steps": -2}, "gradient_accumulation_steps: -2 must be > 0"),
        ({"cutoff_len": 0}, "cutoff_len: 0 must be > 0"),
        ({"learning_rate": "fast"}, "learning_rate: 'fast' is not a valid float"),
        ({"lora_rank": [1, 2]}, "lora_rank: [1, 2] is not a valid int"),
        ({"stage": "dpo"}, "stage: 'dpo' is a LLaMA-Factory stage llmtune does not support"),
        ({"model_name_or_path": None}, "model_name_or_path: required"),
        ({"dataset": None}, "dataset: required"),
    ],
)
def test_bad_values_give_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        parse_args({**BASE, **override})
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_unknown_finetuning_type_lists_every_allowed_one():
    with pytest.raises(ConfigError) as info:
        parse_args({**BASE, "finetuning_type": "qlora"})
    for name in ("full", "lora", "block", "sparse", "zo", "adazeta", "loretta"):
        assert name in str(info.value)


def test_a_planned_method_says_not_implemented_yet(monkeypatch):
    from llmtune.methods import METHODS, Method

    monkeypatch.setitem(METHODS, "galore", Method("galore", "gradient low-rank projection", issue=99))
    with pytest.raises(
        NotImplementedYetError, match=r"finetuning_type: 'galore' .* is not implemented yet \(issue #99\)"
    ):
        parse_args({**BASE, "finetuning_type": "galore"})


def test_bf16_on_cpu_is_refused_before_anything_loads(monkeypatch):
    monkeypatch.delenv("LLMTUNE_ALLOW_CPU_BF16", raising=False)
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="bf16"):
        parse_args({**BASE, "bf16": True})


def test_python_object_tag_is_refused(tmp_path):
    config = write(tmp_path, "model_name_or_path: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match=r"config.yaml:1: .*plain YAML only"):
        read_config_file(config)


def test_malformed_yaml_names_the_line(tmp_path):
    config = write(tmp_path, "dataset: demo_alpaca\nlearning_rate: [1\nstage: sft\n")
    with pytest.raises(ConfigError, match=r"config.yaml:\d+:\d+: malformed YAML"):
        read_config_file(config)


def test_missing_config_file():
    with pytest.raises(DataFileNotFoundError, match="does-not-exist.yaml"):
        load_run_arguments(["does-not-exist.yaml"])


def test_non_mapping_config(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        read_config_file(write(tmp_path, "- a\n- b\n"))


def test_warmup_ratio_becomes_transformers_warmup_steps():
    args = parse_args({**BASE, "warmup_ratio": 0.1})
    assert args.training.warmup_steps == pytest.approx(0.1)


def test_secrets_never_reach_the_saved_config():
    args = parse_args({**BASE, "hub_token": "hf_secret_value"})
    assert "hub_token" not in args.public_config()


# A LLaMA-Factory SFT YAML (its README's llama3_lora_sft example, keys as published) must parse with
# only the model and the dataset changed; bf16 is refused on a machine without a bf16 GPU.
LLAMAFACTORY_LORA_SFT = """\
### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true
### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
### dataset
dataset: identity,alpaca_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4
### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none
### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null
### eval
val_size: 0.1
per_device_eval_batch_size: 1
eval_strategy: steps
eval_steps: 500
"""


def test_llamafactory_sft_yaml_parses_with_model_and_dataset_changed(tmp_path, monkeypatch):
    config = write(tmp_path, LLAMAFACTORY_LORA_SFT)
    changed = ["--model_name_or_path", "llmtune/tiny-llama", "--dataset", "demo_alpaca"]
    monkeypatch.setenv("LLMTUNE_ALLOW_CPU_BF16", "1")  # stands in for a bf16 GPU
    args = load_run_arguments([str(config), *changed])
    assert args.methods["lora"].lora_target == "all"
    assert args.training.gradient_accumulation_steps == 8
    assert args.training.lr_scheduler_type == "cosine"
    assert args.data.val_size == pytest.approx(0.1)
    assert args.training.bf16 is True


@pytest.mark.parametrize(
    "extra",
    [{"dataset": None}, {"k_shot": 4}, {"learning_rate": 0}],
    ids=["no dataset", "k_shot without classification", "a zero learning rate"],
)
def test_a_misspelt_method_or_template_is_named_before_any_value(extra):
    """What the run is comes first: a typo in finetuning_type or template is the error the user sees,
    whatever value is also wrong."""
    base = {"model_name_or_path": "llmtune/tiny-llama", "dataset": "demo_alpaca", **extra}
    with pytest.raises(ConfigError, match="finetuning_type: 'lroa'.*lora"):
        parse_args({**base, "finetuning_type": "lroa"})
    with pytest.raises(ConfigError, match="template: 'chatm'"):
        parse_args({**base, "template": "chatm"})


def test_hparams_is_the_bottom_layer_and_imports_nothing_of_llmtune_above_it():
    """Issue #20 §2: reading, coercing and checking values needs no method, model, data or machine; the
    checks that do live in llmtune.arguments (the setup step). Function-local imports count too."""
    import ast
    from pathlib import Path

    import llmtune.hparams

    allowed = ("llmtune.hparams", "llmtune.errors")
    for path in Path(llmtune.hparams.__file__).parent.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import_module(" not in text and "__import__(" not in text, f"{path.name} imports by name"
        for node in ast.walk(ast.parse(text)):
            assert not (isinstance(node, ast.ImportFrom) and node.level), f"{path.name}: a relative import"
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                assert not name.startswith("llmtune") or name.startswith(allowed), f"{path.name} imports {name}"
