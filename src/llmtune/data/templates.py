"""Every template by name: the built-in ones (:mod:`llmtune.data.template`) and ``auto``, the
tokenizer's own chat template (:mod:`llmtune.data.chat_template`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmtune.data.chat_template import AutoTemplate
from llmtune.data.template import BUILTIN_TEMPLATES, Template
from llmtune.errors import one_of

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TEMPLATES: dict[str, Template] = {**BUILTIN_TEMPLATES, "auto": AutoTemplate(name="auto", user="")}


def get_template(name: str, tokenizer: PreTrainedTokenizerBase) -> Template:
    """The template called ``name``, checked against ``tokenizer``.

    Raises ``ConfigError`` for an unknown name (with a suggestion), or when the tokenizer lacks
    a token the template needs (listing the templates it does support).
    """
    if name not in TEMPLATES:
        raise one_of("template", name, TEMPLATES)
    template = TEMPLATES[name]
    template.check_tokenizer(tokenizer)
    return template
