"""Load the model to evaluate, its tokenizer and its chat template; generate from batches of prompts."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from llmtune.data import get_template
from llmtune.errors import ConfigError
from llmtune.model import load_model, load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmtune.data.template import Template
    from llmtune.eval.config import EvalRun

logger = logging.getLogger("llmtune")


def load_eval_model(run: EvalRun) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (with its adapters, if any) in eval mode on the best device, and its tokenizer."""

    tokenizer = load_tokenizer(run.model)
    model = load_model(run.model, for_training=False)
    adapters = [a.strip() for a in (run.model.adapter_name_or_path or "").split(",") if a.strip()]
    if adapters:
        from peft import PeftModel

        for index, adapter in enumerate(adapters):
            _register_peft_type(adapter)
            model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
            if index < len(adapters) - 1:
                model = model.merge_and_unload()
        logger.info("loaded adapter %s", ", ".join(adapters))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    return model, tokenizer


def _register_peft_type(adapter: str) -> None:
    """Make PEFT know an adapter type llmtune defines (e.g. LORETTA) before loading it.

    llmtune's own PEFT methods register themselves (``register_peft_method``) when their
    ``llmtune.methods.<name>.tuner`` package is imported; import it for the adapter's ``peft_type``.
    """
    import importlib
    import json
    from pathlib import Path

    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        return
    peft_type = str(json.loads(config.read_text(encoding="utf-8")).get("peft_type", ""))
    if not peft_type or peft_type in PEFT_TYPE_TO_CONFIG_MAPPING:
        return
    try:
        importlib.import_module(f"llmtune.methods.{peft_type.lower()}.tuner")
    except ModuleNotFoundError:
        raise ConfigError(
            f"adapter_name_or_path: '{adapter}' is a {peft_type} adapter, which neither PEFT nor llmtune defines"
        ) from None


def resolve_template(run: EvalRun, tokenizer: PreTrainedTokenizerBase) -> Template:
    """The answering model's chat template: an explicit ``template`` (or the training run's), else the
    tokenizer's own ``chat_template`` (``auto``). Never guessed from the model's name."""

    if "template" in run.given:
        return get_template(run.data.template, tokenizer)
    if getattr(tokenizer, "chat_template", None):
        return get_template("auto", tokenizer)
    raise ConfigError(
        f"template: the tokenizer of '{run.model.model_name_or_path}' has no chat template and none was given; "
        "set template: to the one the model was trained with (default, alpaca, llama2, llama3, chatml, qwen, "
        "mistral); llmtune never guesses it from the model's name"
    )


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template | None) -> list[int]:
    """Token ids that end an answer: the model's eos ids, the tokenizer's eos and the template's end of turn."""
    ids = model.generation_config.eos_token_id
    ids = list(ids) if isinstance(ids, list | tuple) else [ids] if ids is not None else []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if template is not None:
        try:
            ids.append(template.eot_id(tokenizer))
        except ConfigError:
            pass
    return list(dict.fromkeys(i for i in ids if i is not None))


def left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of the prompts padded on the left, so that every row ends where
    the model continues it."""
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop_ids: list[int],
    temperature: float = 0.0,
    streamer: Any = None,
) -> list[str]:
    """Continue each prompt (token ids), greedily at temperature 0, and decode the new tokens
    (``streamer``: a transformers streamer that also receives them as they come, for one prompt).

    The prompts are left-padded into one batch; each is cut from the left to leave room for the
    answer within the model's context.
    """
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit:
        keep = max(1, limit - max_new_tokens)
        prompts = [ids[-keep:] for ids in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    input_ids, attention_mask = left_pad(prompts, pad)
    width = input_ids.shape[1]
    device = next(model.parameters()).device
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        max_new_tokens=max_new_tokens,
        pad_token_id=pad,
        eos_token_id=stop_ids,
        streamer=streamer,
        **sampling,
    )
    return tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
