"""The command the UI builds says exactly what the form says, for every finetuning type, and nothing more."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from llmtune.arguments import argument_classes, load_run_arguments, parse_args
from llmtune.errors import ConfigError
from llmtune.hparams.parser import parse_cli_overrides
from llmtune.webui import actions
from llmtune.webui.command import argv_for, check_paths, train_config, validated_yaml
from llmtune.webui.fields import field_map, method_groups, preset_values, presets, start_values

# Non-default values for each finetuning type's own options (typed as the dataclasses hold them).
METHOD_VALUES = {
    "full": {},
    "lora": {"lora_rank": 4, "lora_alpha": 16, "lora_dropout": 0.1, "lora_target": "q_proj,v_proj", "use_rslora": True},
    "block": {
        "badam_switch_mode": "ascending",
        "badam_switch_interval": 10,
        "badam_start_block": 1,
        "badam_include_lm_head": True,
    },
    "sparse": {"badam_update_ratio": 0.1, "badam_mask_mode": "scatter", "badam_switch_interval": 5},
    "zo": {"zo_eps": 0.01, "zo_num_queries": 2, "zo_objective": "accuracy", "zo_target": "lora"},
    "adazeta": {"adazeta_alpha": 1.5, "adazeta_max_queries": 4, "loretta_rank": 4, "zo_eps": 0.001},
    "loretta": {"loretta_mode": "reparam", "loretta_rank": 4, "loretta_bottleneck": 16, "loretta_train_norms": False},
}
COMMON = {
    "learning_rate": 0.001,
    "max_steps": 7,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "cutoff_len": 64,
    "max_samples": 10,
    "train_on_prompt": True,
    "output_dir": "saves/my run/--not-a-flag",
}


def form(finetuning_type: str, typed: dict) -> dict:
    values = {**start_values(), "finetuning_type": finetuning_type}
    for key, value in typed.items():
        values[key] = value if isinstance(value, bool) else str(value)
    return values


def attribute(args, key):
    for part in (args.model, args.data, args.finetuning, args.training, *args.methods.values()):
        if hasattr(part, key):
            return getattr(part, key)
    raise AssertionError(key)


def test_methods_are_all_covered():
    assert set(METHOD_VALUES) == set(method_groups())


@pytest.mark.parametrize("finetuning_type", list(METHOD_VALUES))
def test_command_parses_back_to_the_form(finetuning_type):
    typed = {**COMMON, **METHOD_VALUES[finetuning_type]}
    config = train_config(form(finetuning_type, typed))
    argv = argv_for("train", config)
    assert argv[:2] == ["llmtune", "train"] and all(t.startswith("--") and "=" in t for t in argv[2:])

    from_cli = load_run_arguments(argv[2:])
    _, text = validated_yaml(config)
    from_yaml = parse_args(yaml.safe_load(text))
    assert from_cli.given == from_yaml.given
    assert from_cli.finetuning.finetuning_type == finetuning_type
    for key, value in typed.items():
        assert attribute(from_cli, key) == value, key
    # The chosen method's options dataclass is exactly the one the values describe.
    for name in method_groups()[finetuning_type]:
        cls = next(c for c in argument_classes() if c.__name__ == name)
        own = {k: v for k, v in typed.items() if k in {f.name for f in dataclasses.fields(cls)}}
        assert from_cli.methods[[m for m, a in from_cli.methods.items() if type(a) is cls][0]] == cls(**own)


def test_other_methods_options_stay_out_of_the_command():
    values = form("zo", {**COMMON, "lora_rank": "4", "badam_update_ratio": "0.5"})
    config = train_config(values)
    assert "lora_rank" not in config and "badam_update_ratio" not in config
    assert train_config(form("lora", {"lora_rank": "4"}))["lora_rank"] == "4"


def test_fields_and_defaults_come_from_the_dataclasses():
    fields = field_map()
    for cls in argument_classes()[:-1]:  # every llmtune dataclass, all of its fields
        for f in dataclasses.fields(cls):
            if f.init and not f.name.startswith("_"):
                default = None if f.default is dataclasses.MISSING else f.default
                assert fields[f.name].default == default, f.name
                assert fields[f.name].group == cls.__name__
    training = {f.name: f.default for f in dataclasses.fields(argument_classes()[-1])}
    assert fields["learning_rate"].default == training["learning_rate"]  # TRL's SFTConfig default
    assert fields["finetuning_type"].choices[:2] == ("full", "lora")


@pytest.mark.parametrize("name", [n for n in presets() if "tiny" in n])
def test_tiny_presets_give_the_same_run_as_their_yaml(name):
    from llmtune.hparams.parser import read_config_file

    values, extra = preset_values(presets()[name])
    argv = argv_for("train", train_config(values, extra))
    from_ui = load_run_arguments(argv[2:])
    for key, value in read_config_file(presets()[name]).items():
        if key == "do_train":
            continue
        got = attribute(from_ui, key)
        assert got == value or (
            key == "gradient_checkpointing" and from_ui.training.activation_checkpointing == value
        ), key


# ---------------------------------------------------------------------------------------------
# Injection attempts: literal values or one-line errors


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("output_dir", "--deepspeed=/etc/passwd"),
        ("lora_target", "q_proj --trust_remote_code true"),
        ("dataset", "demo_alpaca --max_steps=1"),
        ("template", "default"),
        ("default_system", "x=1 --bf16 true; rm -rf ~ `id` $(id)"),
    ],
)
def test_values_stay_literal(key, value):
    config = train_config({**start_values(), key: value})
    argv = argv_for("train", config)
    _, overrides = parse_cli_overrides(argv[2:])
    assert overrides == config  # no key appears that the form did not set
    assert overrides[key] == value


@pytest.mark.parametrize("value", ["saves/a\n--deepspeed=x", "a\rb", "a\x00b", "a\u2028b", "tab\there"])
def test_line_breaks_and_control_characters_are_refused(value):
    with pytest.raises(ConfigError, match=r"^output_dir: line breaks and control characters"):
        train_config({**start_values(), "output_dir": value})


def test_other_keys_box_refuses_flags_and_line_breaks():
    with pytest.raises(ConfigError, match="not a config key name"):
        train_config(start_values(), "--deepspeed: x")
    with pytest.raises(ConfigError, match="line breaks"):
        train_config(start_values(), 'ddp_timeout: "1\\n--bf16 true"')
    with pytest.raises(ConfigError, match="already set by its own field"):
        train_config(start_values(), "output_dir: elsewhere")
    assert train_config(start_values(), "ddp_timeout: 180000")["ddp_timeout"] == "180000"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("output_dir", "/", "is /, your home"),
        ("output_dir", "~", "is /, your home"),
        ("output_dir", "..", "is /, your home"),
        ("output_dir", "", "output_dir: required"),
        ("model_name_or_path", "./no/such/folder", "is not a folder"),
        ("adapter_name_or_path", "no/such/adapter", "is not a folder"),
        ("deepspeed", "no_such_ds.json", "is not a file"),
    ],
)
def test_paths_are_checked(key, value, message):
    with pytest.raises(ConfigError, match=message):
        check_paths({"output_dir": "saves/x", key: value})


def test_preview_shows_one_line_errors_not_tracebacks():
    command, text, message = actions.preview({**start_values(), "learning_rate": "1e-3 --bf16 true"}, "")
    assert command == "" and text == ""
    assert message.startswith("**error:** learning_rate:") and "\n" not in message
    command, text, message = actions.preview(start_values(), "")
    assert (
        command.startswith("llmtune train --model_name_or_path=llmtune/tiny-llama") and "finetuning_type: lora" in text
    )


def test_the_memory_picture_is_the_estimate_of_every_type_for_the_forms_run():
    from llmtune.train.estimate import estimate_memory, load_estimate_arguments

    values = {**start_values(), "finetuning_type": "block", "per_device_train_batch_size": "4", "cutoff_len": "128"}
    figure, line = actions.memory_picture(values, "", 24)
    found = actions.memory_estimates(values, "")
    assert set(found) == set(method_groups())  # one bar per registered finetuning type
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == list(found)
    assert [t.get_text() for t in axis.get_xticklabels() if t.get_fontweight() == "bold"] == ["block"]
    # each bar's stack is the estimate's weights, gradients, optimizer state and activations, in GB
    stacks = [patch.get_height() for patch in axis.patches]
    parts = len(actions.PARTS)
    for i, name in enumerate(found):
        heights = stacks[i :: len(found)][:parts]
        assert sum(heights) == pytest.approx(found[name].total / 1e9)
    # ... the same numbers llmtune estimate gives for the run
    path = yaml.safe_dump(train_config(values))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "run.yaml"
        config.write_text(path)
        own = estimate_memory(load_estimate_arguments([str(config)]))
    assert found["block"].total == own.total
    assert line == f"block: {own.total / 1e9:.2f} GB (fits)"
    assert any(line_.get_ydata()[0] == 24 for line_ in axis.get_lines())  # the GPU's memory
    # the tiny model under a 24 GB card: the bars fill the axis, the line is said to be far above
    assert axis.get_ylim()[1] < 24 and [t.get_text() for t in axis.texts] == ["GPU 24 GB: far above"]


def test_the_memory_picture_says_what_is_wrong_in_one_line():
    figure, line = actions.memory_picture({**start_values(), "model_name_or_path": "/no/such/model"}, "", 24)
    assert figure is None and line.startswith("**error:**") and "\n" not in line


def test_the_export_tab_merges_a_lora_run_into_its_base(tmp_path, make_config):
    import torch

    from llmtune.hparams import ModelArguments
    from llmtune.model import load_model
    from llmtune.train.run import run_sft

    run = tmp_path / "run"
    run_sft(parse_args(make_config(run, "lora", max_steps=2, learning_rate=5e-2)))
    message = actions.export_run(str(run), str(tmp_path / "merged"), "fp32")
    assert message.startswith("merged into") and str((tmp_path / "merged").resolve()) in message
    from peft import PeftModel

    ids = torch.randint(5, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        merged = load_model(ModelArguments(model_name_or_path=str(tmp_path / "merged")), for_training=False)
        base = load_model(ModelArguments(model_name_or_path="llmtune/tiny-llama"), for_training=False)
        adapted = PeftModel.from_pretrained(base, str(run)).eval()
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=0, atol=1e-4)
    # the same folder again: export never overwrites, and says so in one line
    again = actions.export_run(str(run), str(tmp_path / "merged"), "fp32")
    assert again.startswith("**error:**") and "not empty" in again and "\n" not in again
    assert actions.export_run(str(tmp_path), str(tmp_path / "m2"), "fp32").startswith("**error:** run folder:")


def test_the_chat_tab_streams_what_llmtune_chat_answers():
    import io

    from llmtune.chat import chat_loop, load_chat_model, load_chat_options

    session = actions.ChatSession()
    assert next(session.stream("hi", []))[-1]["content"] == "(load a model first)"
    assert session.load("llmtune/tiny-llama", "", 12).startswith("loaded llmtune/tiny-llama")
    steps = list(session.stream("Name three colours.", []))
    assert len(steps) > 2  # the answer arrives in pieces
    assert all(s[0] == {"role": "user", "content": "Name three colours."} for s in steps)
    answer = steps[-1][-1]["content"]
    # the terminal chat, same model and options, answers the same (greedy)
    options = load_chat_options(["--model_name_or_path", "llmtune/tiny-llama", "--max_new_tokens", "12"])
    model, tokenizer, template = load_chat_model(options)
    history = chat_loop(model, tokenizer, template, options, ["Name three colours."], io.StringIO())
    assert answer == history[-1]["content"]
    # a second turn keeps the first: the prompt generated from is the whole conversation in the chat template
    import llmtune.webui.actions as actions_module
    from llmtune.chat import prompt_ids

    seen, real = [], actions_module.generate

    def recording(model_, tokenizer_, prompts, *args, **kwargs):
        seen.append(prompts[0])
        return real(model_, tokenizer_, prompts, *args, **kwargs)

    actions_module.generate = recording
    try:
        second = list(session.stream("And three more?", steps[-1]))[-1]
    finally:
        actions_module.generate = real
    assert [m["role"] for m in second] == ["user", "assistant", "user", "assistant"]
    assert seen == [prompt_ids(template, tokenizer, second[:3], None)]
    assert session.load("/no/such/model").startswith("**error:**") and session.loaded is None


def test_the_chat_tab_loads_an_adapter_run_on_the_base_it_trained_on(tmp_path, make_config):
    """Issue #21 §3: a run folder holding an adapter, picked as the model, is its base with it applied."""
    from llmtune.train.run import run_sft

    run_sft(parse_args(make_config(tmp_path / "run", "lora", max_steps=2, learning_rate=1e-2)))
    by_run, explicit = actions.ChatSession(), actions.ChatSession()
    message = by_run.load(str(tmp_path / "run"), "", 8)
    assert message.startswith("loaded llmtune/tiny-llama with adapter") and str(tmp_path / "run") in message
    explicit.load("llmtune/tiny-llama", str(tmp_path / "run"), 8)
    assert (
        list(by_run.stream("Reverse the word: map", []))[-1] == list(explicit.stream("Reverse the word: map", []))[-1]
    )
    (tmp_path / "run" / "training_args.yaml").unlink()
    assert "has no training_args.yaml" in actions.ChatSession().load(str(tmp_path / "run"))


