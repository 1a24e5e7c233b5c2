"""Register llmtune's PEFT adapter types (LoRETTA, which AdaZeta trains too) with PEFT as soon as PEFT is
imported, so that after ``import llmtune`` a saved adapter loads with plain ``PeftModel.from_pretrained``.

Importing PEFT takes seconds, so ``import llmtune`` does not do it: it puts a finder at the front of
``sys.meta_path`` that waits for ``import peft``, lets PEFT import as usual, then imports each module that
a registered method names in its ``peft_tuner`` (:class:`~llmtune.methods.registry.Method`). When PEFT is
already imported, they are imported at once. A tuner that fails to import warns and leaves PEFT as it is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
import warnings
from typing import Any


def register_tuners() -> None:
    """Import the modules that register the registry's PEFT adapter types (each once)."""
    from llmtune.methods import METHODS  # it imports torch: not at `import llmtune` (every --help)

    for module in dict.fromkeys(m.peft_tuner for m in METHODS.values() if m.peft_tuner):
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - PEFT itself must keep working
            warnings.warn(f"llmtune: {module} did not register with PEFT ({error})", stacklevel=2)


class _RegisterAfter(importlib.abc.Loader):
    """PEFT's own loader, then :func:`register_tuners`; the finder goes once PEFT has really been imported."""

    def __init__(self, loader: importlib.abc.Loader, finder: _WaitForPeft):
        self._loader = loader
        self._finder = finder

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._finder.done()
        register_tuners()

    def __getattr__(self, name: str) -> Any:  # resources, source and the rest: PEFT's loader answers
        return getattr(self._loader, name)


class _WaitForPeft(importlib.abc.MetaPathFinder):
    """Answers every lookup of ``peft`` (an existence check such as transformers' ``is_peft_available``
    too) with PEFT's own spec, its loader wrapped; stays until an import has executed PEFT."""

    def __init__(self) -> None:
        self._looking = threading.local()  # the real lookup below must not find this finder again

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "peft" or getattr(self._looking, "on", False):
            return None
        self._looking.on = True
        try:
            spec = importlib.util.find_spec("peft")
        finally:
            self._looking.on = False
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfter(spec.loader, self)
        return spec

    def done(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def install() -> None:
    """Register now if PEFT is imported, else when it is (called by ``import llmtune``)."""
    if "peft" in sys.modules:
        register_tuners()
    elif not any(isinstance(finder, _WaitForPeft) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WaitForPeft())
