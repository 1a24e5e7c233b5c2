"""The curated Train page (issue #21 §1): sections by concern, the two starting points, the model list and
the data preview, checked against the code that trains (no browser; tests/webui/test_browser.py drives it)."""

from __future__ import annotations

import html
import re
from types import SimpleNamespace

import pytest

from llmtune.webui import actions, fields


def test_every_key_is_on_the_page_once_and_a_methods_options_only_in_its_section():
    placed = [f.name for f in fields.train_fields() if fields.section_of(f) == "top"]
    placed += [f.name for members in fields.sections().values() for f in members]
    assert sorted(placed) == sorted(f.name for f in fields.train_fields())  # each key exactly once
    assert set(fields.TOP_KEYS) <= set(placed)  # every key the top names is a real option
    method_sections = set(fields.all_method_groups())
    for section, members in fields.sections().items():
        assert all((f.group in method_sections) == (section in method_sections) for f in members), section
    by_section = {s: {f.name for f in m} for s, m in fields.sections().items()}
    assert {"quantization_bit", "double_quantization"} <= by_section[fields.QUANTISATION]
    assert "deepspeed" in by_section[fields.DISTRIBUTED] and "cache_dir" in by_section[fields.MODEL]


@pytest.mark.parametrize("name", list(fields.STARTING_POINTS))
def test_a_starting_point_takes_the_real_data_when_it_can_and_says_so_when_it_cannot(name, monkeypatch):
    point = fields.STARTING_POINTS[name]
    monkeypatch.setattr(fields, "hub_dataset_cached", lambda repo, cache=None: False)
    monkeypatch.setattr(fields, "hub_reachable", lambda timeout_s=3.0: False)
    values, message = actions.starting_point(name, "llmtune/smollm2-135m")
    assert values["dataset"] == point.fallback and "must be downloaded once" in message and point.fallback in message
    assert values["model_name_or_path"] == "llmtune/smollm2-135m" and values["output_dir"].endswith(name)
    assert values["train_as_classification"] == (name == "classification")
    validated, _ = actions.cmd.validated_yaml(actions.cmd.train_config(values, ""))  # a run the parser accepts
    assert validated.data.dataset == point.fallback

    monkeypatch.setattr(fields, "hub_reachable", lambda timeout_s=3.0: True)  # online: downloaded on first use
    values, message = actions.starting_point(name, "llmtune/smollm2-135m")
    assert values["dataset"] == point.dataset and "on the first run" in message
    monkeypatch.setattr(fields, "hub_reachable", lambda timeout_s=3.0: pytest.fail("a cached dataset needs no probe"))
    monkeypatch.setattr(fields, "hub_dataset_cached", lambda repo, cache=None: True)
    assert actions.starting_point(name, "")[0]["dataset"] == point.dataset