def test_the_compare_tab_draws_each_runs_losses_and_tabulates_them(tmp_path, make_config):
    import json

    from llmtune.train.run import run_sft

    for name, lr in (("a", 1e-2), ("b", 1e-4)):
        run_sft(parse_args(make_config(tmp_path / name, "lora", max_steps=3, learning_rate=lr)))
    (tmp_path / "a" / "eval" / "demo_sst2").mkdir(parents=True)
    (tmp_path / "a" / "eval" / "demo_sst2" / "results.json").write_text(json.dumps({"metrics": {"accuracy": 0.75}}))
    figure, table = actions.compare_runs([str(tmp_path / "a"), str(tmp_path / "b")])
    logs = {n: [json.loads(x) for x in (tmp_path / n / "trainer_log.jsonl").read_text().splitlines()] for n in "ab"}
    by_step, by_time = figure.axes
    for line, name in zip(by_step.get_lines(), "ab", strict=True):
        losses = [r["loss"] for r in logs[name] if "loss" in r and "current_steps" in r]
        assert list(line.get_ydata()) == losses and line.get_label() == name
    assert [line.get_label() for line in by_time.get_lines()] == ["a", "b"]
    rows = table.splitlines()
    assert "demo_sst2: accuracy" in rows[0] and rows[2].startswith("| a | 3 |") and "0.75" in rows[2]
    assert rows[3].startswith("| b | 3 |") and rows[3].endswith("|  |")  # b has no eval results
    without_evals = actions.compare_runs([str(tmp_path / "b"), str(tmp_path / "b")])[1].splitlines()
    for found in (rows, without_evals):  # a markdown table: every row has the header's cells
        assert len({row.count("|") for row in found}) == 1, found
    assert actions.compare_runs([str(tmp_path / "a")]) == (None, "pick two runs or more")
    assert actions.compare_runs([str(tmp_path / "a"), str(tmp_path)])[1].startswith("**error:** run folder:")
