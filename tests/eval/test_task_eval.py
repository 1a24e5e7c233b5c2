"""``llmtune eval --task ...`` end to end on the tiny model: results, determinism, formats, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtune.arguments import parse_args
from llmtune.cli import main
from llmtune.train.run import run_sft

TINY = ["--model_name_or_path", "llmtune/tiny-llama"]


def results(folder: Path, task: str) -> tuple[dict, list[dict]]:
    result = json.loads((folder / task / "results.json").read_text())
    predictions = [json.loads(line) for line in (folder / task / "predictions.jsonl").read_text().splitlines()]
    return result, predictions


def test_choice_and_generation_tasks_are_scored_and_written(tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            *TINY,
            "--task",
            "demo_sst2,demo_squad",
            "--max_samples",
            "12",
            "--output_dir",
            str(out),
            "--max_new_tokens",
            "4",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "demo_sst2 (eval, 12 examples, 0 demos, plain): accuracy" in printed and "em " in printed
    sst2, predictions = results(out, "demo_sst2")
    assert sst2["examples"] == 12 and len(predictions) == 12 and sst2["length_normalization"] is True
    right = sum(p["prediction"] == p["label"] for p in predictions)
    assert sst2["metrics"]["accuracy"] == pytest.approx(right / 12)
    assert all(len(p["scores"]) == 2 and p["prediction"] == p["scores"].index(max(p["scores"])) for p in predictions)
    squad, answers = results(out, "demo_squad")
    assert set(squad["metrics"]) == {"em", "f1"} and all("\n" not in a["prediction"] for a in answers)
    assert (out / "demo_sst2" / "eval_args.yaml").is_file()


def test_demonstrations_and_batching_do_not_change_the_answer(tmp_path: Path) -> None:
    """Seeded demonstrations give the same scores twice; the batch size does not change any score."""
    runs = []
    for name, size in (("a", "1"), ("b", "8")):
        flags = ["--task", "demo_rte", "--max_samples", "8", "--num_demos", "2", "--eval_batch_size", size]
        assert main(["eval", *TINY, *flags, "--output_dir", str(tmp_path / name)]) == 0
        runs.append(results(tmp_path / name, "demo_rte")[1])
    for first, second in zip(*runs, strict=True):
        assert first["scores"] == pytest.approx(second["scores"], abs=1e-3)


def test_missing_column_and_bad_rows_are_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "mine.jsonl"
    bad.write_text('{"text": "good film", "label": 1}\n')
    flags = ["--task", "demo_sst2", "--task_file", str(bad), "--output_dir", str(tmp_path / "out")]
    assert main(["eval", *TINY, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"llmtune: error: {bad}: column 'sentence' (used by task 'demo_sst2') is missing; columns found: text, label"
    )
    bad.write_text('{"sentence": "good film", "label": 1}\n{"sentence": "bad film", "label": "maybe"}\n')
    assert main(["eval", *TINY, *flags]) == 2
    assert not (tmp_path / "out").exists()  # nothing written, no model loaded
    assert f"{bad}:2: row 2: label 'label' is 'maybe'" in capsys.readouterr().err


def test_a_lora_run_trained_as_sft_on_a_task_is_scored_in_its_chat_format(tmp_path: Path, make_config) -> None:
    """`dataset: demo_sst2` trains prompt/completion SFT; its run folder is scored through the same template,
    with the adapter loaded on the base model named in the run's config."""
    config = make_config(tmp_path / "run", "lora", dataset="demo_sst2", max_steps=3, save_steps=100)
    run_sft(parse_args(config))
    flags = ["--task", "demo_sst2", "--max_samples", "8"]
    assert main(["eval", str(tmp_path / "run"), *flags]) == 0
    tuned, tuned_predictions = results(tmp_path / "run" / "eval", "demo_sst2")
    assert tuned["format"] == "chat" and tuned["template"] == "default" and tuned["model_id"] == "run"
    base_flags = [
        *TINY,
        *flags,
        "--task_format",
        "chat",
        "--template",
        "default",
        "--output_dir",
        str(tmp_path / "base"),
    ]
    assert main(["eval", *base_flags]) == 0
    _, base_predictions = results(tmp_path / "base", "demo_sst2")
    assert [p["scores"] for p in tuned_predictions] != [p["scores"] for p in base_predictions]  # the adapter is on
