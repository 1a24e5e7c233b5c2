"""``finetuning_type: block`` (BAdam): the partition, ``BlockOptimizer`` on its own, LLaMA-Factory's
spelling, and the training path with the options that the behaviour matrix does not cover."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch

from llmtune.arguments import parse_args
from llmtune.errors import CheckpointError, ConfigError
from llmtune.methods.block.optimizer import BlockOptimizer
from llmtune.methods.block.partition import freeze_outside, partition_blocks
from llmtune.model import load_model
from llmtune.train.run import run_sft


def block_optimizer(model, **kwargs):
    blocks = partition_blocks(model)
    freeze_outside(model, blocks)
    return BlockOptimizer(blocks, **{"lr": 1e-2, "switch_every": 2, "switch_mode": "ascending", **kwargs})


# -- the partition -----------------------------------------------------------------------------


def test_one_block_per_layer_and_embedding_and_head_only_when_asked(bench):
    model = bench.tiny_llama()
    assert [b.name for b in partition_blocks(model)] == ["model.layers.0", "model.layers.1", "model.layers.2"]
    blocks = partition_blocks(model, include_embedding=True, include_lm_head=True)
    assert [b.name for b in blocks] == ["embedding", "model.layers.0", "model.layers.1", "model.layers.2", "head"]
    assert [n for n, _ in blocks[0].params] == ["model.embed_tokens.weight"]
    assert [n for n, _ in blocks[-1].params] == ["model.norm.weight", "lm_head.weight"]
    assert all(n.startswith("model.layers.1.") for n, _ in blocks[2].params)


def test_active_modules_join_every_block_and_an_unknown_one_is_one_line(bench):
    blocks = partition_blocks(bench.tiny_llama(), active_modules=["model.norm"])
    assert all(block.params[-1][0] == "model.norm.weight" for block in blocks)
    with pytest.raises(
        ConfigError, match=r"^badam_active_modules: 'nrom' matches no parameter; modules outside .*model.norm"
    ):
        partition_blocks(bench.tiny_llama(), active_modules=["nrom"])


# -- BlockOptimizer without a Trainer ----------------------------------------------------------


def test_only_the_active_block_has_gradients_and_changes(bench):
    model = bench.tiny_llama()
    optimizer = block_optimizer(model, switch_every=100)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = bench.batches(1)[0]
    model(input_ids=ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        active = name.startswith("model.layers.0.")
        assert param.requires_grad == active, name
        assert (param.grad is not None) == active, name
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {k for k in before if k.startswith("model.layers.0.")}


@pytest.mark.parametrize(
    ("mode", "start", "expected"),
    [
        ("ascending", None, [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]),
        ("descending", None, [2, 2, 2, 1, 1, 1, 0, 0, 0, 2]),
        ("ascending", 1, [1, 1, 1, 2, 2, 2, 0, 0, 0, 1]),
        ("fixed", 2, [2] * 10),
    ],
)
def test_every_block_gets_exactly_switch_every_steps(bench, mode, start, expected):
    # The first block too: the reference gives it K-1 steps (it switches when (step + 1) % K == 0).
    optimizer = block_optimizer(bench.tiny_llama(), switch_every=3, switch_mode=mode, start_block=start)
    assert blocks_trained(optimizer, 10) == expected


def test_random_order_is_a_new_permutation_every_pass_fixed_by_the_seed(bench):
    def passes(seed):
        trace = blocks_trained(
            block_optimizer(bench.tiny_llama(layers=6), switch_every=1, switch_mode="random", seed=seed), 18
        )
        return [trace[i : i + 6] for i in range(0, 18, 6)]

    first = passes(seed=3)
    assert all(sorted(p) == list(range(6)) for p in first)  # each pass visits every block once
    assert len({tuple(p) for p in first}) > 1  # and the order changes between passes
    assert passes(seed=3) == first and passes(seed=4) != first


def blocks_trained(optimizer, steps: int) -> list[int]:
    """The block each of ``steps`` steps trains (the schedule does not depend on the gradients)."""
    trace = []
    for _ in range(steps):
        trace.append(optimizer.current_block)
        optimizer.step()
    return trace


def test_adam_state_is_held_for_the_active_block_only(bench):
    model = bench.tiny_llama()
    optimizer = block_optimizer(model, switch_every=3)
    moments = []
    for ids in bench.batches(5):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        state = optimizer.base.state
        assert {id(p) for p in state} <= {id(p) for _, p in optimizer.active_block.params}
        moments.append(
            sum(s[k].numel() * s[k].element_size() for s in state.values() for k in ("exp_avg", "exp_avg_sq"))
        )
    layer = optimizer.blocks[0].numel
    assert moments == [8 * layer, 8 * layer, 0, 8 * layer, 8 * layer]  # two fp32 moments a weight; reset at the switch


def test_bf16_weights_train_through_an_fp32_master_of_the_active_block_only(bench):
    model = bench.tiny_llama(dtype=torch.bfloat16)
    optimizer = block_optimizer(model, lr=1e-4, switch_every=5)
    masters = optimizer.fp32_masters()
    assert set(masters) == {name for name, _ in optimizer.active_block.params}
    assert {m.dtype for m in masters.values()} == {torch.float32}
    bench.train_steps(model, optimizer, bench.batches(4))
    norm = "model.layers.0.input_layernorm.weight"  # starts at 1.0, where bf16 steps are 2**-7 apart
    weight, master = model.get_parameter(norm), optimizer.fp32_masters()[norm]
    assert weight.dtype == torch.bfloat16 and torch.equal(weight, master.to(torch.bfloat16))
    assert torch.equal(weight, torch.ones_like(weight))  # four steps of 1e-4 are invisible in bf16 ...
    assert (master - 1).abs().max() > 2e-4  # ... and kept by the fp32 master
    bench.train_steps(model, optimizer, bench.batches(1))  # the fifth step switches to block 1
    assert set(optimizer.fp32_masters()) == {name for name, _ in optimizer.blocks[1].params}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_resumes_the_same_block_schedule_and_trajectory(bench, dtype):
    data = bench.batches(13)
    straight = bench.tiny_llama(dtype=dtype)
    optimizer = block_optimizer(straight, switch_every=4, switch_mode="random", seed=7)
    bench.train_steps(straight, optimizer, data)

    first = bench.tiny_llama(dtype=dtype)
    optimizer = block_optimizer(first, switch_every=4, switch_mode="random", seed=7)
    bench.train_steps(first, optimizer, data[:6])  # stops mid-block: 2 of 4 steps into the second block
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)  # as the Trainer writes optimizer.pt
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = bench.tiny_llama(dtype=dtype)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    optimizer = block_optimizer(resumed, switch_every=4, switch_mode="random", seed=7)
    optimizer.load_state_dict(saved)
    assert (optimizer.current_block, optimizer.steps_in_block, optimizer.global_step) == (
        saved["badam"]["order"][saved["badam"]["position"]],
        2,
        6,
    )
    bench.train_steps(resumed, optimizer, data[6:])
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_a_state_from_another_optimizer_or_partition_is_one_line(bench):
    model = bench.tiny_llama()
    optimizer = block_optimizer(model)
    adamw = torch.optim.AdamW(model.parameters())
    with pytest.raises(
        CheckpointError, match=r"^resume_from_checkpoint: its optimizer state was not written by finetuning_type: block"
    ):
        optimizer.load_state_dict(adamw.state_dict())
    other = block_optimizer(bench.tiny_llama(layers=2)).state_dict()
    with pytest.raises(CheckpointError, match=r"is for model.layers.0, model.layers.1, but this run trains .*layers.2"):
        optimizer.load_state_dict(other)


def test_the_lr_scheduler_drives_the_active_blocks_learning_rate_and_norms_get_no_decay(bench):
    model = bench.tiny_llama()
    optimizer = block_optimizer(model, weight_decay=0.1, switch_every=1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    for ids in bench.batches(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    ids = bench.batches(1)[0]
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert {g["lr"] for g in optimizer.base.param_groups} == {1e-2 * 0.5**3}
    decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    norms = {id(p) for n, p in model.named_parameters() if "norm" in n and "layers" in n}
    assert norms <= decay[0.0] and not norms & decay[0.1]


def test_matches_the_badam_package_over_three_switches(bench, capsys):
    """Same blocks, same fp32-master AdamW steps as the reference, switch for switch.

    The reference switches when ``(global_step + 1) % K == 0`` after incrementing its counter, so its first
    block gets K - 1 steps (an off-by-one llmtune does not copy: every block gets K). Starting the
    reference's public counter at -1 gives its first block K steps too, and from there on both schedules
    must agree: same active block after each switch, the same parameters at the end.
    """
    badam = pytest.importorskip(
        "badam", reason="the BAdam reference implementation (pip install badam; in the dev extra)"
    )
    ours_model, reference_model = bench.tiny_llama(dtype=torch.bfloat16), bench.tiny_llama(dtype=torch.bfloat16)
    ours = block_optimizer(ours_model, lr=1e-3, switch_every=3, switch_mode="ascending")
    reference = badam.BlockOptimizer(
        torch.optim.AdamW(reference_model.parameters(), lr=1e-3, weight_decay=0.0),
        list(reference_model.named_parameters()),
        switch_block_every=3,
        switch_mode="ascending",
        verbose=0,
    )
    reference.global_step = -1  # cancels the reference's short first block (see the docstring)
    data = bench.batches(3 * 3 + 1)
    visited = []
    for switch in range(3):
        chunk = data[3 * switch : 3 * switch + 3]
        bench.train_steps(ours_model, ours, chunk)
        bench.train_steps(reference_model, reference, chunk)
        trainable = {n.split(".")[2] for n, p in reference_model.named_parameters() if p.requires_grad}
        visited.append((ours.current_block, int(trainable.pop()) if len(trainable) == 1 else trainable))
    bench.train_steps(ours_model, ours, data[9:])  # one step on the fourth block
    bench.train_steps(reference_model, reference, data[9:])
    assert visited == [(1, 1), (2, 2), (0, 0)]  # ascending over 3 layers, wrapping round
    for (name, a), (_, b) in zip(ours_model.named_parameters(), reference_model.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    capsys.readouterr()


# -- options and LLaMA-Factory's spelling ------------------------------------------------------


def test_llamafactory_use_badam_becomes_block_or_sparse_with_its_own_defaults(make_config, tmp_path):
    lf = {**make_config(tmp_path, "full"), "use_badam": True, "badam_mode": "layer"}
    args = parse_args(lf)
    assert args.finetuning.finetuning_type == "block"
    block = args.methods["block"]
    assert (block.badam_switch_mode, block.badam_switch_interval) == ("ascending", 50)  # LLaMA-Factory's defaults
    args = parse_args({**lf, "badam_switch_mode": "random", "badam_switch_interval": "20"})
    assert (args.methods["block"].badam_switch_mode, args.methods["block"].badam_switch_interval) == ("random", 20)
    ratio = parse_args({**lf, "use_badam": "true", "badam_mode": "ratio", "badam_update_ratio": 0.1})
    assert ratio.finetuning.finetuning_type == "sparse" and ratio.methods["sparse"].badam_update_ratio == 0.1
    assert parse_args({**lf, "use_badam": False}).finetuning.finetuning_type == "full"  # badam_mode is then ignored


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"use_badam": True, "badam_mode": "layers"},
            "badam_mode: 'layers' is not one of layer, ratio (did you mean 'layer'?)",
        ),
        (
            {"use_badam": True, "finetuning_type": "lora"},
            "use_badam: true trains the full model block by block and cannot be combined with finetuning_type: 'lora'",
        ),
        (
            {"finetuning_type": "block", "badam_mode": "ratio"},
            "badam_mode: 'ratio' contradicts finetuning_type: 'block'",
        ),
        (
            {"finetuning_type": "block", "badam_switch_mode": "sideways"},
            "badam_switch_mode: 'sideways' is not one of ascending, descending, fixed, random",
        ),
        (
            {"finetuning_type": "block", "badam_switch_interval": 0},
            "badam_switch_interval: 0 must be a positive number of steps, or -1 to never switch",
        ),
        (
            {
                "finetuning_type": "block",
                "deepspeed": str(Path(__file__).resolve().parents[2] / "examples" / "deepspeed" / "ds_z2_config.json"),
            },
            "deepspeed: finetuning_type: block under DeepSpeed ZeRO-0/1/2 is not supported: BAdam changes which",
        ),
        (
            {"finetuning_type": "sparse", "fp16": "true"},
            "fp16: finetuning_type: sparse in fp16 is not supported: sparse keeps only the selected gradient entries",
        ),
    ],
)
def test_bad_badam_options_are_one_line(make_config, tmp_path, config, message):
    with pytest.raises(ConfigError) as info:
        parse_args({**make_config(tmp_path, "full"), **config})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_several_processes_pass_the_table_and_sharded_sparse_is_refused(make_config, tmp_path):
    # block and sparse under DDP train (tests/train/test_distributed.py); under ZeRO sparse does not, and says so
    from llmtune import compat

    compat.check_config({"finetuning_type": "block", "gradient_accumulation_steps": 2}, world_size=2)
    compat.check_config({"finetuning_type": "sparse"}, world_size=2)
    zero2 = str(Path(__file__).resolve().parents[2] / "examples" / "deepspeed" / "ds_z2_config.json")
    with pytest.raises(
        ConfigError,
        match=r"^deepspeed: finetuning_type: sparse under DeepSpeed ZeRO-0/1/2 is not supported: sparse keeps",
    ):
        compat.check_config({"finetuning_type": "sparse", "deepspeed": zero2}, world_size=2)


# -- the training path -------------------------------------------------------------------------


def test_checkpointed_training_stops_backward_at_the_active_block(tmp_path, make_config):
    config = make_config(tmp_path / "out", "block", max_steps=4, save_steps=2, badam_switch_interval=2)
    config.update(gradient_checkpointing=True, badam_switch_mode="ascending")
    before = load_model(parse_args(config).model).state_dict()
    model = run_sft(parse_args(config)).model
    assert getattr(model, "_require_grads_hook", None) is None  # the frozen embedding's output needs no gradient
    assert model.model.layers[0].gradient_checkpointing
    after = model.state_dict()
    for key in before:  # both layers trained (2 steps each), through non-reentrant checkpointing
        assert torch.equal(before[key], after[key]) != (".layers." in key), key
    saved = torch.load(tmp_path / "out" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert saved["badam"]["names"] == ["model.layers.0", "model.layers.1"]
    assert (saved["badam"]["global_step"], saved["badam"]["steps_in_block"], saved["masters"]) == (2, 0, [])


def test_bf16_run_keeps_bf16_weights_and_warns_when_blocks_get_no_turn(tmp_path, make_config, monkeypatch, caplog):
    monkeypatch.setenv("LLMTUNE_ALLOW_CPU_BF16", "1")
    config = make_config(tmp_path / "out", "block", max_steps=4, save_steps=4, badam_switch_interval=4, bf16=True)
    with caplog.at_level("WARNING", logger="llmtune"):
        result = run_sft(parse_args(config))
    assert "4 steps at badam_switch_interval 4 train only 1 of the 2 blocks" in caplog.text
    assert {p.dtype for p in result.model.parameters()} == {torch.bfloat16}
    saved = torch.load(tmp_path / "out" / "checkpoint-4" / "optimizer.pt", weights_only=True)
    assert saved["masters"] and {m.dtype for m in saved["masters"]} == {torch.float32}
    assert torch.isfinite(torch.tensor(result.metrics["train_loss"]))
