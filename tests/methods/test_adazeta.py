"""``finetuning_type: adazeta``: the query schedule, query-parallel processes, accumulation, the checkpointed
schedule, and the refusals made before anything loads.

The shared promises (the loss falls over a few hundred steps, only the adapters change, reload,
resume) are in ``test_matrix.py``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from llmtune.arguments import parse_args
from llmtune.errors import ConfigError, TrainingInterrupted
from llmtune.methods.adazeta.model import prepare_adazeta
from llmtune.methods.adazeta.optimizer import AdaZetaOptimizer
from llmtune.methods.adazeta.schedule import QuerySchedule, adaptive_query_count, derived_beta
from llmtune.methods.loretta.model import build_loretta_model, prepare_loretta
from llmtune.methods.loretta.tuner import LorettaLayer
from llmtune.model import load_model
from llmtune.train.run import run_sft

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = {"loretta_rank": 3, "loretta_bottleneck": 8, "zo_eps": 1e-2, "learning_rate": 1e-2}
# 16 rows at batch 8: two steps per epoch, so 8 steps cross four epochs; Q = 1, 1, 2, 3 by epoch.
SHORT_EPOCHS = {"max_samples": 16, "max_steps": 8, "adazeta_alpha": 1.0, "adazeta_beta": 1.0, "adazeta_max_queries": 3}


def train(config: dict, callbacks=None):
    return run_sft(parse_args(config), callbacks=callbacks)


def losses_by_step(result) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in result.log_history if "loss" in e}


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------------
# The schedule


def test_query_schedule_matches_the_papers_example():
    # alpha 0.85, 160 epochs, Q reaching 20 at the end (capped at 15): the reference run_all_large_exp.sh.
    beta = derived_beta(0.85, 20, 160)
    assert 0.85 * 160**beta == pytest.approx(20)
    counts = [adaptive_query_count(e, 0.85, beta, 15) for e in (0, 10, 40, 80, 120, 159)]
    assert counts == [1, 3, 8, 12, 15, 15]


def test_query_schedule_edge_cases():
    assert [adaptive_query_count(e, 1.0, 1.0, 3) for e in range(5)] == [1, 1, 2, 3, 3]
    assert [adaptive_query_count(e, 4.0, 0.0, 15) for e in range(3)] == [4, 4, 4]  # beta 0: a fixed Q
    assert derived_beta(0.85, 20, 1.0) == 1.0  # one epoch: only epoch 0, one query


# ---------------------------------------------------------------------------------------------
# The adapters


def adapters_by_layer(model) -> dict[str, tuple[str, int, int]]:
    """``{module name: (placement, TT rank, bottleneck)}`` of every LoRETTA layer in ``model``."""
    return {
        name.removeprefix("base_model.model.model."): (
            layer.loretta_placement["default"],
            layer.loretta_down["default"].rank,
            layer.loretta_down["default"].out_features,
        )
        for name, layer in model.named_modules()
        if isinstance(layer, LorettaLayer)
    }


def test_default_adapters_are_adazetas_rank_bottleneck_and_placement():
    # The reference (loretta_adp.py's adapter types for llama, run_all_large_exp.sh's RANK=5, run.py's
    # bottleneck 64): the inputs of gate_proj and up_proj, the output of down_proj, nothing else.
    config = {"model_name_or_path": "llmtune/tiny-llama", "dataset": "demo_alpaca", "output_dir": "unused"}
    args = parse_args({**config, "finetuning_type": "adazeta"})
    model = prepare_adazeta(load_model(args.model), args)
    expected = {}
    for i in range(2):  # the tiny model's layers
        for name, placement in (("gate_proj", "input"), ("up_proj", "input"), ("down_proj", "output")):
            expected[f"layers.{i}.mlp.{name}"] = (placement, 5, 64)
    assert adapters_by_layer(model) == expected
    assert all("loretta_" in n for n, p in model.named_parameters() if p.requires_grad)  # norms frozen
    # loretta keeps LoRETTA's own defaults: rank 8 after o_proj and down_proj.
    args = parse_args({**config, "finetuning_type": "loretta", "loretta_train_norms": False})
    loretta = adapters_by_layer(prepare_loretta(load_model(args.model), args))
    assert loretta == {
        f"layers.{i}.{n}": ("output", 8, 64) for i in range(2) for n in ("self_attn.o_proj", "mlp.down_proj")
    }


# ---------------------------------------------------------------------------------------------
# The optimizer on its own


def tiny_adapted_model(seed: int = 0):
    args = parse_args(
        {
            "model_name_or_path": "llmtune/tiny-llama",
            "dataset": "demo_alpaca",
            "output_dir": "unused",
            "finetuning_type": "adazeta",
            **{k: v for k, v in ADAPTER.items() if k.startswith("loretta")},
        }
    )
    torch.manual_seed(seed)
    return build_loretta_model(load_model(args.model), args.methods["loretta"], train_norms=False).eval()


def lm_batch(rows: int = 8, length: int = 16) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 200, (rows, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def make_optimizer(model, queries: int, **kwargs) -> AdaZetaOptimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return AdaZetaOptimizer(params, QuerySchedule(float(queries), 0.0, queries), lr=1e-2, eps=1e-2, **kwargs)


def test_start_step_sets_q_from_the_epoch_once_per_step():
    model = tiny_adapted_model()
    optimizer = AdaZetaOptimizer([p for p in model.parameters() if p.requires_grad], QuerySchedule(1.0, 1.0, 3))
    assert optimizer.start_step(0) == 1 and optimizer.start_step(2) == 2
    batch = lm_batch()
    optimizer.estimate(model, lambda: model(**batch).loss, 0)
    assert optimizer.start_step(5) == 2  # an estimate was made: this step keeps its Q
    optimizer.estimate(model, lambda: model(**batch).loss, 1)
    optimizer.step()
    assert optimizer.start_step(5) == 3
    split = make_optimizer(model, 5, rank=1, world_size=2)
    assert list(split.local_queries()) == [1, 3]


def share_of_loss(model, part: dict, parts: int):
    return lambda: model(**part).loss / parts


def test_accumulated_micro_batches_give_the_update_of_the_whole_batch():
    # issue 15 §5: the same perturbations on each micro-batch, the projected gradients summed over shares.
    batch = lm_batch()
    halves = [{k: v[i : i + 4] for k, v in batch.items()} for i in (0, 4)]
    results = []
    for micro_batches in ([batch], halves):
        model = tiny_adapted_model()
        optimizer = make_optimizer(model, 2)
        optimizer.start_step(0)
        for query in optimizer.local_queries():
            for part in micro_batches:
                optimizer.estimate(model, share_of_loss(model, part, len(micro_batches)), query)
        optimizer.step()
        results.append(adapter_state(model))
    for name, value in results[0].items():  # float rounding of the two losses, amplified by 1 / (2 eps)
        torch.testing.assert_close(results[1][name], value, rtol=0, atol=1e-5)


def test_the_schedule_is_in_the_optimizer_state_and_survives_a_reload():
    model = tiny_adapted_model()
    optimizer = AdaZetaOptimizer([p for p in model.parameters() if p.requires_grad], QuerySchedule(0.85, 0.62, 15))
    optimizer.start_step(40)
    state = optimizer.state_dict()
    assert state["adazeta"] == {"alpha": 0.85, "beta": 0.62, "max_queries": 15, "epoch": 40, "num_queries": 8}
    fresh = AdaZetaOptimizer([p for p in model.parameters() if p.requires_grad], QuerySchedule(1.0, 2.0, 3))
    fresh.load_state_dict(state)  # a resumed run keeps the schedule it started with
    assert fresh.schedule == QuerySchedule(0.85, 0.62, 15) and fresh.num_queries == 8


# Run as a script by each of two gloo processes, and imported by the test for the one-process
# reference. A small tensor-train network keeps each process's start-up to torch and llmtune alone
# (the torchrun test below checks the same on the real model, end to end).
WORKER = textwrap.dedent(
    """
    import os
    import torch
    import torch.distributed as dist
    from torch import nn
    from llmtune.methods.adazeta.optimizer import AdaZetaOptimizer
    from llmtune.methods.adazeta.schedule import QuerySchedule
    from llmtune.methods.tensor_train import TensorTrainLinear


    def train(rank, world_size, steps=2):
        torch.manual_seed(0)
        model = nn.Sequential(TensorTrainLinear(32, 8, 3, bias=True), nn.ReLU(), TensorTrainLinear(8, 32, 3, bias=True))
        initial = {name: p.detach().clone() for name, p in model.named_parameters()}
        generator = torch.Generator().manual_seed(1)
        x, y = torch.randn(16, 32, generator=generator), torch.randn(16, 32, generator=generator)
        schedule = QuerySchedule(3.0, 0.0, 3)  # Q = 3: rank 0 evaluates queries 0 and 2, rank 1 query 1
        optimizer = AdaZetaOptimizer(model.parameters(), schedule, lr=0.1, eps=1e-3, rank=rank, world_size=world_size)
        for _ in range(steps):
            optimizer.start_step(0)
            for query in optimizer.local_queries():
                optimizer.estimate(model, lambda: (model(x) - y).pow(2).mean(), query)
            optimizer.step()
        report = optimizer.last_report
        return {
            "initial": initial,
            "weights": {name: p.detach().clone() for name, p in model.named_parameters()},
            "grads": report.projected_grads,
            "losses": (report.loss_plus, report.loss_minus),
            "local": list(optimizer.local_queries()),
        }


    if __name__ == "__main__":
        rank = int(os.environ["RANK"])
        dist.init_process_group("gloo", init_method="file://" + os.environ["STORE"], rank=rank, world_size=2)
        torch.save(train(rank, 2), os.environ["OUT"])
        dist.barrier()  # neither rank leaves while the other still talks to gloo
        # Leave without tearing gloo down: its teardown aborted a rank now and then ("terminate called without
        # an active exception", exit -6) after the results were written; nothing else is left to flush.
        os._exit(0)
    """
)


def test_two_gloo_processes_give_the_update_of_one_process_evaluating_every_query(tmp_path):
    script = tmp_path / "adazeta_worker.py"
    script.write_text(WORKER)
    # a file store: no port to pick, so nothing else on the machine can take it between pick and bind
    env = {**os.environ, "STORE": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env={**env, "RANK": str(r), "OUT": str(tmp_path / f"{r}.pt")},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-3000:]

    spec = importlib.util.spec_from_file_location("adazeta_worker", script)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    expected = worker.train(rank=0, world_size=1)  # one process evaluates all three queries
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    assert [r["local"] for r in ranks] == [[0, 2], [1]]
    for result in ranks:
        assert result["grads"] == expected["grads"]
        assert result["losses"] == pytest.approx(expected["losses"], rel=1e-12)
        for name, value in expected["weights"].items():
            torch.testing.assert_close(result["weights"][name], value, rtol=0, atol=0)
    assert all(not torch.equal(v, expected["initial"][k]) for k, v in expected["weights"].items())  # it did train


# ---------------------------------------------------------------------------------------------
# The trainer


class RecordQueries(TrainerCallback):
    """The query count of each optimizer step, read from the optimizer the trainer hands its callbacks."""

    def __init__(self):
        self.queries: list[int] = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.queries.append(getattr(optimizer, "optimizer", optimizer).num_queries)  # unwrap accelerate's wrapper


class SignalAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_training_follows_the_schedule_checkpoints_it_and_resumes_it(tmp_path, make_config):
    recorder = RecordQueries()
    straight = train(make_config(tmp_path / "straight", "adazeta", save_steps=4, **ADAPTER, **SHORT_EPOCHS), [recorder])
    assert recorder.queries == [1, 1, 1, 1, 2, 2, 3, 3]
    state = torch.load(tmp_path / "straight" / "checkpoint-4" / "optimizer.pt", weights_only=False)
    assert state["adazeta"] == {"alpha": 1.0, "beta": 1.0, "max_queries": 3, "epoch": 1, "num_queries": 1}
    trainable = {n for n, p in straight.model.named_parameters() if p.requires_grad}
    assert trainable and all(".loretta_down." in n or ".loretta_up." in n for n in trainable)  # norms frozen
    assert all(p.dtype == torch.float32 for p in straight.model.parameters() if p.requires_grad)

    # Interrupted in epoch 2 (Q = 2), resumed: the same queries and losses as the uninterrupted run.
    config = make_config(tmp_path / "resumed", "adazeta", save_steps=100, **ADAPTER, **SHORT_EPOCHS)
    with pytest.raises(TrainingInterrupted, match="after step 5"):
        train(config, callbacks=[SignalAtStep(5)])
    resumed_queries = RecordQueries()
    resumed = train({**config, "resume_from_checkpoint": True}, [resumed_queries])
    assert resumed_queries.queries == [2, 3, 3]
    first, second = losses_by_step(straight), losses_by_step(resumed)
    assert [second[s] for s in range(6, 9)] == pytest.approx([first[s] for s in range(6, 9)], abs=1e-6)


@pytest.mark.parametrize("master", [False, True])
def test_bf16_keeps_the_adapters_in_bf16_and_resumes_them_bitwise(tmp_path, make_config, monkeypatch, master):
    # As zo: under bf16 the trained adapters stay bf16 (stochastically rounded updates, their draws from the
    # checkpointed seed stream), or float32 with zo_master_weights; the base stays the bf16 checkpoint.
    monkeypatch.setenv("LLMTUNE_ALLOW_CPU_BF16", "1")
    common = {**ADAPTER, **SHORT_EPOCHS, "bf16": True, "zo_master_weights": master, "learning_rate": 1e-3}
    config = make_config(tmp_path / "straight", "adazeta", save_steps=100, **common)
    base = {k: v.to(torch.bfloat16) for k, v in load_model(parse_args(config).model).state_dict().items()}
    straight = train(config)
    trained = adapter_state(straight.model)
    assert trained and {p.dtype for p in trained.values()} == {torch.float32 if master else torch.bfloat16}
    assert any(p.abs().sum() > 0 for n, p in trained.items() if ".loretta_up." in n)  # zero at init: updated
    frozen = {n: p for n, p in straight.model.get_base_model().named_parameters() if not p.requires_grad}
    assert {p.dtype for p in frozen.values()} == {torch.bfloat16}
    names = {n.replace(".base_layer", ""): n for n in frozen}
    assert set(base) <= set(names) and all(torch.equal(frozen[names[k]], v) for k, v in base.items())

    resumed_config = make_config(tmp_path / "resumed", "adazeta", save_steps=100, **common)
    with pytest.raises(TrainingInterrupted):
        train(resumed_config, callbacks=[SignalAtStep(5)])
    resumed = train({**resumed_config, "resume_from_checkpoint": True})
    for name, value in adapter_state(resumed.model).items():
        assert torch.equal(value, trained[name]), name


@pytest.mark.slow
def test_accumulation_in_the_trainer_equals_the_larger_batch(tmp_path, make_config):
    common = {**ADAPTER, "max_steps": 3, "save_steps": 100, "adazeta_alpha": 2.0, "adazeta_beta": 0.0}
    whole = train(make_config(tmp_path / "whole", "adazeta", per_device_train_batch_size=8, **common))
    accumulated = train(
        make_config(tmp_path / "acc", "adazeta", per_device_train_batch_size=4, gradient_accumulation_steps=2, **common)
    )
    expected = adapter_state(whole.model)
    for name, value in adapter_state(accumulated.model).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-5)
    a, b = losses_by_step(whole), losses_by_step(accumulated)
    assert [b[s] for s in sorted(b)] == pytest.approx([a[s] for s in sorted(a)], abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Refused before anything loads


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"zo_optimizer": "adamu"},
            r"^zo_optimizer: 'adamu' is not supported with finetuning_type: adazeta .*use sgd$",
        ),
        ({"zo_target": "lora"}, r"^zo_target: not used by finetuning_type: adazeta .*remove it$"),
        ({"zo_num_queries": 4}, r"^zo_num_queries: not used by finetuning_type: adazeta \(.*adazeta_beta 0"),
        ({"loretta_train_norms": "true"}, r"^loretta_train_norms: true is not supported with finetuning_type: adazeta"),
        ({"adazeta_alpha": 0}, r"^adazeta_alpha: 0(\.0)? must be > 0$"),
        ({"adazeta_max_queries": 0}, r"^adazeta_max_queries: 0 must be a positive integer$"),
    ],
)
def test_what_adazeta_cannot_run_is_one_line(options, message):
    config = {"model_name_or_path": "llmtune/tiny-llama", "dataset": "demo_alpaca", "output_dir": "unused"}
    with pytest.raises(ConfigError, match=message):
        parse_args({**config, "finetuning_type": "adazeta", **options})


# ---------------------------------------------------------------------------------------------
# torchrun end to end


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_torchrun_with_two_processes_trains_as_one_process(tmp_path):
    flags = [
        "--model_name_or_path",
        "llmtune/tiny-llama",
        "--finetuning_type",
        "adazeta",
        "--dataset",
        "demo_alpaca",
        "--dataset_dir",
        str(ROOT / "data"),
        "--cutoff_len",
        "64",
        "--max_samples",
        "32",
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "1e-2",
        "--zo_eps",
        "1e-2",
        "--loretta_rank",
        "3",
        "--loretta_bottleneck",
        "8",
        "--adazeta_alpha",
        "3",
        "--adazeta_beta",
        "0",
        "--max_steps",
        "4",
        "--save_steps",
        "100",
        "--logging_steps",
        "1",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, launcher in (
        ("one", [sys.executable, "-m", "llmtune", "train"]),
        ("two", [shutil.which("torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "llmtune", "train"]),
    ):
        out = tmp_path / name
        proc = subprocess.run(
            [*launcher, *flags, "--output_dir", str(out)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        from safetensors.torch import load_file

        runs[name] = load_file(str(out / "adapter_model.safetensors"))
    assert runs["one"].keys() == runs["two"].keys()
    for key, value in runs["one"].items():
        torch.testing.assert_close(runs["two"][key], value, rtol=0, atol=1e-6)
