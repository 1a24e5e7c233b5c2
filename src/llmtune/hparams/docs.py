"""``--help`` text of a command's keys, from the dataclasses that own them (each key's default and help).

The full walk over every run key (``llmtune train --help``, ``docs/options.md``, the web UI's fields)
is :mod:`llmtune.options`, above the method registry."""

from __future__ import annotations

import dataclasses
import textwrap


def owners_of(groups: tuple[tuple[type, tuple[str, ...] | None], ...]) -> dict[str, type]:
    """Config key -> the dataclass that defines it, for a command that takes some groups' keys
    (``None``: every key of that class; a tuple: only those)."""
    owners: dict[str, type] = {}
    for cls, keys in groups:
        for f in dataclasses.fields(cls):
            if f.init and (keys is None or f.name in keys):
                owners.setdefault(f.name, cls)
    return owners


def owners_text(header: list[str], owners: dict[str, type]) -> str:
    """``--help`` text of a command: ``header``, then every key of ``owners`` with its default and help."""
    lines = list(header)
    group = None
    for name, cls in owners.items():
        if cls.__name__ != group:
            group = cls.__name__
            lines += ["", f"{group}:"]
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        default = f.default if f.default is not dataclasses.MISSING else None
        lines.append(f"  --{name} (default: {default!r})")
        text = " ".join(str(f.metadata.get("help", "")).split())
        if text:
            lines += textwrap.wrap(text, 96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines) + "\n"
