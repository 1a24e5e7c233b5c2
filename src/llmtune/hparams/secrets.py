"""Which config keys hold credentials: never saved, logged or pickled (a leaf of ``hparams``)."""

from __future__ import annotations

SECRET_WORDS = ("api_key", "secret", "password")
SECRET_SUFFIXES = ("hub_token", "auth_token", "access_token", "api_token")


def is_secret(key: str) -> bool:
    """Whether a config key holds a credential (never saved, logged or pickled)."""
    key = key.lower()
    return any(word in key for word in SECRET_WORDS) or key.endswith(SECRET_SUFFIXES)
