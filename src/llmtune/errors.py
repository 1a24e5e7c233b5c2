"""The errors llmtune raises for things a user can fix.

Every error a user can cause (a bad key, value, file, dataset row, or an unsupported
combination) is one of these, raised *before* any model weights load, with a single line
that names what is wrong and what is allowed. The CLI prints that line and exits with
status 2 instead of showing a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# Characters str.splitlines() breaks at, and the escapes that keep a message on one line.
_LINE_BREAKS = str.maketrans({char: repr(char)[1:-1] for char in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


class LlmtuneError(Exception):
    """Base class of the errors llmtune documents; the CLI prints ``str(error)`` alone."""

    def __init__(self, message: object = "", *args: object):
        # Text from the user's files (a dataset name, a role, a column) can hold line breaks;
        # escape them so the message stays the one line the CLI promises.
        super().__init__(message.translate(_LINE_BREAKS) if isinstance(message, str) else message, *args)


class ConfigError(LlmtuneError, ValueError):
    """A config key or value is unknown, malformed or out of range."""


class DataError(LlmtuneError, ValueError):
    """A dataset is missing, malformed, or has rows that cannot be trained on."""


class DataFileNotFoundError(LlmtuneError, FileNotFoundError):
    """A file or directory named in the config or the dataset registry does not exist."""


class NotImplementedYetError(LlmtuneError, NotImplementedError):
    """A documented option whose implementation has not landed yet."""


class CheckpointError(LlmtuneError, OSError):
    """A checkpoint could not be written, verified or found."""


class TrainingInterrupted(LlmtuneError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint."""

    def __init__(self, message: str, signum: int | None = None):
        super().__init__(message)
        self.signum = signum


class NumericalError(LlmtuneError, FloatingPointError):
    """The loss became NaN or infinite."""


def suggest(given: str, allowed: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest allowed name, or ``""``."""
    close = difflib.get_close_matches(given, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def one_of(name: str, given: object, allowed: Iterable[str]) -> ConfigError:
    """Build the standard "bad value" error: ``name: 'given' is not one of a, b, c``."""
    allowed = sorted(allowed)
    hint = suggest(str(given), allowed)
    return ConfigError(f"{name}: {given!r} is not one of {', '.join(allowed)}{hint}")
