"""Token ids of task examples, for classification training and for scoring.

Two prompt formats:

* ``plain`` (MeZO's): the prompt text as is (with the tokenizer's own leading special tokens, e.g.
  ``<s>``), each option's tokens right after it;
* ``chat``: the prompt as the user turn of a chat ``Template`` and the option (stripped) as the
  assistant's answer, as ``llmtune train`` renders the task for SFT; the end-of-turn token is not
  scored.

An option's ids are cut from the encoding of prompt + option when that encoding starts with the
prompt's ids (so tokenizers that merge across the boundary or add a prefix space agree with how
the text reads), and encoded on their own otherwise. Too-long sequences lose prompt tokens from
the left; the option is never cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmtune.data.tasks import TaskExample, with_demos

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmtune.data.template import Template

PROMPT_FORMATS = ("plain", "chat")


@dataclass
class EncodedChoice:
    """One choice example as ids: the prompt's, each option's, and the gold option's index (or None)."""

    prompt_ids: list[int]
    option_ids: list[list[int]]
    label: int | None

    def as_features(self) -> dict:
        """The per-example dict the classification collator takes."""
        return {"prompt_ids": self.prompt_ids, "option_ids": self.option_ids, "label": self.label}


def encode_text_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """``text`` with the tokenizer's leading special tokens (a bos), never a trailing eos."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return ids


def _continuation(tokenizer: PreTrainedTokenizerBase, prompt: str, prompt_ids: list[int], option: str) -> list[int]:
    joint = encode_text_prompt(tokenizer, prompt + option)
    if joint[: len(prompt_ids)] == prompt_ids and len(joint) > len(prompt_ids):
        return joint[len(prompt_ids) :]
    return tokenizer.encode(option, add_special_tokens=False)


def encode_choice(
    tokenizer: PreTrainedTokenizerBase,
    example: TaskExample,
    demos: list[TaskExample] = (),
    template: Template | None = None,
    default_system: str | None = None,
    max_length: int | None = None,
) -> EncodedChoice:
    """Ids of ``example`` (after its ``demos``): plain when ``template`` is None, else chat."""
    prompt = with_demos(example, list(demos))
    if template is None:
        prompt_ids = encode_text_prompt(tokenizer, prompt)
        options = [_continuation(tokenizer, prompt, prompt_ids, option) for option in example.options]
    else:
        options, prompt_ids = [], []
        for option in example.options:
            conversation = {
                "system": None,
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": option.strip()}],
            }
            (prompt_ids, response_ids), *_ = template.encode(tokenizer, conversation, default_system)
            options.append(response_ids[:-1] or response_ids)  # the end-of-turn id is not scored
    if any(not ids for ids in options):
        raise ValueError(f"{example.where}: an option encodes to no tokens")
    if max_length is not None:
        room = max_length - max(len(ids) for ids in options)
        if room < 1:
            raise ValueError(f"{example.where}: an option alone is longer than cutoff_len {max_length}")
        prompt_ids = prompt_ids[-room:]
    return EncodedChoice(prompt_ids, options, example.label)


def encode_generation_prompt(
    tokenizer: PreTrainedTokenizerBase,
    example: TaskExample,
    demos: list[TaskExample] = (),
    template: Template | None = None,
    default_system: str | None = None,
    max_length: int | None = None,
) -> list[int]:
    """Ids of the prompt the model continues for a generation task (plain or chat), left-truncated."""
    prompt = with_demos(example, list(demos))
    if template is None:
        ids = encode_text_prompt(tokenizer, prompt)
    else:
        conversation = {
            "system": None,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "x"}],
        }
        (ids, _), *_ = template.encode(tokenizer, conversation, default_system)
    return ids[-max_length:] if max_length else ids
