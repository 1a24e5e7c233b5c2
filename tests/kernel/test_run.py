"""``llmtune kernel`` end to end on the tiny model: result files, the cache, the solvers, bad input, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmtune.cli import main
from llmtune.data.kshot import k_shot_split, k_shot_splits
from llmtune.data.tasks import load_task_examples, load_tasks
from llmtune.errors import ConfigError
from llmtune.kernel.config import parse_kernel_args
from llmtune.kernel.run import compute_kernels, load_kernel_data, run_kernel
from llmtune.kernel.solvers import solve, targets

ROOT = Path(__file__).resolve().parents[2]
FLAGS = {
    "task": "demo_sst2",
    "model_name_or_path": "llmtune/tiny-llama",
    "k_shot": 4,
    "seed": 3,
    "max_samples": 8,
    "cutoff_len": 64,
    "kernel_batch_size": 8,
    "kernel_params": "no_embeddings",
}


def _run(tmp: Path, **overrides):
    return parse_kernel_args(
        {**FLAGS, "output_dir": str(tmp / "out"), "kernel_cache_dir": str(tmp / "cache"), **overrides}
    )


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """One kernel computation (8 training, 8 eval examples), the run and its data."""
    tmp = tmp_path_factory.mktemp("kernel")
    run = _run(tmp)
    [data] = load_kernel_data(run)
    return tmp, run, data, compute_kernels(run, data)


def test_k_shot_split_has_k_examples_per_class(computed):
    _, _, data, kernels = computed
    assert sorted(e.label for e in data.train) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert sorted(e.label for e in data.dev) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert not {e.prompt for e in data.dev} & {e.prompt for e in data.train}
    assert kernels["train"]["kernel"].shape == (8, 2, 8, 2)
    assert kernels["dev"]["kernel"].shape == (8, 2, 8, 2)
    assert kernels["eval"]["kernel"].shape == (8, 2, 8, 2)
    assert kernels["eval"]["f0"].shape == (8, 2)


def test_lstsq_without_ridge_interpolates_the_training_labels(computed):
    _, _, data, kernels = computed
    labels = torch.tensor([e.label for e in data.train])
    train, k_eval = kernels["train"], kernels["eval"]
    fitted, _ = solve("lstsq", train["kernel"], k_eval["kernel"], labels, train["f0"], k_eval["f0"])
    torch.testing.assert_close(fitted, targets(labels, 2), rtol=0, atol=1e-6)
    assert not torch.allclose(train["f0"], targets(labels, 2), atol=0.5)  # the model alone did not fit them
    ridged, _ = solve("lstsq", train["kernel"], k_eval["kernel"], labels, train["f0"], k_eval["f0"], ridge=1.0)
    assert (ridged - targets(labels, 2)).abs().max() > 1e-3  # a ridge term no longer interpolates


def test_second_run_reads_the_cache_and_loads_no_model(computed, request):
    tmp, run, data, kernels = computed

    request.getfixturevalue("refuse_model_loading")  # from here on, a model load fails the test
    again = compute_kernels(run, data)
    for split in ("train", "dev", "eval"):
        assert torch.equal(again[split]["kernel"], kernels[split]["kernel"])
        assert torch.equal(again[split]["f0"], kernels[split]["f0"])
    for solver in ("lstsq", "logistic", "svr"):
        result = run_kernel(_run(tmp, kernel_solver=solver), say=lambda _line: None)
        assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
        if solver == "lstsq":
            assert result["per_seed"][0]["train_accuracy"] == 1.0
    out = tmp / "out" / "demo_sst2"
    saved = json.loads((out / "results.json").read_text())
    # llmtune eval's result format, plus the kernel's settings
    assert {"task", "model_id", "split", "examples", "metrics", "num_demos", "format"} <= saved.keys()
    assert saved["examples"] == 8 and saved["kernel"]["solver"] == "svr" and saved["kernel"]["seeds"] == [3]
    assert saved["metrics"] == saved["per_seed"][0]["test"] and saved["metrics_std"] == {"accuracy": 0.0}
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 8 and {"seed", "prediction", "label", "correct"} <= json.loads(lines[0]).keys()


def test_another_seed_or_formula_is_another_cache_entry(computed):
    from llmtune.kernel.run import cache_path

    tmp, run, data, _ = computed
    base = cache_path(run, "train", 3, data.train, data.train)
    assert base.is_file()
    other = _run(tmp, kernel_formula="signgd")
    assert cache_path(other, "train", 3, data.train, data.train) != base
    assert cache_path(run, "train", 4, data.train, data.train) != base


def test_one_pass_caches_every_formula_and_another_formula_reads_it(computed, monkeypatch, request):
    """The fixture's sgd run cached the signgd and asymmetric_signgd kernels of the same Jacobians: a run with
    either loads no model and equals that formula computed on its own in a fresh cache."""
    from llmtune.kernel.run import cache_path

    tmp, run, data, _ = computed
    for formula in ("signgd", "asymmetric_signgd"):
        for split in ("train", "dev", "eval"):
            assert cache_path(run, split, 3, data.train, getattr(data, split), formula).is_file()
    with monkeypatch.context() as alone:  # each formula by itself, in a fresh cache: the reference
        alone.setattr("llmtune.kernel.run.formulas_of", lambda run, _options: (run.kernel.kernel_formula,))
        fresh = {f: compute_kernels(_run(tmp / f, kernel_formula=f), data) for f in ("signgd", "asymmetric_signgd")}
    assert len(list((tmp / "signgd" / "cache").glob("*.pt"))) == 3  # computed alone: its own three files only

    request.getfixturevalue("refuse_model_loading")  # from here on, a model load fails the test
    for formula, alone in fresh.items():
        cached = compute_kernels(_run(tmp, kernel_formula=formula), data)
        for split in ("train", "dev", "eval"):
            torch.testing.assert_close(cached[split]["kernel"], alone[split]["kernel"], rtol=1e-6, atol=1e-9)
            assert torch.equal(cached[split]["f0"], alone[split]["f0"])
    assert cached["eval"]["kernel"].shape == (8, 1, 8, 1) and cached["eval"]["f0"].shape == (8, 1)
    result = run_kernel(_run(tmp, kernel_formula="asymmetric_signgd"), say=lambda _line: None)
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0


def _hand_accuracy(kernels: dict, data, split: str) -> float:
    """Kernel regression by hand: solve ``K^T alpha = y`` (+-1 targets; f0 not subtracted, the default), predict
    ``K_x^T alpha``."""
    n, classes = kernels["train"]["f0"].shape
    gram = kernels["train"]["kernel"].reshape(n * classes, n * classes)
    y = torch.full((n, classes), -1.0, dtype=torch.float64)
    y[torch.arange(n), [e.label for e in data.train]] = 1.0
    alpha = torch.linalg.solve(gram.T, y.reshape(-1))
    out = (kernels[split]["kernel"].reshape(n * classes, -1).T @ alpha).reshape(-1, classes)
    examples = getattr(data, split)
    return sum(int(row.argmax()) == e.label for row, e in zip(out, examples, strict=True)) / len(examples)


def test_several_seeds_give_per_seed_dev_and_test_accuracy_and_mean_std(computed, request):
    tmp, _, _, _ = computed
    lines = []
    result = run_kernel(_run(tmp, seed="3,5"), say=lines.append)  # seed 3 is cached (fixture); seed 5 is computed
    draws = load_kernel_data(_run(tmp, seed="3,5"))
    assert [d.seed for d in draws] == [3, 5] and draws[0].train != draws[1].train
    pool, _ = load_task_examples(load_tasks()["demo_sst2"], "train", None)
    for data in draws:
        assert (data.train, data.dev) == k_shot_splits(pool, 4, data.seed, "demo_sst2")
    expected = {"test": [], "dev": []}
    for data, entry in zip(draws, result["per_seed"], strict=True):
        kernels = compute_kernels(_run(tmp, seed=data.seed), data)  # from the cache
        assert entry["seed"] == data.seed and entry["train_accuracy"] == 1.0
        for name, split in (("test", "eval"), ("dev", "dev")):
            expected[name].append(_hand_accuracy(kernels, data, split))
            assert entry[name]["accuracy"] == pytest.approx(expected[name][-1], abs=1e-12)
    for key, name in (("metrics", "test"), ("dev_metrics", "dev")):
        a, b = expected[name]
        assert result[key]["accuracy"] == pytest.approx((a + b) / 2)
        assert result[f"{key}_std"]["accuracy"] == pytest.approx(abs(a - b) / 2)  # population std, as LM-BFF
    # train, dev and eval, cached per seed, for each of the three formulas (one pass computes them all)
    assert len(list((tmp / "cache").glob("demo_sst2-*-seed5-*.pt"))) == 9
    assert "± " in lines[-1] and lines[-1].endswith("over 2 seeds (3, 5)")
    saved = json.loads((tmp / "out" / "demo_sst2" / "results.json").read_text())
    assert saved["per_seed"] == result["per_seed"] and saved["kernel"]["seeds"] == [3, 5]

    request.getfixturevalue("refuse_model_loading")  # from here on, a model load fails the test
    alone = run_kernel(_run(tmp, seed=5), say=lines.append)  # one seed, as before: from the cache
    assert alone["per_seed"] == result["per_seed"][1:] and alone["metrics"] == result["per_seed"][1]["test"]
    assert "over" not in lines[-1] and "seed 5;" in lines[-1]


def test_benchmark_entry_points_write_per_seed_results(computed, tmp_path):
    """In-process (``run_kernel_config``) and as a subprocess (``python -m llmtune kernel``), as a benchmark calls it."""
    from llmtune.kernel.run import run_kernel_config

    cache = computed[0] / "cache"  # seed 3's kernels are there already
    flags = {**FLAGS, "seed": "3,5", "kernel_formula": "sgd", "kernel_cache_dir": str(cache)}
    inline = run_kernel_config({**flags, "output_dir": str(tmp_path / "inline")}, say=lambda _line: None)
    proc = _cli([sys.executable, "-m", "llmtune", "kernel"], {**flags, "output_dir": tmp_path / "cli"}, ROOT)
    saved = json.loads((tmp_path / "cli" / "demo_sst2" / "results.json").read_text())
    assert saved["per_seed"] == inline["per_seed"] and [s["seed"] for s in saved["per_seed"]] == [3, 5]
    assert all({"test", "dev"} <= entry.keys() for entry in saved["per_seed"])
    assert saved["metrics"]["accuracy"] == pytest.approx(sum(s["test"]["accuracy"] for s in saved["per_seed"]) / 2)
    assert "over 2 seeds (3, 5)" in proc.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kernel_formul", "sgd"], "did you mean 'kernel_formula'"),
        (["--kernel_solver", "ridge"], "kernel_solver"),
        (["--task", "demo_squad"], "generation task"),
        (["--task", "cb", "--kernel_formula", "asymmetric_signgd"], "binary tasks"),
        (["--compare", "full,lora"], "compare"),
        (["--k_shot", "0"], "k_shot"),
        (["--seed", "13,x"], "seed: 'x' is not an integer"),
        (["--seed", "13,21,13"], "seed: 13 is given twice"),
        (["--seed", "13,21", "--compare", "full"], "compare: trains one k-shot split"),
    ],
)
def test_bad_input_is_one_line_before_loading(flags, message, capsys):
    base = ["--task", "demo_sst2", "--model_name_or_path", "llmtune/tiny-llama", "--k_shot", "4"]
    assert main(["kernel", *base, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_k_shot_is_the_data_key_training_reads(tmp_path):
    """One ``k_shot``: DataArguments' (as training's), read from YAML; the kernel has no field of its own."""
    from llmtune.hparams.kernel_args import KernelArguments
    from llmtune.kernel.config import load_kernel_arguments

    config = tmp_path / "kernel.yaml"
    config.write_text("task: demo_sst2\nmodel_name_or_path: llmtune/tiny-llama\nk_shot: 4\n", encoding="utf-8")
    run = load_kernel_arguments([str(config)])
    assert run.data.k_shot == 4 and "k_shot" not in KernelArguments.__dataclass_fields__
    pool, _ = load_task_examples(load_tasks()["demo_sst2"], "train", None)
    assert load_kernel_data(run)[0].train == k_shot_split(pool, 4, run.kernel.seed, "demo_sst2")
    with pytest.raises(ConfigError, match=r"k_shot: 0 \(0 means every training row"):
        load_kernel_arguments([str(config), "--k_shot", "0"])


def test_help_lists_the_kernel_keys(capsys):
    assert main(["kernel", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--kernel_formula" in text and "--kernel_batch_size" in text


# ---------------------------------------------------------------------------------------------
# Subprocesses: torchrun, and the comparison with fine-tuning


def _cli(launcher: list[str], flags: dict, cwd: Path) -> subprocess.CompletedProcess:
    args = [item for key, value in flags.items() for item in (f"--{key}", str(value))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_two_processes_compute_the_same_kernel_as_one(tmp_path):
    flags = {**FLAGS, "kernel_batch_size": 4}  # 2 row and 2 column batches per split: work for both processes
    run_kernel(_run(tmp_path / "one", **flags), say=lambda _line: None)  # one thread, as the workers below
    two = [shutil.which("torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "llmtune", "kernel"]
    _cli(
        two, {**flags, "output_dir": tmp_path / "two" / "out", "kernel_cache_dir": tmp_path / "two" / "cache"}, tmp_path
    )
    cached = {
        name: {p.name: torch.load(p, weights_only=True) for p in (tmp_path / name / "cache").glob("*.pt")}
        for name in ("one", "two")
    }
    assert len(cached["one"]) == 9 and cached["one"].keys() == cached["two"].keys()  # train, dev, eval x 3 formulas
    for file, content in cached["one"].items():
        assert torch.equal(content["kernel"], cached["two"][file]["kernel"]), file
        assert torch.equal(content["f0"], cached["two"][file]["f0"]), file
    one = json.loads((tmp_path / "one" / "out" / "demo_sst2" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "out" / "demo_sst2" / "results.json").read_text())
    assert one["metrics"] == two["metrics"]


@pytest.mark.slow
def test_compare_trains_the_same_split_and_tabulates(tmp_path):
    """The fine-tuning runs train on the kernel's k-shot split and are scored on the kernel's test examples;
    the table holds each accuracy as its own predictions give it."""
    import yaml

    config = tmp_path / "compare.yaml"
    config.write_text("max_steps: 4\nper_device_train_batch_size: 8\n", encoding="utf-8")
    lines = []
    run = _run(tmp_path, compare="full,zo", compare_config=str(config))
    result = run_kernel(run, say=lines.append)
    out = tmp_path / "out" / "demo_sst2"
    rows = json.loads((out / "compare.json").read_text())
    assert rows == result["compare"] and set(rows) == {"kernel", "full", "zo"}

    # The split: the kernel's training examples are data.kshot's draw for seed 3, and the task the runs train on
    pool, _ = load_task_examples(load_tasks()["demo_sst2"], "train", None)
    drawn = [(e.prompt, e.label) for e in k_shot_split(pool, 4, 3, "demo_sst2")]
    name = "demo_sst2_k4_seed3"
    split_task = load_tasks(str(out / "kshot"))[name]
    trained_on, _ = load_task_examples(split_task, "train", None)
    assert [(e.prompt, e.label) for e in trained_on] == drawn
    tested_on, _ = load_task_examples(split_task, "eval", None)
    [data] = load_kernel_data(run)
    assert [(e.prompt, e.label) for e in tested_on] == [(e.prompt, e.label) for e in data.eval]
    for method in ("full", "zo"):
        used = yaml.safe_load((out / "compare" / method / "training_args.yaml").read_text())
        assert (used["dataset"], used["dataset_dir"], used["seed"]) == (name, str(out / "kshot"), 3)
        assert used["finetuning_type"] == method and used["train_as_classification"] is True

    # The table: each accuracy is its own predictions' on the same 8 test examples, in the same order
    def accuracy(path: Path) -> tuple[float, list[int]]:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return sum(r["correct"] for r in records) / len(records), [r["label"] for r in records]

    kernel_accuracy, labels = accuracy(out / "predictions.jsonl")
    assert labels == [e.label for e in data.eval] and rows["kernel"] == kernel_accuracy == result["metrics"]["accuracy"]
    table = (out / "compare.md").read_text()
    for method in ("full", "zo"):
        scored = out / "compare" / method / "eval" / name
        method_accuracy, method_labels = accuracy(scored / "predictions.jsonl")
        assert method_labels == labels and json.loads((scored / "results.json").read_text())["examples"] == 8
        assert rows[method] == pytest.approx(method_accuracy)
        assert f"| {method} fine-tuning | {rows[method]:.4f} |" in table
    assert f"| kernel (sgd, lstsq) | {rows['kernel']:.4f} |" in table and table.rstrip() == lines[-1]


def test_examples_are_valid_kernel_configs(monkeypatch):
    from llmtune.kernel.config import load_kernel_arguments

    monkeypatch.chdir(ROOT)  # the compare example names its training keys by a path from the repository
    configs = [p for p in sorted((ROOT / "examples" / "kernel").glob("*.yaml")) if "task:" in p.read_text()]
    assert len(configs) == 4
    for path in configs:
        run = load_kernel_arguments([str(path)])
        assert run.kernel.task in ("demo_sst2", "sst2", "tweet_sentiment") and run.data.k_shot == 16
        assert run.seeds == ([13, 21, 42, 87, 100] if run.kernel.task == "tweet_sentiment" else [42])
