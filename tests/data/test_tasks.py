"""The task registry (tasks.json): shipped tasks, demo files, rendering, labels, bad data, SFT use, encoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtune.data import demo_tasks
from llmtune.data.loader import load_conversations
from llmtune.data.task_encoding import encode_choice, encode_generation_prompt
from llmtune.data.tasks import (
    TaskExample,
    get_task,
    label_counts,
    load_task_examples,
    load_tasks,
    sample_demos,
    with_demos,
)
from llmtune.data.templates import get_template
from llmtune.errors import ConfigError, DataError
from llmtune.hparams.data_args import DataArguments

ISSUE_TASKS = ("sst2", "rte", "cb", "boolq", "wic", "wsc", "copa", "multirc", "squad", "drop")


@pytest.fixture(scope="module")
def tasks():
    return load_tasks()


def write_tasks(folder: Path, entries: dict, files: dict[str, str]) -> Path:
    """A dataset folder with a tasks.json, task files and an (empty) dataset_info.json."""
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "tasks.json").write_text(json.dumps(entries), encoding="utf-8")
    (folder / "dataset_info.json").write_text("{}", encoding="utf-8")
    return folder


def test_shipped_tasks_cover_the_issue_with_mezo_prompts(tasks) -> None:
    for name in ISSUE_TASKS:
        assert name in tasks, name
        assert tasks[name].hf_hub_url, name
    assert tasks["sst2"].prompt == "{sentence} It was" and tasks["sst2"].options == [" terrible", " great"]
    assert tasks["rte"].options == ["Yes", "No"] and tasks["cb"].options == ["Yes", "No", "Maybe"]
    assert tasks["cb"].metrics == ["accuracy", "macro_f1"] and tasks["multirc"].metrics == ["accuracy", "f1"]
    assert tasks["squad"].kind == "generation" and tasks["squad"].metrics == ["em", "f1"]
    # A demo task inherits its base's prompt and options but reads its own files.
    assert tasks["demo_sst2"].prompt == tasks["sst2"].prompt and tasks["demo_sst2"].file_name["train"].endswith(
        ".jsonl"
    )


def test_rendering_with_filters_and_maps(tasks) -> None:
    copa = tasks["copa"].example(
        {
            "premise": "The man broke his toe.",
            "question": "cause",
            "choice1": "He dropped it.",
            "choice2": "He ran.",
            "label": 1,
        }
    )
    assert copa.prompt == "The man broke his toe because"
    assert copa.options == [" he dropped it.", " he ran."] and copa.label == 1
    wsc = tasks["wsc"].example({"text": "Sam saw Kim.", "span1_text": "Kim", "span2_text": "He", "label": 0})
    assert 'does the pronoun "he" refer to Kim?' in wsc.prompt
    squad = tasks["squad"].example({"title": "T", "context": "C", "question": "Q?", "answers": {"text": ["a", "b"]}})
    assert squad.prompt.endswith("Question: Q?\nAnswer:") and squad.answers == ["a", "b"] and squad.target == " a"


@pytest.mark.parametrize(("value", "expected"), [(1, 1), (True, 1), ("0", 0), (1.0, 1), ("positive", 1)])
def test_labels_may_be_indices_bools_digits_or_names(tasks, value, expected) -> None:
    assert tasks["sst2"].example({"sentence": "x", "label": value}).label == expected


def test_demo_files_are_shipped_as_generated_and_balanced(tasks) -> None:
    for name in demo_tasks.GENERATORS:
        for split in demo_tasks.SIZES:
            path = demo_tasks.default_data_dir() / demo_tasks.file_name(name, split)
            assert path.read_text(encoding="utf-8") == demo_tasks.to_jsonl(demo_tasks.task_rows(name, split)), (
                "regenerate: python -m llmtune.data.demo_tasks"
            )
    examples, count = load_task_examples(tasks["demo_sst2"], "train")
    assert count.rows == demo_tasks.SIZES["train"] and label_counts(examples) == {0: 128, 1: 128}
    for example in examples:  # the sentiment word decides the label
        words = set(example.prompt.replace(".", " ").split())
        assert bool(words & set(demo_tasks.POSITIVE)) == (example.label == 1)
    squad, _ = load_task_examples(tasks["demo_squad"], "eval")
    for row in demo_tasks.task_rows("demo_squad", "eval"):
        start, text = row["answers"]["answer_start"][0], row["answers"]["text"][0]
        assert row["context"][start : start + len(text)] == text
    assert all(e.answers[0] in e.prompt for e in squad)


def test_missing_column_names_the_file_and_what_was_found(tmp_path: Path) -> None:
    folder = write_tasks(
        tmp_path,
        {"mine": {"base": "sst2", "file_name": {"train": "m.jsonl", "eval": "m.jsonl"}}},
        {"m.jsonl": '{"text": "good", "label": 1}\n'},
    )
    with pytest.raises(DataError) as caught:
        load_task_examples(load_tasks(folder)["mine"], "eval")
    message = str(caught.value)
    assert "m.jsonl: column 'sentence' (used by task 'mine') is missing; columns found: text, label" in message


def test_bad_rows_give_file_and_line_or_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = '{"sentence": "fine", "label": 1}\n{"sentence": "odd", "label": 7}\n{"sentence": null, "label": 0}\n'
    folder = write_tasks(tmp_path, {"mine": {"base": "sst2", "file_name": {"eval": "m.jsonl"}}}, {"m.jsonl": rows})
    task = load_tasks(folder)["mine"]
    with pytest.raises(DataError) as caught:
        load_task_examples(task, "eval")
    assert "m.jsonl:2: row 2: label 'label' is 7, expected 0..1 or one of negative, positive" in str(caught.value)
    assert "(and 1 more bad rows)" in str(caught.value)
    examples, count = load_task_examples(task, "eval", skip_bad_rows=True)
    assert len(examples) == 1 and count.skipped["bad task row"] == 2
    with pytest.raises(DataError, match="has no train file"):
        load_task_examples(task, "train")


def test_bad_task_entries_are_one_line(tmp_path: Path) -> None:
    for entry, message in (
        (
            {"base": "sst2", "file_name": {"eval": "x"}, "optoins": []},
            "unknown key 'optoins' (did you mean 'options'?)",
        ),
        ({"kind": "rank", "prompt": "{x}", "file_name": {"eval": "x"}}, "kind 'rank' is not one of choice, generation"),
        ({"kind": "choice", "prompt": "{x}", "options": ["a"], "label": "y", "file_name": {"eval": "x"}}, "at least 2"),
        ({"base": "sst2", "prompt": "{x|shout}", "file_name": {"eval": "x"}}, "unknown filter 'shout'"),
        ({"base": "nope"}, "base 'nope' is not a task"),
    ):
        write_tasks(tmp_path, {"bad": entry}, {})
        with pytest.raises(DataError) as caught:
            load_tasks(tmp_path)
        assert message in str(caught.value) and "tasks.json: task 'bad'" in str(caught.value)


def test_unknown_task_lists_the_tasks(tasks) -> None:
    with pytest.raises(ConfigError) as caught:
        get_task("sst", tasks)
    assert "did you mean 'sst2'?" in str(caught.value) and "tasks: boolq, cb, copa" in str(caught.value)


def test_a_task_trains_as_sft_through_the_data_pipeline(tmp_path: Path) -> None:
    loaded = load_conversations(DataArguments(dataset="demo_sst2", eval_dataset="demo_rte", max_samples=5))
    first = loaded.train[0]["messages"]
    assert first[0]["content"].endswith(" It was") and first[1]["content"] in ("terrible", "great")
    assert len(loaded.train) == 5 and loaded.eval[0]["messages"][1]["content"] in ("Yes", "No")
    assert [d.name for d in loaded.report.datasets] == ["demo_sst2", "demo_rte"]
    with pytest.raises(ConfigError) as caught:
        load_conversations(DataArguments(dataset="demo_sst"))
    assert "did you mean 'demo_sst2'?" in str(caught.value) and "tasks: " in str(caught.value)


def test_demos_are_seeded_per_example_and_precede_the_prompt() -> None:
    pool = [TaskExample(f"p{i} It was", [" terrible", " great"], i % 2) for i in range(10)]
    assert sample_demos(pool, 3, seed=1, index=4) == sample_demos(pool, 3, seed=1, index=4)
    assert sample_demos(pool, 3, seed=1, index=4) != sample_demos(pool, 3, seed=1, index=5)
    text = with_demos(pool[0], [pool[1], pool[2]])
    assert text == "p1 It was great\n\np2 It was terrible\n\np0 It was"
    with pytest.raises(ConfigError, match="num_demos: 11"):
        sample_demos(pool, 11, seed=1, index=0)


def test_encoding_plain_and_chat(tokenizer) -> None:
    example = TaskExample("The quick brown fox. It was", [" lazy", " quick"], 1)
    plain = encode_choice(tokenizer, example)
    for option, ids in zip(example.options, plain.option_ids, strict=True):
        assert tokenizer.decode(plain.prompt_ids + ids) == example.prompt + option
    cut = encode_choice(tokenizer, example, max_length=6)
    assert cut.option_ids == plain.option_ids and len(cut.prompt_ids) + max(map(len, cut.option_ids)) <= 6
    chat = encode_choice(tokenizer, example, template=get_template("default", tokenizer))
    assert tokenizer.decode(chat.prompt_ids).endswith("It was\nAssistant: ")
    assert tokenizer.decode(chat.option_ids[1]) == "quick"  # stripped, no end-of-turn token scored
    prompt = encode_generation_prompt(tokenizer, TaskExample("Q: hi\nAnswer:", answers=["x"]), max_length=3)
    assert len(prompt) == 3
