"""The dataset registry: LLaMA-Factory's schema, defaults, unsupported entries, folder fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import llmtune
from llmtune.data import DatasetAttr, check_datasets, load_registry, resolve_dataset_dir
from llmtune.data.loader import load_conversations
from llmtune.errors import ConfigError, DataError, DataFileNotFoundError
from llmtune.hparams.data_args import DataArguments

REPO_DATA = Path(llmtune.__file__).parents[2] / "data"


def _registry(tmp_path: Path, entries: dict) -> Path:
    (tmp_path / "dataset_info.json").write_text(json.dumps(entries), encoding="utf-8")
    return tmp_path


def test_alpaca_defaults_follow_llamafactory(tmp_path: Path) -> None:
    attr = load_registry(_registry(tmp_path, {"a": {"file_name": "a.json"}}))["a"]
    assert attr.formatting == "alpaca"
    assert attr.split == "train"
    assert attr.columns == {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "system": "system",
        "history": "history",
    }
    assert attr.required_roles() == ("prompt", "response")


def test_sharegpt_defaults_and_declared_overrides(tmp_path: Path) -> None:
    entry = {
        "file_name": "s.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }
    attr = load_registry(_registry(tmp_path, {"s": entry}))["s"]
    assert attr.columns == {"messages": "messages", "system": "system", "tools": "tools"}
    assert attr.tags["role_tag"] == "role" and attr.tags["user_tag"] == "user"
    assert attr.tags["observation_tag"] == "observation"  # defaults kept for tags not given
    assert attr.tags["system_tag"] == "system"


def test_declared_optional_columns_become_required(tmp_path: Path) -> None:
    entry = {"file_name": "a.json", "columns": {"prompt": "q", "response": "a", "system": "sys"}}
    attr = load_registry(_registry(tmp_path, {"a": entry}))["a"]
    assert attr.columns["prompt"] == "q" and attr.columns["query"] == "input"
    assert attr.required_roles() == ("prompt", "response", "system")


def test_hub_entry_fields(tmp_path: Path) -> None:
    entry = {"hf_hub_url": "org/set", "subset": "en", "split": "test", "folder": "python", "ms_hub_url": "x/y"}
    attr = load_registry(_registry(tmp_path, {"h": entry}))["h"]
    assert (attr.hf_hub_url, attr.subset, attr.split, attr.folder) == ("org/set", "en", "test", "python")
    assert attr.unsupported is None


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"file_name": "d.json", "ranking": True, "formatting": "sharegpt"}, "ranking: true"),
        ({"ms_hub_url": "org/set"}, "neither file_name nor hf_hub_url"),
        ({"file_name": "m.json", "formatting": "sharegpt", "columns": {"images": "images"}}, "multimodal"),
        ({"file_name": "d.json", "formatting": "openai"}, "formatting: 'openai' is not one of alpaca, sharegpt"),
    ],
)
def test_unsupported_entries_load_but_refuse_use(tmp_path: Path, entry: dict, words: str) -> None:
    folder = _registry(tmp_path, {"bad": entry, "good": {"file_name": "g.json"}})
    registry = load_registry(folder)  # one odd entry never breaks the registry
    assert isinstance(registry["bad"], DatasetAttr)
    with pytest.raises(ConfigError, match=words) as caught:
        check_datasets(DataArguments(dataset="bad", dataset_dir=str(folder)))
    assert "dataset 'bad'" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_ranking_dataset_is_not_supported_for_sft(tmp_path: Path) -> None:
    folder = _registry(tmp_path, {"dpo": {"file_name": "dpo.json", "ranking": True}})
    with pytest.raises(ConfigError, match="not supported"):
        check_datasets(DataArguments(dataset="dpo", dataset_dir=str(folder)))


def test_unknown_dataset_lists_names_and_suggests(tmp_path: Path) -> None:
    folder = _registry(tmp_path, {"demo_alpaca": {"file_name": "a.json"}, "other": {"file_name": "b.json"}})
    with pytest.raises(ConfigError) as caught:
        check_datasets(DataArguments(dataset="demo_alpacca", dataset_dir=str(folder)))
    message = str(caught.value)
    assert "'demo_alpacca'" in message
    assert "did you mean 'demo_alpaca'?" in message
    assert "available: demo_alpaca, other" in message


def test_missing_registry_file(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError) as caught:
        load_registry(tmp_path)
    assert str(caught.value) == (
        f"dataset_dir: '{tmp_path}' has neither dataset_info.json nor tasks.json; "
        "one of them must list the datasets (or tasks) by name"
    )


def test_a_folder_with_only_tasks_json_trains_on_its_tasks(tmp_path: Path) -> None:
    rows = [{"text": f"row {i}", "gold": i % 2} for i in range(6)]
    (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    task = {"kind": "choice", "prompt": "{text} is", "options": [" odd", " even"], "label": "gold"}
    task["file_name"] = {"train": "mine.jsonl", "eval": "mine.jsonl"}
    (tmp_path / "tasks.json").write_text(json.dumps({"mine": task}), encoding="utf-8")
    assert load_registry(tmp_path) == {}  # no datasets of its own, only tasks
    loaded = load_conversations(DataArguments(dataset="mine", dataset_dir=str(tmp_path), template="default"))
    assert [c["messages"][1]["content"] for c in loaded.train] == ["odd", "even"] * 3
    assert loaded.train[1]["messages"][0]["content"] == "row 1 is"
    assert [(d.name, d.rows) for d in loaded.report.datasets] == [("mine", 6)]


def test_malformed_registry_reports_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "dataset_info.json").write_text('{\n  "a": {"file_name": "a.json",}\n}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"dataset_info\.json:2:\d+: invalid JSON"):
        load_registry(tmp_path)


def test_resolve_dataset_dir_prefers_the_given_folder(tmp_path: Path) -> None:
    assert resolve_dataset_dir(tmp_path) == tmp_path


def test_resolve_missing_custom_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match="does not exist"):
        resolve_dataset_dir(tmp_path / "nope")


def test_default_folder_falls_back_to_shipped_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./data here
    resolved = resolve_dataset_dir("data")
    assert resolved.resolve() == REPO_DATA.resolve()
    (tmp_path / "data").mkdir()
    assert resolve_dataset_dir("data") == Path("data")  # a local ./data wins


def test_shipped_registry_has_the_demo_and_hub_datasets() -> None:
    registry = load_registry(REPO_DATA)
    assert registry["demo_alpaca"].file_name == "demo_alpaca.json"
    assert registry["demo_alpaca"].formatting == "alpaca"
    assert registry["demo_sharegpt"].file_name == "demo_sharegpt.json"
    assert registry["demo_sharegpt"].formatting == "sharegpt"
    assert registry["demo_sharegpt"].tags["user_tag"] == "human"
    assert registry["alpaca_gpt4_en"].hf_hub_url == "llamafactory/alpaca_gpt4_en"
    assert all(attr.unsupported is None for attr in registry.values())


def test_llamafactory_registry_loads(llamafactory_data: Path) -> None:
    registry = load_registry(llamafactory_data)
    assert len(registry) > 50
    assert registry["alpaca_en_demo"].file_name == "alpaca_en_demo.json"
    assert registry["dpo_en_demo"].unsupported  # ranking: true
    assert registry["glaive_toolcall_en_demo"].columns["tools"] == "tools"
