"""bitsandbytes on the CPU: QLoRA on the tiny model, 8-bit Adam inside BAdam, the refusals, the estimate."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from llmtune.arguments import load_run_arguments, parse_args
from llmtune.errors import ConfigError
from llmtune.methods.block.model import setup_of_run
from llmtune.methods.block.trainer import BlockTrainer
from llmtune.model import load_model
from llmtune.model.quantization import adam_8bit_state_bytes, quantized_bytes_per_weight
from llmtune.train.estimate import estimate_memory

ROOT = Path(__file__).resolve().parents[2]
QLORA_EXAMPLES = sorted((ROOT / "examples" / "train_qlora").glob("*.yaml"))


@pytest.fixture(autouse=True)
def fresh_bnb_overrides():
    """bitsandbytes keeps optimizer overrides (the Trainer's 32-bit embeddings) in a process-wide manager
    keyed by parameter id and position; an earlier training in the same pytest process would leak them
    into these tests (one process trains once in real use)."""
    if "bitsandbytes" in sys.modules:  # the tests that need it import it through the ``bnb`` fixture
        sys.modules["bitsandbytes"].optim.GlobalOptimManager.get_instance().initialize()


# -- QLoRA on the tiny model: one short run shared by the assertions (slow: 15-40 s here) -----------


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, bnb):
    from llmtune.train.run import run_sft

    config = {
        "model_name_or_path": "llmtune/tiny-llama",
        "finetuning_type": "lora",
        "quantization_bit": 4,
        "lora_target": "all",
        "dataset": "demo_alpaca",
        "template": "default",
        "cutoff_len": 64,
        "max_samples": 64,
        "output_dir": str(tmp_path_factory.mktemp("qlora")),
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-2,
        "max_steps": 8,
        "logging_steps": 1,
        "save_steps": 100,
        "lr_scheduler_type": "constant",
        "seed": 0,
        "report_to": "none",
        "disable_tqdm": True,
    }
    args = parse_args(config)
    return args, run_sft(args)


@pytest.mark.slow
def test_qlora_base_linears_are_4bit_and_only_adapters_train(qlora_run, bnb):
    args, result = qlora_run
    model = result.model
    linears = {
        n: m for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj")) and hasattr(m, "base_layer")
    }
    assert linears and all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in linears.values())
    assert model.get_output_embeddings().weight.dtype == torch.float32  # the head stays unquantised
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())  # not TRL's bf16 cast
    # The frozen base is bit for bit what a fresh quantised load gives.
    fresh = load_model(args.model)
    trained = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in model.named_parameters()}
    for name, param in fresh.named_parameters():
        assert torch.equal(trained[name].data, param.data), name


@pytest.mark.slow
def test_qlora_loss_falls(qlora_run):
    _, result = qlora_run
    losses = [row["loss"] for row in result.log_history if "loss" in row]
    assert len(losses) == 8 and sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2


@pytest.mark.slow
def test_qlora_adapter_reloads_to_the_same_logits(qlora_run, bnb_logits):
    from peft import PeftModel

    args, result = qlora_run
    ids = torch.randint(5, 200, (2, 10))
    reloaded = PeftModel.from_pretrained(load_model(args.model, for_training=False), str(result.output_dir))
    assert torch.allclose(bnb_logits(result.model, ids), bnb_logits(reloaded, ids), atol=1e-5)
    plain = load_model(args.model, for_training=False)  # the adapter changes the output
    assert not torch.allclose(bnb_logits(plain, ids), bnb_logits(reloaded, ids), atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [{"finetuning_type": "zo", "zo_target": "lora", "lora_rank": 4}, {"finetuning_type": "loretta"}],
    ids=["zo-lora", "loretta"],
)
def test_zo_and_loretta_train_only_their_adapters_over_a_4bit_base(make_config, tmp_path, overrides, bnb):
    from transformers import set_seed

    from llmtune.methods import get_method
    from llmtune.train.run import run_sft

    config = make_config(tmp_path, quantization_bit=4, max_steps=3, max_samples=24, save_steps=100, **overrides)
    config["learning_rate"] = 1e-2
    args = parse_args(config)
    fresh = {n: p.detach().clone() for n, p in load_model(args.model).named_parameters()}
    set_seed(args.training.seed)  # as run_sft does: the same initial adapters
    prepared = get_method(args.finetuning.finetuning_type).prepare_fn()(load_model(args.model), args)
    initial = {n: p.detach().clone() for n, p in prepared.named_parameters() if p.requires_grad}
    model = run_sft(args).model
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable.keys() == initial.keys() and all(p.dtype == torch.float32 for p in trainable.values())
    assert any(not torch.equal(p.data, initial[n]) for n, p in trainable.items())  # the adapters moved
    checked = 0
    for name, param in model.named_parameters():
        base = name.replace("base_model.model.", "").replace(".base_layer", "")
        if not param.requires_grad and base in fresh:
            assert torch.equal(param.data, fresh[base]), name  # the quantised base is only read
            checked += 1
    assert checked >= 14  # the 7 quantised linears of both layers, at least


@pytest.mark.slow
def test_full_with_adamw_8bit_trains_with_8bit_state(make_config, tmp_path, bnb):
    from transformers import TrainerCallback

    from llmtune.train.run import run_sft

    class Keep(TrainerCallback):
        def on_train_end(self, args, state, control, optimizer=None, **kwargs):
            self.optimizer = optimizer

    keep = Keep()
    config = make_config(tmp_path, "full", optim="adamw_8bit", max_steps=2, max_samples=16, save_steps=100)
    result = run_sft(parse_args(config), callbacks=[keep])
    optimizer = getattr(keep.optimizer, "optimizer", keep.optimizer)  # accelerate wraps it
    assert isinstance(optimizer, bnb.optim.AdamW)
    embedding = result.model.get_input_embeddings().weight
    states = {id(p): optimizer.state[p] for g in optimizer.param_groups for p in g["params"] if p in optimizer.state}
    assert len(states) == sum(1 for p in result.model.parameters() if p.requires_grad)
    for param in result.model.parameters():
        eight_bit = param.numel() >= 4096 and param is not embedding  # the Trainer keeps embeddings in 32-bit
        assert states[id(param)]["state1"].dtype == (torch.uint8 if eight_bit else torch.float32)


# -- 8-bit Adam as BAdam's base optimizer -------------------------------------------------------


def test_block_with_adamw_8bit_keeps_8bit_state_for_the_active_block_only(make_config, tmp_path, bnb):
    args = parse_args(make_config(tmp_path, "block", optim="adamw_8bit", badam_switch_interval=2))
    from llmtune.methods import get_method

    model = get_method("block").prepare_fn()(load_model(args.model), args)
    setup = setup_of_run(model, args, "block")
    optimizer = BlockTrainer.build_optimizer(setup, args.training)
    assert isinstance(optimizer.base, bnb.optim.AdamW)
    ids = torch.randint(5, 200, (2, 12))
    first = {id(p) for _, p in optimizer.active_block.params}
    for step in range(3):  # two steps on the first block, then the switch, then one on the second
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        held = set(map(id, optimizer.base.state))
        if step == 0:
            assert held == first
        elif step == 1:  # switched: the first block's state is gone, the second's not made yet
            assert held == set() and optimizer.switches == 1
        else:
            assert held == {id(p) for _, p in optimizer.active_block.params} and held.isdisjoint(first)
    for param, state in optimizer.base.state.items():
        kind = torch.uint8 if param.numel() >= 4096 else torch.float32  # bitsandbytes' min_8bit_size
        assert state["state1"].dtype == state["state2"].dtype == kind
    # The estimator's optimizer state equals what the base optimizer holds for the largest block
    # (less the two 256-value code books every 8-bit state shares).
    held = sum(
        v.numel() * v.element_size()
        for s in optimizer.base.state.values()
        for k, v in s.items()
        if torch.is_tensor(v) and not k.startswith("qmap") and k != "step"
    )
    estimate = estimate_memory(args)
    assert estimate.optimizer == held
    plain = estimate_memory(parse_args(make_config(tmp_path, "block")))
    # k_proj and v_proj of the tiny model (2048 values) stay fp32: under 4x, but far less than AdamW's.
    assert plain.optimizer > 2.5 * estimate.optimizer > 0 and "8-bit" in estimate.report()[3]


# -- refusals -----------------------------------------------------------------------------------


REFUSED = [
    ({"finetuning_type": "full", "quantization_bit": 4}, "finetuning_type: full"),
    ({"finetuning_type": "block", "quantization_bit": 4}, "finetuning_type: block"),
    ({"finetuning_type": "sparse", "quantization_bit": 8}, "finetuning_type: sparse"),
    ({"finetuning_type": "zo", "zo_target": "full", "quantization_bit": 4}, "zo_target: full"),
    ({"quantization_bit": 3}, "quantization_bit: 3 is not one of 4, 8"),
    ({"quantization_bit": 4, "quantization_type": "nf8"}, "quantization_type: 'nf8' is not one of fp4, nf4"),
    ({"quantization_bit": 4, "quantization_method": "gptq"}, "quantization_method: 'gptq' is not one of bnb"),
    ({"finetuning_type": "zo", "optim": "adamw_8bit"}, "finetuning_type: zo: it runs its own optimizer"),
    ({"finetuning_type": "sparse", "optim": "paged_adamw_8bit"}, "finetuning_type: sparse"),
    ({"finetuning_type": "adazeta", "optim": "paged_adamw_32bit"}, "finetuning_type: adazeta"),
]


@pytest.mark.parametrize(("overrides", "expected"), REFUSED, ids=[e for _, e in REFUSED])
def test_each_refused_combination_is_one_line(make_config, tmp_path, overrides, expected):
    with pytest.raises(ConfigError) as err:
        parse_args(make_config(tmp_path, **overrides))
    message = str(err.value)
    assert expected in message and "\n" not in message


@pytest.mark.parametrize("overrides", [{"quantization_bit": 4}, {"optim": "adamw_8bit"}])
def test_without_bitsandbytes_the_error_gives_the_install_command(make_config, tmp_path, monkeypatch, overrides):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ConfigError, match="not installed: pip install bitsandbytes$"):
        parse_args(make_config(tmp_path, **overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        {"finetuning_type": "loretta", "quantization_bit": 4},
        {"finetuning_type": "zo", "zo_target": "lora", "quantization_bit": 4},
        {"finetuning_type": "adazeta", "quantization_bit": 8},
        {"finetuning_type": "full", "optim": "paged_adamw_8bit"},
        {"finetuning_type": "lora", "optim": "paged_adamw_32bit", "quantization_bit": 4, "quantization_type": "fp4"},
    ],
)
def test_adapter_methods_and_bnb_optimizers_are_accepted(make_config, tmp_path, overrides):
    args = parse_args(make_config(tmp_path, **overrides))
    assert args.model.compute_dtype == "float32"


def test_every_qlora_example_quantises_or_uses_an_8bit_optimizer(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMTUNE_ALLOW_CPU_BF16", "1")
    assert len(QLORA_EXAMPLES) >= 5
    for path in QLORA_EXAMPLES:
        args = load_run_arguments([str(path), "--output_dir", str(tmp_path / path.stem)])
        config = yaml.safe_load(path.read_text())
        assert args.model.quantization_bit in (4, 8) or "8bit" in config.get("optim", ""), path.name


# -- the estimate ------------------------------------------------------------------------------


def test_llama3_8b_qlora_estimate_matches_hand_figures(llama3_8b_config):

    args = parse_args(
        {"model_name_or_path": "llmtune/tiny-llama", "quantization_bit": 4, "lora_target": "all", "lora_rank": 8},
        for_training=False,
    )
    args.training.bf16 = True  # as on a GPU
    estimate = estimate_memory(args, llama3_8b_config)
    h, i, kv, layers, vocab = 4096, 14336, 1024, 32, 128256
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * i)  # q, o; k, v; gate, up, down
    assert linear == 6_979_321_856
    lora = layers * 8 * (2 * (h + h) + 2 * (h + kv) + 3 * (h + i))
    assert lora == 20_971_520
    frozen_bf16 = 2 * vocab * h + (2 * layers + 1) * h  # embedding, head, norms
    # nf4 with double quantisation: 4 bits + an 8-bit absmax per 64 + an fp32 per 64 * 256 weights.
    assert quantized_bytes_per_weight(4, True) == 0.5 + 1 / 64 + 4 / 16384
    weights = int(linear * (0.5 + 1 / 64 + 4 / 16384) + 2 * frozen_bf16 + 4 * lora)
    assert weights == 5_786_181_632  # 5.39 GiB
    assert (estimate.weights, estimate.gradients, estimate.optimizer) == (weights, 4 * lora, 8 * lora)
    assert estimate.trainable == lora and estimate.weight_dtype == "4-bit nf4 and bfloat16 and float32"

    args.training.optim = "paged_adamw_8bit"
    eight_bit = estimate_memory(args, llama3_8b_config)
    # Every LoRA matrix has over 4096 values (and a multiple of 256): 2 bytes a value, 2 fp32 absmax per 256.
    assert eight_bit.optimizer == 2 * lora + 2 * 4 * lora // 256
    assert adam_8bit_state_bytes(1000) == 8 * 1000  # under bitsandbytes' min_8bit_size: fp32 moments

    # BAdam in bf16 with 8-bit Adam on one layer: fp32 master and its gradient (8 B) + 8-bit moments.
    block = parse_args({"model_name_or_path": "llmtune/tiny-llama", "finetuning_type": "block"}, for_training=False)
    block.training.bf16, block.training.optim = True, "adamw_8bit"
    layer = 218_112_000
    assert estimate_memory(block, llama3_8b_config).optimizer == 8 * layer + 2 * layer + 2 * 4 * layer // 256


def test_estimate_cli_leaves_out_the_types_quantisation_refuses(capsys):
    from llmtune.cli import main

    code = main(["estimate", "--model_name_or_path", "llmtune/tiny-llama", "--quantization_bit", "4"])
    out = capsys.readouterr().out
    assert code == 0 and "4-bit nf4" in out
    others = out.rsplit("the same run as other finetuning types:", 1)[1]
    assert "loretta" in others and "full" not in others and "block" not in others
