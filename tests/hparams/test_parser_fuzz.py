"""Property tests for the config parser: any input parses or raises one line of llmtune's own errors.

Three kinds of input, each from a user who made a mistake we did not think of: the bytes of a
config file, a config dict whose values have the wrong type or range, and the command line. The
promise checked is the one ``llmtune.errors`` makes: the call returns normally or raises an
``LlmtuneError`` whose message is one non-empty line; a traceback from inside PyYAML,
transformers or pathlib fails the test. Only the parse functions are called: they load no model.

The number of examples is bounded so the file runs in seconds in CI. ``HYPOTHESIS_PROFILE=ci``
(and the default) keep that bound; ``HYPOTHESIS_PROFILE=thorough`` runs 20 times as many.
"""

from __future__ import annotations

import dataclasses
import math
import os
import string
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, currently_in_test_context, example, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st

from llmtune.arguments import argument_classes, load_run_arguments, parse_args
from llmtune.errors import LlmtuneError
from llmtune.hparams.parser import RunArguments, parse_cli_overrides, read_config_file

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True, print_blob=True)
settings.register_profile("thorough", parent=settings.get_profile("default"))
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
settings.load_profile(PROFILE)
SCALE = 20 if PROFILE == "thorough" else 1

HINTS = {
    f.name: typing.get_type_hints(cls)[f.name]
    for cls in argument_classes()
    for f in dataclasses.fields(cls)
    if f.init and not f.name.startswith("_")
}
KEYS = sorted(HINTS)
BASE_KEYS = ("model_name_or_path", "dataset", "output_dir")
OUTPUT_DIR = str(Path(tempfile.gettempdir()) / "llmtune-parser-fuzz")  # parse_args never creates or writes it


def base_config() -> dict[str, typing.Any]:
    """A config ``parse_args`` accepts: the tiny model on the shipped demo data."""
    return {"model_name_or_path": "llmtune/tiny-llama", "dataset": "demo_alpaca", "output_dir": OUTPUT_DIR}


def event(name: str) -> None:
    """Count outcomes for ``--hypothesis-show-statistics`` (outside a property there is nothing to count)."""
    if currently_in_test_context():
        hypothesis_event(name)


def parses_or_refuses(call: typing.Callable[[], typing.Any]) -> typing.Any:
    """Run ``call``; return its result, or None when it raised an ``LlmtuneError`` of one line.

    Any other exception propagates and fails the property.
    """
    try:
        result = call()
    except LlmtuneError as error:
        event(f"refused: {type(error).__name__}")  # see --hypothesis-show-statistics
        message = str(error)
        assert message.strip(), f"{type(error).__name__} with an empty message"
        assert len(message.splitlines()) == 1, f"{type(error).__name__} message spans lines: {message!r}"
        return None
    event("accepted")
    return result


# ---------------------------------------------------------------------------------------------
# Values of every type a YAML file or a Python caller can produce

# Strings that mean something to some field (names, paths, numbers as text) or to YAML itself.
MEANINGFUL_TEXT = [
    *"none None null ~ true False yes off 0 1 -1 1e-4 1.5 nan inf -inf 1e999 [[ a,b,,c".split(),
    *"auto sdpa fa2 eager lora full block zo sft dpo default llama3 chatml alpaca sharegpt".split(),
    *"demo_alpaca demo_sharegpt llmtune/tiny-llama llmtune/nope org/name ./missing ../a/b a/b/c / /dev/null".split(),
    *"wandb tensorboard all cosine constant epoch steps no adamw_torch adafactor full_shard ddp nccl".split(),
    *"ds_config.json ~no_such_user_llmtune/x".split(),
    "",
    " ",
    "[1, 2",
    "{a: 1",
    "[1, 2]",
    "{a: 1}",
    "9" * 5000,  # past Python's 4300-digit int parsing limit
    "x" * 300,  # past the file system's 255-byte name limit
    "/" + "x" * 300,
    "./a\x00b",
    "a\x00b",
    "line\nbreak",
    "./line\nbreak",
    "tab\there",
    "\u2028",
]


def scalars() -> st.SearchStrategy:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**40), max_value=2**40),
        st.sampled_from([0, 1, -1, 2**63, -(2**63), 10**400, -(10**400)]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([math.nan, math.inf, -math.inf, 1e-300, -0.0, 0.5, 1.0]),
        st.text(max_size=20),
        st.sampled_from(MEANINGFUL_TEXT),
    )


