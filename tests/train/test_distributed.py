"""Several processes on the CPU (gloo): DDP, DeepSpeed ZeRO-2/3, data-parallel ZO, two simulated nodes.

One torchrun start runs every 2-process training in a row (``distributed_worker.py``); the tests compare
what it wrote with one-process runs. These are the "tested" cells of the compatibility table
(``llmtune.compat``) for several processes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmtune.arguments import parse_args
from llmtune.model import load_model
from llmtune.train.run import run_sft

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("distributed_worker.py")
DS = ROOT / "examples" / "deepspeed"
STEPS = 3

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH"),
]


def env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }


def job_config(make_config, where: Path, name: str, finetuning_type: str, **overrides) -> dict:
    config = make_config(where / name, finetuning_type, **{"max_steps": STEPS, "save_steps": 1000, **overrides})
    config["dataset_dir"] = str(ROOT / "data")
    return config


LORETTA = {"learning_rate": 1e-2, "loretta_rank": 4, "loretta_bottleneck": 16}
# BAdam switching every step, so 3 steps train 3 blocks: the 2nd and 3rd were frozen when DDP was built.
BLOCK = {
    "per_device_train_batch_size": 4,
    "badam_switch_interval": 1,
    "badam_switch_mode": "ascending",
    "learning_rate": 1e-2,
    "max_grad_norm": 1.0,
}

SPARSE = {
    "per_device_train_batch_size": 4,
    "badam_update_ratio": 0.3,
    "badam_switch_interval": 1,
    "learning_rate": 1e-2,
    "max_grad_norm": 1.0,
}
TWO_RANKS_TIMEOUT_S = 1500  # the 15 jobs take about 4 min on a quiet 2-core machine
HALF_BATCH = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}  # 2 ranks x 2 x 2: still 8


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, make_config_module):
    """Run every 2-process job in one torchrun start; returns the folder the jobs wrote into."""
    where = tmp_path_factory.mktemp("two_ranks")
    make = make_config_module
    z2, z3 = str(DS / "ds_z2_config.json"), str(DS / "ds_z3_config.json")
    zero3 = {"per_device_train_batch_size": 4, "deepspeed": z3}
    accum = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}  # still 8 a step
    step2 = str(where / "full_z3" / "checkpoint-2")  # written by the full_z3 job, resumed by the next one
    block_step2 = str(where / "block_z3" / "checkpoint-2")
    jobs = [
        {"name": "zo_ddp", "config": job_config(make, where, "zo_ddp", "zo", learning_rate=1e-3), "record": "params"},
        {"name": "full_ddp", "config": job_config(make, where, "full_ddp", "full", per_device_train_batch_size=4)},
        {"name": "full_ddp_accum", "config": job_config(make, where, "full_ddp_accum", "full", **accum)},
        {"name": "block_ddp", "config": job_config(make, where, "block_ddp", "block", **BLOCK), "record": "params"},
        {
            "name": "block_ddp_accum",
            "config": job_config(make, where, "block_ddp_accum", "block", **{**BLOCK, **HALF_BATCH}),
            "record": "params",
        },
        {"name": "sparse_ddp", "config": job_config(make, where, "sparse_ddp", "sparse", **SPARSE), "record": "params"},
        {
            "name": "sparse_ddp_accum",
            "config": job_config(make, where, "sparse_ddp_accum", "sparse", **{**SPARSE, **HALF_BATCH}),
            "record": "params",
        },
        {
            "name": "full_z2",
            "config": job_config(make, where, "full_z2", "full", per_device_train_batch_size=4, deepspeed=z2),
        },
        {"name": "full_z3", "config": job_config(make, where, "full_z3", "full", save_steps=2, **zero3)},
        {"name": "full_z3_accum", "config": job_config(make, where, "full_z3_accum", "full", deepspeed=z3, **accum)},
        {
            "name": "full_z3_resumed",
            "config": job_config(make, where, "full_z3_resumed", "full", resume_from_checkpoint=step2, **zero3),
        },
        # BAdam under ZeRO-3, switching every step; saved at step 2 (after the switch to the third block)
        {
            "name": "block_z3",
            "config": job_config(make, where, "block_z3", "block", save_steps=2, **BLOCK, deepspeed=z3),
        },
        {
            "name": "block_z3_resumed",
            "config": job_config(
                make, where, "block_z3_resumed", "block", **BLOCK, deepspeed=z3, resume_from_checkpoint=block_step2
            ),
        },
        {"name": "lora_z3", "config": job_config(make, where, "lora_z3", "lora", deepspeed=z3), "record": "logits"},
        {
            "name": "loretta_z3",
            "config": job_config(make, where, "loretta_z3", "loretta", deepspeed=z3, **LORETTA),
            "record": "logits",
        },
    ]
    # The DDP jobs run before the DeepSpeed ones: accelerate keeps its process-wide state, and a DDP
    # run after a DeepSpeed one in the same process would train under DeepSpeed.
    for job in jobs:
        job.setdefault("record", None)
    (where / "jobs.json").write_text(json.dumps(jobs))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # torchrun and its workers in their own session: a hang (a collective, a lock) fails here with the jobs'
    # output, and the whole group is killed, instead of holding CI until its time runs out.
    with subprocess.Popen(
        [*command, str(WORKER), str(where / "jobs.json")],
        cwd=where,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=TWO_RANKS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            pytest.fail(f"the 2-process jobs did not end in {TWO_RANKS_TIMEOUT_S} s:\n{output[-6000:]}")
    assert proc.returncode == 0, output[-8000:]
    return where


@pytest.fixture(scope="module")
def make_config_module():
    """``tests/conftest.py``'s ``tiny_config`` for a module-scoped fixture (``make_config`` is per test)."""
    spec = importlib.util.spec_from_file_location("_llmtune_tests_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny_config


def saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_adam_runs_match(saved: dict, one: dict, name: str, lr: float, steps: int) -> None:
    """Adam divides each gradient entry by its running RMS: where an entry is near zero, the float noise of
    another reduction order (two ranks' all-reduce against one process's batch) becomes an update of up to
    ``lr``. How many such entries there are depends on the CPU's kernels (all matched to 1e-5 on an AMD EPYC;
    on an Intel Xeon with AMX-BF16 a few did not). So: all but a thousandth of the entries match to 1e-5, and
    none differs by more than two runs' whole updates. A run that trained on other data or did not average the
    ranks' gradients moves nearly every entry by more than 1e-5."""
    far = total = 0
    for key, value in one.items():
        diff = (saved[key].float() - value).abs()
        far, total = far + int((diff > 1e-5).sum()), total + diff.numel()
        assert diff.max().item() <= 2 * steps * lr, f"{name}: {key} differs by {diff.max().item():.2e}"
    assert far <= 1e-3 * total, f"{name}: {far} of {total} weights differ from one process's by more than 1e-5"


def test_full_under_ddp_zero2_zero3_matches_one_process(two_ranks, tmp_path, make_config):
    # One process with the same global batch (8 = 2 ranks x 4, or 2 ranks x 2 x 2 accumulated micro-batches)
    # and the same data order.
    config = job_config(make_config, tmp_path, "one", "full", per_device_train_batch_size=8)
    before = {n: p.detach().clone() for n, p in load_model(parse_args(config).model).named_parameters()}
    result = run_sft(parse_args(config))
    one = {n: p.detach() for n, p in result.model.named_parameters()}
    one_losses = [r["loss"] for r in result.log_history if "loss" in r]
    moved = max((one[n] - before[n]).abs().max().item() for n in one)
    assert moved > 1e-3  # the runs trained: a match below is not two copies of the initial weights
    for name in ("full_ddp", "full_z2", "full_z3", "full_ddp_accum", "full_z3_accum"):
        saved = saved_weights(two_ranks / name)
        assert_adam_runs_match(saved, one, name, config["learning_rate"], STEPS)
        logged = [json.loads(line) for line in (two_ranks / name / "trainer_log.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in logged if "loss" in r]
        assert losses == pytest.approx(one_losses, rel=1e-4), name


def test_a_zero3_checkpoint_resumes_on_the_same_world_size_to_the_same_weights(two_ranks):
    assert (two_ranks / "full_z3" / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's sharded states
    resumed, uninterrupted = saved_weights(two_ranks / "full_z3_resumed"), saved_weights(two_ranks / "full_z3")
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6, msg=key)
    logged = [
        json.loads(line) for line in (two_ranks / "full_z3_resumed" / "trainer_log.jsonl").read_text().splitlines()
    ]
    assert [r["current_steps"] for r in logged if "loss" in r] == [3]  # it trained step 3 only


@pytest.mark.parametrize("name", ["lora_z3", "loretta_z3"])
def test_zero3_adapters_reload_in_one_process_to_the_same_logits(two_ranks, make_config, tmp_path, name):
    from peft import PeftModel

    import llmtune.methods.loretta.tuner  # noqa: F401  (registers loretta with PEFT)

    saved = torch.load(two_ranks / f"{name}.logits.pt")  # what the model gave under ZeRO-3 after training
    ids, trained = saved["input_ids"], saved["logits"]
    base = load_model(parse_args(make_config(tmp_path, "lora")).model).eval()
    with torch.no_grad():
        untrained = base(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(base, str(two_ranks / name)).eval()(input_ids=ids).logits
    assert (trained - untrained).abs().max() > 1e-3  # the adapter learned something under ZeRO-3
    torch.testing.assert_close(reloaded, trained, rtol=0, atol=1e-5)


def test_block_under_ddp_matches_one_process_and_switches_on_both_ranks(two_ranks, tmp_path, make_config):
    """The reference BAdam under DDP trains later blocks on each process's own gradients (DDP's reducer
    only knows the first block): the processes drift apart. llmtune averages the active block's
    gradients, so both ranks stay identical and follow one process with the same global batch of 8."""
    config = job_config(make_config, tmp_path, "one", "block", **{**BLOCK, "per_device_train_batch_size": 8})
    initial = {n: p.detach().clone() for n, p in load_model(parse_args(config).model).named_parameters()}
    result = run_sft(parse_args(config))
    changed = {n.split(".")[2] for n, p in result.model.named_parameters() if not torch.equal(p, initial[n])}
    assert len(changed) >= 2, changed  # a block activated after DDP was built trained too
    rank0 = torch.load(two_ranks / "block_ddp.rank0.pt")
    rank1 = torch.load(two_ranks / "block_ddp.rank1.pt")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between the ranks"
    # The same losses and gradient norms at every step, the last ones after updates of two blocks.
    # (Weights are compared through them: Adam's first step on a fresh block is about lr * sign(g), so
    # entries whose gradient is at rounding level may move either way in two equal computations.)
    logged = [json.loads(line) for line in (two_ranks / "block_ddp" / "trainer_log.jsonl").read_text().splitlines()]
    for key in ("loss", "grad_norm"):
        two = [r[key] for r in logged if "loss" in r]
        one = [r[key] for r in result.log_history if "loss" in r]
        assert len(two) == STEPS and two == pytest.approx(one, rel=1e-4), key


def test_block_under_zero3_matches_one_process_and_resumes(two_ranks, tmp_path, make_config):
    """ZeRO-3's partitions, fp32 masters and gradient hooks are rebuilt at every switch: 3 steps train 3
    blocks with the losses and gradient norms of one process with the same global batch of 8. Resumed
    from step 2 (a checkpoint written after the switch to the third block, so the run starts on the first
    block and the loaded state switches it), step 3 ends at the uninterrupted run's weights."""
    config = job_config(make_config, tmp_path, "one", "block", **{**BLOCK, "per_device_train_batch_size": 8})
    initial = {n: p.detach().clone() for n, p in load_model(parse_args(config).model).named_parameters()}
    result = run_sft(parse_args(config))
    logged = [json.loads(line) for line in (two_ranks / "block_z3" / "trainer_log.jsonl").read_text().splitlines()]
    for key in ("loss", "grad_norm"):
        two = [r[key] for r in logged if "loss" in r]
        one = [r[key] for r in result.log_history if "loss" in r]
        assert len(two) == STEPS and two == pytest.approx(one, rel=1e-4), key
    saved = saved_weights(two_ranks / "block_z3")
    # the same parameters moved as on one process: a block per step, later ones activated after the engine was built
    moved = {n for n in initial if not torch.equal(saved[n].float(), initial[n])}
    moved_one = {n for n, p in result.model.named_parameters() if not torch.equal(p.detach(), initial[n])}
    assert moved == moved_one and len({n.split(".")[2] for n in moved if "layers." in n}) >= 2, moved
    assert (two_ranks / "block_z3" / "checkpoint-2" / "global_step2").is_dir()
    resumed = saved_weights(two_ranks / "block_z3_resumed")
    for key, value in saved.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6, msg=key)
    logged = [
        json.loads(line) for line in (two_ranks / "block_z3_resumed" / "trainer_log.jsonl").read_text().splitlines()
    ]
    one_loss = [r["loss"] for r in result.log_history if "loss" in r][-1]
    assert [(r["current_steps"], r["loss"]) for r in logged if "loss" in r] == [(3, pytest.approx(one_loss, rel=1e-4))]


@pytest.mark.parametrize(
    ("job", "finetuning_type", "options"),
    [
        ("block_ddp_accum", "block", BLOCK),
        ("sparse_ddp", "sparse", SPARSE),
        ("sparse_ddp_accum", "sparse", SPARSE),
    ],
)
def test_block_and_sparse_under_ddp_match_one_process(two_ranks, tmp_path, make_config, job, finetuning_type, options):
    """DDP's reducer stays out of block's and sparse's way (it knows neither later blocks nor compact
    gradients); the gradients each rank accumulated are averaged once per step. Both ranks stay
    identical and follow one process with the same global batch of 8 (here with accumulation too)."""
    config = job_config(make_config, tmp_path, "one", finetuning_type, **{**options, "per_device_train_batch_size": 8})
    initial = {n: p.detach().clone() for n, p in load_model(parse_args(config).model).named_parameters()}
    result = run_sft(parse_args(config))
    rank0, rank1 = torch.load(two_ranks / f"{job}.rank0.pt"), torch.load(two_ranks / f"{job}.rank1.pt")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between the ranks"
    assert any(not torch.equal(rank0[k], initial[k]) for k in rank0)  # it trained
    logged = [json.loads(line) for line in (two_ranks / job / "trainer_log.jsonl").read_text().splitlines()]
    for key in ("loss", "grad_norm"):
        two = [r[key] for r in logged if "loss" in r]
        one = [r[key] for r in result.log_history if "loss" in r]
        assert len(two) == STEPS and two == pytest.approx(one, rel=1e-4), key
    if finetuning_type == "sparse":  # Adam on a fraction of each weight: no sign-level ties, weights agree too
        for name, value in result.model.named_parameters():
            torch.testing.assert_close(rank0[name], value.detach(), rtol=0, atol=1e-3, msg=name)  # lr 1e-2


def test_zo_ranks_stay_identical(two_ranks, make_config):
    rank0 = torch.load(two_ranks / "zo_ddp.rank0.pt")
    rank1 = torch.load(two_ranks / "zo_ddp.rank1.pt")
    initial = dict(load_model(parse_args(make_config(two_ranks / "unused", "zo")).model).named_parameters())
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert any(not torch.equal(rank0[k], initial[k].detach()) for k in rank0)  # ZO moved the weights


def test_zo_under_ddp_matches_one_process_with_the_same_global_batch(two_ranks, tmp_path, make_config):
    # zo_ddp: 2 ranks x 8 rows a step; here one process with the same 16 rows in the same order. Both
    # ranks draw the same z and average their projected gradients (and losses) across ranks, so each
    # step must take one process's update on the whole batch: the same losses and weights, not just
    # equal ranks (with each rank's loss a share of all ranks' label tokens, the average was half of it).
    config = job_config(make_config, tmp_path, "one", "zo", learning_rate=1e-3, per_device_train_batch_size=16)
    result = run_sft(parse_args(config))
    logged = [json.loads(line) for line in (two_ranks / "zo_ddp" / "trainer_log.jsonl").read_text().splitlines()]
    two = [r["loss"] for r in logged if "loss" in r]
    one = [r["loss"] for r in result.log_history if "loss" in r]
    assert len(two) == STEPS and two == pytest.approx(one, rel=1e-5)
    initial = dict(load_model(parse_args(config).model).named_parameters())
    ranks = torch.load(two_ranks / "zo_ddp.rank0.pt")
    for name, value in result.model.named_parameters():
        torch.testing.assert_close(ranks[name], value.detach(), rtol=0, atol=1e-5, msg=name)
    assert max((ranks[n] - initial[n].detach()).abs().max().item() for n in ranks) > 1e-5  # it trained


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_on_one_machine_train_the_tiny_default(tmp_path, make_config):
    """``NNODES=2``: one ``llmtune train`` per node, each relaunching itself under torchrun."""
    config = job_config(make_config, tmp_path, "out", "lora", max_steps=2)
    args = ["train"] + [f"--{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in config.items()]
    port = str(_free_port())
    nodes = []
    for rank in (0, 1):
        node_env = {**env(), "NNODES": "2", "NODE_RANK": str(rank), "NPROC_PER_NODE": "1"}
        node_env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        nodes.append(
            subprocess.Popen(
                [sys.executable, "-m", "llmtune", *args],
                cwd=tmp_path,
                env=node_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "launching 1 process as node 0 of 2" in outputs[0]
    assert "llmtune: saved to" in outputs[0] and "llmtune: saved to" not in outputs[1]  # said once, by rank 0
    logged = [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["current_steps"] for r in logged if "loss" in r] == [1, 2]
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
