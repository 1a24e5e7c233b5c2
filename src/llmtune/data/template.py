"""Chat templates: how a conversation becomes the text (and token ids) a model trains on.

A ``Template`` holds a few format strings in which ``{content}`` stands for a message's text.
Each turn becomes a pair ``(prompt, response)``: the prompt is the separator (from the second
turn on), the system text (first turn only) and the user message in the ``user`` format, which
ends where the model's answer starts; the response is the assistant message in the
``assistant`` format followed by the end-of-turn token, appended *by id* so it is always one
token and always trained on, whatever the pad token is. ``auto`` uses the tokenizer's own
``chat_template`` instead (see ``chat_template.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

from llmtune.errors import ConfigError

Pairs = list[tuple[list[int], list[int]]]


@dataclass(frozen=True)
class Template:
    """A chat format given by format strings; ``{content}`` is replaced by a message's text.

    ``user`` ends where the response begins; ``system`` is placed before the first user turn
    (inside it when ``system_in_user``); ``separator`` comes before every turn but the first.
    ``eot_token`` ends every response (None: the tokenizer's eos). ``add_bos`` prepends the
    tokenizer's bos to the first turn (to every turn with ``bos_every_turn``).
    ``special_tokens`` are tokens the format strings need as single tokens.
    """

    name: str
    user: str
    assistant: str = "{content}"
    system: str = "{content}\n"
    separator: str = ""
    default_system: str | None = None
    eot_token: str | None = None
    add_bos: bool = False
    bos_every_turn: bool = False
    system_in_user: bool = False
    special_tokens: tuple[str, ...] = ()

    def render(
        self, example: dict, default_system: str | None = None, tokenizer: PreTrainedTokenizerBase | None = None
    ) -> list[tuple[str, str]]:
        """Text ``(prompt, response)`` per turn, without the bos and end-of-turn tokens.

        ``example`` is a unified conversation (``{"system", "messages"}``); ``default_system``
        is used when it has no system prompt and overrides the template's own default.
        """
        system = example.get("system") or default_system or self.default_system
        system_text = _fill(self.system, system) if system else ""
        pairs = []
        for index, (user, assistant) in enumerate(_turns(example)):
            if index == 0 and self.system_in_user:
                prompt = _fill(self.user, system_text + user)
            elif index == 0:
                prompt = system_text + _fill(self.user, user)
            else:
                prompt = self.separator + _fill(self.user, user)
            pairs.append((prompt, _fill(self.assistant, assistant)))
        return pairs

    def encode(self, tokenizer: PreTrainedTokenizerBase, example: dict, default_system: str | None = None) -> Pairs:
        """Token ids ``(prompt_ids, response_ids)`` per turn; every response ends with the end-of-turn id.

        Segments are encoded with ``add_special_tokens=False`` and meant to be concatenated.
        """
        eot_id = self.eot_id(tokenizer)
        bos_id = tokenizer.bos_token_id if self.add_bos else None
        pairs = []
        for index, (prompt, response) in enumerate(self.render(example, default_system, tokenizer)):
            prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
            if bos_id is not None and (index == 0 or self.bos_every_turn):
                prompt_ids = [bos_id, *prompt_ids]
            pairs.append((prompt_ids, [*tokenizer.encode(response, add_special_tokens=False), eot_id]))
        return pairs

    def eot_id(self, tokenizer: PreTrainedTokenizerBase) -> int:
        """The id of the end-of-turn token: ``eot_token`` or the tokenizer's eos."""
        if self.eot_token is None:
            if tokenizer.eos_token_id is None:
                raise ConfigError(
                    f"template '{self.name}' ends turns with the eos token, but this tokenizer has none; "
                    "set one on the tokenizer or use template: auto"
                )
            return tokenizer.eos_token_id
        return tokenizer.convert_tokens_to_ids(self.eot_token)

    def missing_tokens(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        """Tokens this template needs that the tokenizer does not encode as one token."""
        needed = [*([self.eot_token] if self.eot_token else []), *self.special_tokens]
        missing = [token for token in dict.fromkeys(needed) if not _is_single_token(tokenizer, token)]
        if self.eot_token is None and tokenizer.eos_token_id is None:
            missing.append("eos_token")
        return missing

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Raise ``ConfigError`` when the tokenizer lacks a token the template needs."""
        missing = self.missing_tokens(tokenizer)
        if missing:
            fitting = [name for name, t in BUILTIN_TEMPLATES.items() if not t.missing_tokens(tokenizer)]
            raise ConfigError(
                f"template '{self.name}' needs token '{missing[0]}', which this tokenizer lacks; use template: auto "
                f"(the tokenizer's chat_template) or one it supports: {', '.join(fitting) or 'none'}"
            )


def _fill(format_string: str, content: str) -> str:
    # str.replace, not str.format: message text may hold braces ("{{name}}" in identity data).
    return format_string.replace("{content}", content)


def _turns(example: dict) -> list[tuple[str, str]]:
    """``[(user, assistant), ...]`` from a unified conversation's alternating messages."""
    messages = example["messages"]
    return [(messages[i]["content"], messages[i + 1]["content"]) for i in range(0, len(messages) - 1, 2)]


def _is_single_token(tokenizer: PreTrainedTokenizerBase, token: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return False
    return tokenizer.encode(token, add_special_tokens=False) == [token_id]


_CHATML = dict(
    user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
    system="<|im_start|>system\n{content}<|im_end|>\n",
    separator="\n",
    eot_token="<|im_end|>",
    special_tokens=("<|im_start|>", "<|im_end|>"),
)

_LLAMA3_HEADER = "<|start_header_id|>{role}<|end_header_id|>\n\n"

BUILTIN_TEMPLATES: dict[str, Template] = {
    # LLaMA-Factory's `default`: plain "Human:/Assistant:" turns, ended by eos.
    "default": Template(
        name="default", user="Human: {content}\nAssistant: ", system="System: {content}\n", separator="\n"
    ),
    # Stanford Alpaca's instruction format.
    "alpaca": Template(
        name="alpaca",
        user="### Instruction:\n{content}\n\n### Response:\n",
        system="{content}\n\n",
        separator="\n\n",
        default_system="Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.",
    ),
    # Llama 2 chat: "<s>[INST] <<SYS>>\n...\n<</SYS>>\n\nq [/INST] a </s>" per turn.
    "llama2": Template(
        name="llama2",
        user="[INST] {content} [/INST]",
        assistant=" {content} ",
        system="<<SYS>>\n{content}\n<</SYS>>\n\n",
        add_bos=True,
        bos_every_turn=True,
        system_in_user=True,
    ),
    # Llama 3 instruct: header ids around each role, every message ended by <|eot_id|>.
    "llama3": Template(
        name="llama3",
        user=_LLAMA3_HEADER.format(role="user") + "{content}<|eot_id|>" + _LLAMA3_HEADER.format(role="assistant"),
        system=_LLAMA3_HEADER.format(role="system") + "{content}<|eot_id|>",
        eot_token="<|eot_id|>",
        add_bos=True,
        special_tokens=("<|start_header_id|>", "<|end_header_id|>"),
    ),
    "chatml": Template(name="chatml", **_CHATML),
    "qwen": Template(
        name="qwen", default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", **_CHATML
    ),
    # Mistral instruct: "<s>[INST] q [/INST] a</s>[INST] ..."; the system prompt opens the first [INST].
    "mistral": Template(
        name="mistral",
        user="[INST] {content} [/INST]",
        assistant=" {content}",
        system="{content}\n\n",
        add_bos=True,
        system_in_user=True,
    ),
}
