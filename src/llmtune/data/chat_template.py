"""The ``auto`` template: render with the tokenizer's own ``chat_template``.

A conversation is rendered incrementally: for turn ``i`` the prompt is
``render(messages[:i], add_generation_prompt=True)`` minus the text of the turns before, and
the response is ``render(messages[:i+1])`` minus that prompt. This needs every rendering to be
a prefix of the next one; templates that rewrite earlier turns (some drop past reasoning) break
it, and then ``auto`` refuses with a clear error. A response ends at its last special token
(``<|im_end|>``, ``<|eot_id|>``, eos, ...); text the template puts after it (a newline) moves
to the next prompt, and a response with no special token gets the eos id appended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmtune.data.template import BUILTIN_TEMPLATES, Pairs, Template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

from llmtune.errors import ConfigError

_PROBE = {
    "system": None,
    "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye"},
    ],
}


@dataclass(frozen=True)
class AutoTemplate(Template):
    """A template that defers to ``tokenizer.chat_template`` (``template: auto``)."""

    def render(
        self, example: dict, default_system: str | None = None, tokenizer: PreTrainedTokenizerBase | None = None
    ) -> list[tuple[str, str]]:
        """Text ``(prompt, response)`` per turn, cut from incremental chat-template renderings."""
        if tokenizer is None:
            raise TypeError("template 'auto' renders with a tokenizer; pass tokenizer=")
        system = example.get("system") or default_system
        head = [{"role": "system", "content": system}] if system else []
        messages = head + list(example["messages"])
        specials = [token for token in tokenizer.all_special_tokens if token]
        pairs: list[tuple[str, str]] = []
        done, carry = "", ""
        for end in range(len(head) + 1, len(messages), 2):
            prompt_text = self._apply(tokenizer, messages[:end], add_generation_prompt=True)
            full_text = self._apply(tokenizer, messages[: end + 1], add_generation_prompt=False)
            if not prompt_text.startswith(done) or not full_text.startswith(prompt_text):
                raise ConfigError(
                    "template 'auto': this tokenizer's chat_template does not render conversations "
                    f"incrementally (turn {len(pairs) + 1} changes the text before it), so prompts and "
                    f"responses cannot be told apart; use an explicit template: {', '.join(BUILTIN_TEMPLATES)}"
                )
            response, after = _split_after_last(full_text[len(prompt_text) :], specials)
            pairs.append((carry + prompt_text[len(done) :], response))
            done, carry = full_text, after
        return pairs

    def encode(self, tokenizer: PreTrainedTokenizerBase, example: dict, default_system: str | None = None) -> Pairs:
        """Token ids per turn; a response that does not end with a special token gets eos appended."""
        special_ids = set(tokenizer.all_special_ids)
        pairs = []
        for prompt, response in self.render(example, default_system, tokenizer):
            response_ids = tokenizer.encode(response, add_special_tokens=False)
            if not response_ids or response_ids[-1] not in special_ids:
                response_ids.append(self.eot_id(tokenizer))
            pairs.append((tokenizer.encode(prompt, add_special_tokens=False), response_ids))
        return pairs

    def missing_tokens(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        """``["chat_template"]`` when the tokenizer has none, else nothing."""
        return [] if getattr(tokenizer, "chat_template", None) else ["chat_template"]

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """The tokenizer must have a chat template that renders a sample conversation incrementally."""
        if self.missing_tokens(tokenizer):
            raise ConfigError(
                "template 'auto' uses the tokenizer's chat_template, but this tokenizer has none; "
                f"use one of: {', '.join(BUILTIN_TEMPLATES)}"
            )
        self.render(_PROBE, tokenizer=tokenizer)

    @staticmethod
    def _apply(tokenizer: PreTrainedTokenizerBase, messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as error:  # jinja raises TemplateError and friends from inside the template
            raise ConfigError(
                f"template 'auto': the tokenizer's chat_template failed on a conversation "
                f"({type(error).__name__}: {error}); use an explicit template: {', '.join(BUILTIN_TEMPLATES)}"
            ) from None


def _split_after_last(text: str, specials: list[str]) -> tuple[str, str]:
    """Split ``text`` just after the last special token in it; ``(text, "")`` when there is none."""
    cut = max((text.rfind(token) + len(token) for token in specials if token in text), default=len(text))
    return text[:cut], text[cut:]
