"""``llmtune chat``: talk to a model (and its adapter) in the terminal, as LLaMA-Factory's ``chat`` does.

    llmtune chat --model_name_or_path llmtune/smollm2-135m [--adapter_name_or_path saves/lora]
    llmtune chat saves/smollm2-lora/run.yaml       # a config file: its model, adapter and template

Each line typed is a user message; the answer is generated greedily (``temperature`` > 0 samples)
and the conversation is kept, formatted with the model's chat template, until ``clear``. ``exit``
(or end of input) quits. Keys: ``model_name_or_path``, ``adapter_name_or_path``, ``template``
(default: the tokenizer's own chat template, else ``default``), ``system``, ``max_new_tokens``,
``temperature``, and the model-loading keys of ``llmtune train`` (``flash_attn``, ...). Other keys
of a training config (dataset, learning rate...) are ignored, so a run's config can be passed as is.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from llmtune.errors import ConfigError
from llmtune.hparams.model_args import ModelArguments

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmtune.data.template import Template

EXIT_WORDS = ("exit", "quit")
CLEAR_WORD = "clear"
PROMPT = "User: "


@dataclass
class ChatOptions:
    """What ``llmtune chat`` reads from its config and flags besides the model arguments."""

    template: str | None = None
    system: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    model: ModelArguments = field(default_factory=ModelArguments)


def load_chat_options(tokens: list[str]) -> ChatOptions:
    """``llmtune chat`` argv -> validated :class:`ChatOptions` (nothing loaded yet)."""
    from llmtune.hparams.parser import read_file_and_flags
    from llmtune.hparams.truth import is_true
    from llmtune.model import check_model_args

    config: dict[str, Any] = read_file_and_flags(tokens)
    model_keys = {f.name for f in dataclasses.fields(ModelArguments)}
    model = ModelArguments(**{k: str(v) for k, v in config.items() if k in model_keys and v is not None})
    for key in ("trust_remote_code", "use_fast_tokenizer", "low_cpu_mem_usage"):
        if key in config:
            setattr(model, key, is_true(str(config[key])))
    if not model.model_name_or_path:
        raise ConfigError("model_name_or_path: required (a saved model folder, a hub id, or llmtune/smollm2-135m)")
    options = ChatOptions(model=model, template=config.get("template"), system=config.get("system"))
    options.max_new_tokens = _number(config, "max_new_tokens", int, options.max_new_tokens, minimum=1)
    options.temperature = _number(config, "temperature", float, options.temperature, minimum=0)
    check_model_args(model)
    return options


def _number(config: dict, key: str, kind: type, default: float, minimum: float) -> Any:
    if key not in config:
        return default
    try:
        value = kind(config[key])
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {config[key]!r} is not a number; give a {kind.__name__} >= {minimum}") from None
    if value < minimum:
        raise ConfigError(f"{key}: {value} is too small; give a {kind.__name__} >= {minimum}")
    return value


def load_chat_model(options: ChatOptions) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Template]:
    """The model in eval mode (with its adapters applied), its tokenizer and the chat template."""
    from llmtune.data import get_template
    from llmtune.eval.config import EvalRun
    from llmtune.eval.model import load_eval_model
    from llmtune.hparams.data_args import DataArguments
    from llmtune.hparams.eval_args import EvalArguments

    run = EvalRun(model=options.model, data=DataArguments(), eval=EvalArguments(), tasks=[])
    model, tokenizer = load_eval_model(run)
    name = options.template or ("auto" if getattr(tokenizer, "chat_template", None) else "default")
    return model, tokenizer, get_template(name, tokenizer)


def prompt_ids(
    template: Template, tokenizer: PreTrainedTokenizerBase, history: list[dict], system: str | None
) -> list[int]:
    """Token ids of the conversation ``history`` (ending with a user message), up to where the answer begins."""
    example = {"system": system or "", "messages": [*history, {"role": "assistant", "content": ""}]}
    pairs = template.encode(tokenizer, example)
    ids: list[int] = []
    for prompt, response in pairs[:-1]:
        ids += prompt + response
    return ids + pairs[-1][0]


def chat_loop(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    options: ChatOptions,
    lines: Iterable[str],
    out: IO[str],
) -> list[dict]:
    """Answer each line of ``lines`` in turn, writing to ``out``; return the conversation at the end."""
    from llmtune.eval.model import generate, stop_token_ids

    stops = stop_token_ids(model, tokenizer, template)
    history: list[dict] = []
    out.write(
        f"Chat with {options.model.model_name_or_path}; '{CLEAR_WORD}' forgets the conversation, "
        f"'{EXIT_WORDS[0]}' quits.\n"
    )
    out.write(PROMPT)
    out.flush()
    for line in lines:
        text = line.strip()
        if text.lower() in EXIT_WORDS:
            break
        if text.lower() == CLEAR_WORD:
            history = []
            out.write("(conversation cleared)\n" + PROMPT)
            out.flush()
            continue
        if text:
            history.append({"role": "user", "content": text})
            ids = prompt_ids(template, tokenizer, history, options.system)
            answer = generate(model, tokenizer, [ids], options.max_new_tokens, stops, options.temperature)[0].strip()
            history.append({"role": "assistant", "content": answer})
            out.write(f"Assistant: {answer}\n")
        out.write(PROMPT)
        out.flush()
    out.write("\n")
    return history


def run_chat(tokens: list[str], lines: Iterable[str] | None = None, out: IO[str] | None = None) -> list[dict]:
    """``llmtune chat``: validate, load, then chat over ``lines`` (default: standard input)."""
    options = load_chat_options(tokens)
    model, tokenizer, template = load_chat_model(options)
    return chat_loop(model, tokenizer, template, options, sys.stdin if lines is None else lines, out or sys.stdout)
