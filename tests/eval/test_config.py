"""``llmtune eval`` arguments: keys, tasks, run directories, the judge settings; all before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmtune.cli import main
from llmtune.errors import ConfigError, DataFileNotFoundError
from llmtune.eval.config import gather_compare, load_eval_arguments


def fake_run(folder: Path, kind: str = "adapter", **config) -> Path:
    """A folder shaped like `llmtune train`'s output (no weights needed to parse it)."""
    folder.mkdir(parents=True)
    settings = {"model_name_or_path": "llmtune/tiny-llama", "finetuning_type": "lora", "learning_rate": 1e-3, **config}
    (folder / "training_args.yaml").write_text(yaml.safe_dump(settings))
    if kind == "adapter":
        (folder / "adapter_config.json").write_text("{}")
    elif kind == "full":
        (folder / "config.json").write_text("{}")
    return folder


def test_unknown_key_suggests_and_points_at_eval_help(capsys) -> None:
    assert main(["eval", "--task", "demo_sst2", "--model_name_or_path", "llmtune/tiny-llama", "--num_demo", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("llmtune: error: unknown eval key 'num_demo' (did you mean 'num_demos'?); see `llmtune eval --help`")


def test_unknown_task_lists_the_tasks(capsys) -> None:
    assert main(["eval", "--task", "sst", "--model_name_or_path", "llmtune/tiny-llama"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmtune: error: task: 'sst' is not a task (did you mean 'sst2'?); tasks: boolq, cb, copa")
    assert err.endswith("mt_bench") and "\n" not in err


def test_the_api_key_is_never_a_config_value(capsys) -> None:
    secret = "sk-do-not-echo-0123456789"
    assert (
        main(["eval", "--task", "mt_bench", "--model_name_or_path", "llmtune/tiny-llama", "--judge_api_key", secret])
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown eval key 'judge_api_key'" in err and "judge_api_key_env" in err and secret not in err
    with pytest.raises(ConfigError) as caught:
        load_eval_arguments(
            ["--task", "mt_bench", "--model_name_or_path", "llmtune/tiny-llama", "--judge_api_key_env", secret]
        )
    assert "NAME of an environment variable" in str(caught.value) and secret not in str(caught.value)


def test_a_run_directory_brings_its_model_adapter_and_template(tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path / "lora_run", template="alpaca", cutoff_len=99)
    run = load_eval_arguments([str(run_dir), "--task", "demo_sst2"])
    assert run.model.model_name_or_path == "llmtune/tiny-llama" and run.model.adapter_name_or_path == str(run_dir)
    assert run.data.template == "alpaca" and run.data.cutoff_len == 99 and run.run_config["learning_rate"] == 1e-3
    assert run.output_dir == run_dir / "eval" and run.model_id == "lora_run"
    # the same through model_name_or_path, and what the user sets wins
    again = load_eval_arguments(["--model_name_or_path", str(run_dir), "--task", "demo_sst2", "--template", "chatml"])
    assert again.model.adapter_name_or_path == str(run_dir) and again.data.template == "chatml"
    # a run that set no template trained with the default one: that is what it is evaluated with
    plain = load_eval_arguments([str(fake_run(tmp_path / "plain_run")), "--task", "demo_sst2"])
    assert plain.data.template == "default" and "template" in plain.given


def test_full_model_runs_and_unfinished_runs(tmp_path: Path) -> None:
    full = fake_run(tmp_path / "full_run", kind="full")
    run = load_eval_arguments([str(full), "--task", "demo_sst2"])
    assert run.model.model_name_or_path == str(full) and run.model.adapter_name_or_path is None
    with pytest.raises(DataFileNotFoundError, match="holds no saved model .* or adapter"):
        load_eval_arguments([str(fake_run(tmp_path / "unfinished", kind="none")), "--task", "demo_sst2"])


@pytest.mark.parametrize("name", ["saves/no_such_run", "no_such_eval.yaml"])
def test_a_path_that_does_not_exist_is_no_run_or_config(tmp_path: Path, capsys, name: str) -> None:
    path = tmp_path / name
    assert main(["eval", str(path), "--task", "demo_sst2"]) == 2
    assert capsys.readouterr().err == (
        f"llmtune: error: no run or config at '{path}': give a training run's output_dir "
        "(with training_args.yaml) or an eval config file (.yaml)\n"
    )


def test_compare_takes_several_folders() -> None:
    assert gather_compare(["--compare", "a", "b", "--output_dir", "o"]) == ["--compare", "a,b", "--output_dir", "o"]
    run = load_eval_arguments(["--task", "mt_bench", "--compare", "runs/a", "runs/b"])
    assert run.eval.compare == "runs/a,runs/b"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--judge_runs", "0"], "judge_runs: 0 must be >= 1"),
        (["--judge_api_base", "ftp://host"], "judge_api_base: 'ftp://host' is not an http(s) URL"),
        (["--num_demos", "-1"], "num_demos: -1 must be >= 0"),
        (["--task_format", "xml"], "task_format: 'xml' is not one of auto, chat, plain"),
        (["--eval_split", "test"], "eval_split: 'test' is not one of eval, train"),
    ],
)
def test_bad_values_are_one_line(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_eval_arguments(["--task", "demo_sst2", "--model_name_or_path", "llmtune/tiny-llama", *flags])
    assert message in str(caught.value)


def test_saved_eval_config_keeps_the_variable_name_not_a_key(tmp_path: Path) -> None:
    run = load_eval_arguments(
        ["--task", "mt_bench", "--model_name_or_path", "llmtune/tiny-llama", "--judge_api_key_env", "MY_KEY"]
    )
    assert run.public_config()["judge_api_key_env"] == "MY_KEY"
