"""How a config value, a flag or an environment variable says yes or no: one list for every reader."""

from __future__ import annotations

from typing import Any

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def is_true(value: Any) -> bool:
    """Whether ``value`` says yes: ``True``, or text such as "1", "true", "yes" or "on" (any case, padded)."""
    return value is True or (isinstance(value, str) and value.strip().lower() in TRUE_WORDS)