def test_the_model_list_has_the_built_in_models_the_cached_ones_and_earlier_runs(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    (cache / "models--org--cached" / "snapshots" / "abc").mkdir(parents=True)
    (cache / "models--org--cached" / "snapshots" / "abc" / "config.json").write_text("{}")
    (cache / "models--org--partial" / "blobs").mkdir(parents=True)  # an interrupted download: not listed
    monkeypatch.setattr(fields, "_hub_cache", lambda: cache)
    full, adapter, empty = (tmp_path / n for n in ("full", "adapter", "empty"))
    for folder, marker in ((full, "config.json"), (adapter, "adapter_config.json"), (empty, None)):
        folder.mkdir()
        if marker:
            (folder / marker).write_text("{}")
    launches = [SimpleNamespace(kind="train", output_dir=str(f)) for f in (full, adapter, empty)]
    launches.append(SimpleNamespace(kind="eval", output_dir=str(full)))
    monkeypatch.setattr("llmtune.webui.runs.list_launches", lambda: launches)
    assert fields.run_folders() == {"models": [str(full)], "adapters": [str(adapter)]}
    assert fields.model_choices() == ["llmtune/tiny-llama", "llmtune/smollm2-135m", "org/cached", str(full)]


def _marked(text: str) -> str:
    return "".join(re.findall(r"<mark>(.*?)</mark>", text, flags=re.S))


def test_the_sft_preview_shows_the_templated_rows_and_marks_exactly_the_trained_tokens(tmp_path):
    from llmtune.data.loader import load_conversations
    from llmtune.data.processor import build_example
    from llmtune.data.templates import get_template
    from llmtune.model.loader import load_tokenizer

    values = {**fields.start_values(), "dataset": "demo_alpaca", "template": "default", "output_dir": str(tmp_path)}
    shown = actions.preview_data(values, "", rows=2)
    args, _ = actions.cmd.validated_yaml(actions.cmd.train_config(values, ""))
    loaded = load_conversations(args.data)
    tokenizer = load_tokenizer(args.model)
    template = get_template("default", tokenizer)
    rows = re.findall(r'<pre class="data-row">(.*?)</pre>', shown, flags=re.S)
    assert len(rows) == 2 and f"<b>demo_alpaca</b>: {len(loaded.train):,} rows" in shown
    for row, conversation in zip(rows, loaded.train, strict=False):
        ids, labels = build_example(template.encode(tokenizer, conversation, None))
        trained = [t for t, label in zip(ids, labels, strict=True) if label >= 0]
        assert html.unescape(re.sub(r"</?mark>", "", row)) == tokenizer.decode(ids)  # the whole text, templated
        assert html.unescape(_marked(row)) == "".join(tokenizer.decode(trained[a:b]) for a, b in _runs(ids, labels))

    # a cutoff_len inside the rows: what training drops is struck out, never marked as trained
    short = re.findall(
        r'<pre class="data-row">(.*?)</pre>',
        actions.preview_data({**values, "cutoff_len": "12"}, "", rows=2),
        flags=re.S,
    )
    for row, conversation in zip(short, loaded.train, strict=False):
        ids, labels = build_example(template.encode(tokenizer, conversation, None))
        assert len(ids) > 12  # the cut falls inside the row
        kept, kept_labels = ids[:12], labels[:12]
        trained = [t for t, label in zip(kept, kept_labels, strict=True) if label >= 0]
        assert html.unescape(_marked(row)) == "".join(
            tokenizer.decode(trained[a:b]) for a, b in _runs(kept, kept_labels)
        )
        assert html.unescape("".join(re.findall(r"<del>(.*?)</del>", row, flags=re.S))) == tokenizer.decode(ids[12:])


def _runs(ids, labels):
    """(start, end) offsets into the trained tokens of each run of consecutive trained positions."""
    spans, count, start = [], 0, None
    for label in labels:
        if label >= 0 and start is None:
            start = count
        if label >= 0:
            count += 1
        elif start is not None:
            spans.append((start, count))
            start = None
    return spans + ([(start, count)] if start is not None else [])


def test_the_classification_preview_shows_prompts_and_marks_the_gold_option(tmp_path):
    from llmtune.data.tasks import load_task_examples, load_tasks

    values = {**fields.start_values(), "dataset": "demo_sst2", "train_as_classification": True}
    shown = actions.preview_data({**values, "output_dir": str(tmp_path)}, "", rows=3)
    examples, count = load_task_examples(load_tasks()["demo_sst2"], "train")
    assert f"<b>demo_sst2</b>: {count.rows:,} rows" in shown
    prompts = [html.unescape(p) for p in re.findall(r'<pre class="data-row">(.*?)</pre>', shown, flags=re.S)]
    assert prompts == [e.prompt for e in examples[:3]]
    gold = [html.unescape(g) for g in re.findall(r"<mark>(.*?)</mark>", shown)]
    assert gold == [e.options[e.label] for e in examples[:3]]


def test_the_preview_says_what_is_wrong_in_one_line(tmp_path):
    values = {**fields.start_values(), "dataset": "no_such_set", "output_dir": str(tmp_path)}
    shown = actions.preview_data(values, "")
    assert shown.startswith("<p><b>error:</b> dataset:") and "no_such_set" in shown and "\n" not in shown
    values = {**values, "dataset": "demo_alpaca", "train_as_classification": True}
    assert "needs choice tasks" in actions.preview_data(values, "")


def test_the_pictures_docs_webui_shows_are_committed():
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (docs / "webui.md").read_text(encoding="utf-8"))
    assert len(shown) >= 5 and all((docs / path).is_file() for path in shown), shown
