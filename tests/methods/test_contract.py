"""A finetuning type is one folder and one registry line (issue #20): a toy method, written here as a
package of its own and registered with one ``register`` call, appears in ``llmtune train --help``, the
compatibility table, the web UI's choices (with only its own options) and trains, with no other edit."""

from __future__ import annotations

import textwrap

import pytest
import torch

from llmtune.arguments import parse_args
from llmtune.methods import METHODS, Method, register
from llmtune.model import load_model
from llmtune.train.run import run_sft

FILES = {
    "__init__.py": "",
    "config.py": """
        from dataclasses import dataclass, field

        @dataclass
        class ToyArguments:
            toy_keyword: str = field(default="norm", metadata={"help": "Toy: train the weights whose name has this."})
    """,
    "model.py": """
        def prepare(model, args):
            keyword = args.methods["toy"].toy_keyword
            for name, param in model.named_parameters():
                param.requires_grad_(keyword in name)
            return model
    """,
}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    folder = tmp_path / "llmtune_toy_method"
    folder.mkdir()
    for name, text in FILES.items():
        (folder / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    from llmtune_toy_method.config import ToyArguments

    register(
        Method(
            "toy", "a toy: trains the weights named by toy_keyword", ToyArguments, "llmtune_toy_method.model:prepare"
        )
    )
    _clear_webui_caches()
    yield
    METHODS.pop("toy")
    _clear_webui_caches()


def _clear_webui_caches():
    from llmtune.webui import fields

    for function in (fields.train_fields, fields.field_map, fields.method_groups):
        function.cache_clear()


def test_the_toy_method_is_in_the_help(toy, capsys):
    from llmtune.cli import main

    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "toy (a toy: trains the weights named by toy_keyword)" in text
    assert "ToyArguments: --toy_keyword (default: 'norm')" in text


def test_the_toy_method_is_in_the_compatibility_table(toy):
    from llmtune import compat

    assert "toy" in compat.finetuning_types()
    assert "`toy`" in compat.render_markdown()
    assert compat.check_config({"finetuning_type": "toy"}, world_size=1).finetuning_type == "toy"


def test_the_web_ui_offers_the_toy_method_with_only_its_options(toy):
    from llmtune.webui import fields

    assert "toy" in fields.field_map()["finetuning_type"].choices
    assert fields.method_groups()["toy"] == ("ToyArguments",)
    toy_field, lora_field = fields.field_map()["toy_keyword"], fields.field_map()["lora_rank"]
    assert fields.applies(toy_field, "toy") and not fields.applies(toy_field, "lora")
    assert not fields.applies(lora_field, "toy")


def test_the_toy_method_trains_what_its_prepare_chose(toy, tmp_path, make_config):
    config = make_config(tmp_path / "out", "toy", max_steps=3, learning_rate=1e-2, toy_keyword="norm")
    before = {n: p.detach().clone() for n, p in load_model(parse_args(config).model).named_parameters()}
    model = run_sft(parse_args(config)).model
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("norm" in n for n in changed)