def values() -> st.SearchStrategy:
    """Scalars, and lists and dicts of them nested a few levels deep."""
    return st.recursive(
        scalars(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=6,
    )


def config_keys() -> st.SearchStrategy:
    """Mostly real keys (an unknown key is refused before any value is looked at); sometimes a typo or any text."""
    typo = st.sampled_from(KEYS).map(lambda key: key[:-1] or "x")
    return st.one_of(*[st.sampled_from(KEYS)] * 8, typo, st.text(max_size=12))


# ---------------------------------------------------------------------------------------------
# (b) dicts: the valid base config with some keys changed, added or removed


@settings(max_examples=300 * SCALE)
@given(
    changes=st.dictionaries(config_keys(), values(), max_size=4),
    dropped=st.lists(st.sampled_from(BASE_KEYS), max_size=1),
    for_training=st.booleans(),
)
@example(changes={}, dropped=[], for_training=True)
@example(changes={"accelerator_config": 0}, dropped=[], for_training=False)  # transformers opened a file '0'
def test_any_config_dict_parses_or_raises_one_line(changes, dropped, for_training) -> None:
    config = base_config()
    for key in dropped:
        config.pop(key, None)
    config.update(changes)
    args = parses_or_refuses(lambda: parse_args(config, for_training=for_training))
    if args is not None:
        assert isinstance(args, RunArguments)
        assert set(args.given) == set(config)


@settings(max_examples=400 * SCALE)
@given(key=st.sampled_from(KEYS), value=scalars())
@example(key="learning_rate", value=10**400)  # int -> float overflowed
@example(key="accelerator_config", value="none")  # FileNotFoundError from transformers
@example(key="deepspeed", value="ds_config.json")  # deepspeed is not installed
@example(key="adapter_name_or_path", value=10**400)  # a name too long for the file system
@example(key="model_name_or_path", value="/" + "x" * 300)
@example(key="model_name_or_path", value="~no_such_user_llmtune/x")  # expanduser: RuntimeError
@example(key="model_name_or_path", value="./a\x00b")  # resolve: embedded null byte
@example(key="model_name_or_path", value="./line\nbreak")  # the folder name once made two lines
def test_every_key_takes_any_scalar_or_refuses_it(key, value) -> None:
    # One key at a time, so every field sees nulls, huge numbers, nan and odd strings.
    config = {**base_config(), key: value}
    parses_or_refuses(lambda: parse_args(config))


def test_the_base_config_parses() -> None:
    # The properties above would pass vacuously if the base config were itself refused.
    args = parse_args(base_config())
    assert args.model.model_name_or_path == "llmtune/tiny-llama"
    assert args.training.output_dir == OUTPUT_DIR


# ---------------------------------------------------------------------------------------------
# (a) config files: YAML text of every kind, and bytes that are not text at all

# Values that exercise PyYAML's constructors: Python tags, bad explicit tags, numbers past the
# int/float limits, impossible dates, anchors, and nesting deeper than the composer's recursion.
YAML_VALUES = [
    "!!python/object/apply:os.system ['echo pwned']",
    "!!python/name:os.system",
    "!!python/object:collections.OrderedDict {}",
    "!!binary aGVsbG8=",
    "!!binary not-base64!",
    "!!set {a, b}",
    "!!omap [a: 1, b: 2]",
    "!!pairs [a: 1]",
    "!!int abc",
    "!!float abc",
    "!!bool maybe",
    "!!timestamp nope",
    "!!null x",
    "!!str 12",
    "!!map [1]",
    "!!seq {a: 1}",
    "!custom tag",
    "2024-01-01",
    "2024-13-45",
    "2001-12-14t21:59:43.10-05:00",
    "1e999",
    "-1e999",
    ".nan",
    ".inf",
    "0x1F",
    "0o17",
    "0b101",
    "1_000",
    "190:20:30",
    "9" * 5000,
    "-" + "9" * 5000,
    "1" + "0" * 400,
    "&a [1, 2]",
    "*undefined",
    "[1, [2, [3, {a: b}]]]",
    "{a: {b: {c: [1, 2]}}}",
    "'unterminated",
    '"unterminated',
    '"bad escape \\q"',
    "[1, 2",
    "{a: 1",
    "|\n  block\n  text",
    ">\n  folded",
    "\t tab",
    "@reserved",
    "`backtick",
    "? complex",
    "- item",
    "~",
    "",
    "[" * 1000 + "]" * 1000,
    "{a: " * 300 + "1" + "}" * 300,
]
# Whole-document fragments: several documents, directives, non-mapping roots, odd keys.
YAML_DOCUMENTS = [
    "---\na: 1\n---\nb: 2",
    "%YAML 1.1\n---\nstage: sft",
    "%TAG ! tag:example.com,2000:\n---\n",
    "- 1\n- 2",
    "just a string",
    "\ufeffstage: sft",
    "<<: {stage: sft}",
    "<<: 1",
    "<<: [1]",
    "base: &b {stage: sft}\nother:\n  <<: *b",
    "? [1, 2]\n: x",
    "[a, b]: c",
    "1: x",
    "null: x",
    "2024-01-01: x",
    "stage: sft\nstage: sft",
    "a:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200)),
    "a: &x [*x]",
    "...",
    "--- |\n  text",
    "key: value\n  bad indent: 1",
    "key: 'a'b'",
]


def yaml_lines() -> st.SearchStrategy:
    keys = st.one_of(st.sampled_from(KEYS), st.text(alphabet=string.ascii_letters + "_-. ", max_size=10))
    value_text = st.one_of(
        st.sampled_from(YAML_VALUES), st.text(max_size=20), scalars().map(lambda v: yaml.safe_dump(v).strip())
    )
    line = st.builds(lambda key, value: f"{key}: {value}", keys, value_text)
    return st.lists(st.one_of(line, line, st.sampled_from(YAML_DOCUMENTS)), max_size=6).map("\n".join)


def config_files() -> st.SearchStrategy:
    """The bytes of a config file: YAML-ish text, dumped configs, random text or random bytes."""
    dumped = st.dictionaries(config_keys(), values(), max_size=4).map(
        lambda changes: yaml.safe_dump({**base_config(), **changes}, allow_unicode=True)
    )
    text = st.one_of(yaml_lines(), dumped, st.text(max_size=80))
    return st.one_of(text.map(lambda t: t.encode("utf-8", errors="surrogatepass")), st.binary(max_size=80))


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    """One file every example overwrites (module-scoped: Hypothesis reruns the test body, not the fixture)."""
    return tmp_path_factory.mktemp("config") / "config.yaml"


@settings(max_examples=300 * SCALE)
@given(content=config_files())
@example(content=b"\xff\xfe\x00bad")
@example(content=b"stage: !!python/object/apply:os.system ['echo pwned']")
def test_any_config_file_reads_or_raises_one_line(config_path, content) -> None:
    path = config_path
    path.write_bytes(content)
    config = parses_or_refuses(lambda: read_config_file(path))
    if config is not None:
        assert isinstance(config, dict)
        assert all(isinstance(key, str) for key in config)
    # The whole `llmtune train config.yaml` path; output_dir from the command line wins.
    parses_or_refuses(lambda: load_run_arguments([str(path), "--output_dir", OUTPUT_DIR]))


@pytest.mark.parametrize("value", YAML_VALUES, ids=lambda value: repr(value[:24]))
def test_every_yaml_value_reads_or_raises_one_line(tmp_path, value) -> None:
    # The hand-picked constructor cases, each once, so none depends on the random draw.
    path = tmp_path / "config.yaml"
    path.write_text(f"model_name_or_path: llmtune/tiny-llama\nlearning_rate: {value}\n", encoding="utf-8")
    config = parses_or_refuses(lambda: read_config_file(path))
    if config is not None:
        parses_or_refuses(lambda: parse_args({**base_config(), **config}))


# ---------------------------------------------------------------------------------------------
# (c) the command line


def cli_tokens() -> st.SearchStrategy:
    keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
    token = st.one_of(
        keys.map(lambda key: f"--{key}"),
        keys.map(lambda key: f"--{key.replace('_', '-')}"),
        st.builds(lambda key, value: f"--{key}={value}", keys, st.sampled_from(MEANINGFUL_TEXT)),
        st.builds(lambda key, value: f"{key}={value}", keys, st.sampled_from(MEANINGFUL_TEXT)),
        st.sampled_from(MEANINGFUL_TEXT),
        st.sampled_from(["--", "-", "--=", "--=x", "=", "==", "-x", "config.yaml", "--help"]),
        st.text(max_size=12),
    )
    return st.lists(token, max_size=6)


@settings(max_examples=300 * SCALE)
@given(tokens=cli_tokens())
@example(tokens=["--"])
@example(tokens=["a.yaml", "b.yaml"])
@example(tokens=["x" * 300])  # a config path too long for the file system
@example(tokens=["--accelerator_config=none"])
def test_any_command_line_parses_or_raises_one_line(tokens) -> None:
    split = parses_or_refuses(lambda: parse_cli_overrides(tokens))
    if split is not None:
        config_path, overrides = split
        assert config_path is None or config_path in tokens
        assert all(isinstance(key, str) for key in overrides)
    base = ["--model_name_or_path", "llmtune/tiny-llama", "--dataset", "demo_alpaca", "--output_dir", OUTPUT_DIR]
    parses_or_refuses(lambda: load_run_arguments(base + tokens))
