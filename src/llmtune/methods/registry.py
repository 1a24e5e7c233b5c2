"""The one registry that maps ``finetuning_type`` to what the method adds.

A method is a folder ``llmtune/methods/<name>/`` with (optionally) a ``config.py`` dataclass of its
own options, a ``prepare`` function that readies the model (adapters, frozen parts) and a trainer
class (a subclass of :class:`llmtune.train.trainer.LlmtuneTrainer`). The registry stores the
trainer and ``prepare`` as import paths so that parsing a config never imports torch-heavy code.
Adding a method is one folder and one ``register`` call; nothing else branches on its name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmtune.errors import NotImplementedYetError, one_of
from llmtune.model.dtypes import compute_dtype, set_training_dtypes


@dataclass(frozen=True)
class Method:
    """One ``finetuning_type``.

    Attributes:
        name: the ``finetuning_type`` value.
        summary: one line for the README table and ``llmtune train --help``.
        arguments: the dataclass of this method's own options, or None.
        prepare: ``"module:function"`` taking ``(model, args)`` and returning the model to train;
            None while the method is not implemented yet.
        trainer: ``"module:Class"`` of the trainer; defaults to ``LlmtuneTrainer``.
        issue: the tracker issue that delivers the method while it is not implemented.
        normalise: ``"module:function"`` taking and returning the raw config dict, rewriting another
            tool's spelling of this method (e.g. LLaMA-Factory's ``use_badam: true``) into llmtune's.
        report: ``"module:function"`` taking ``(model, args)`` after ``prepare`` and returning one line
            that ``llmtune train`` logs after the trainable-parameter count, or None.
        keeps_half_weights: the method sets the dtypes of its weights itself and may train half-precision
            ones (BAdam through fp32 master copies, zo and adazeta with stochastic rounding); every other
            method gets its trainable parameters in float32 (see ``prepare_model``).
        data: ``"module:function"`` taking ``(args, tokenizer)`` and returning ``(datasets, trainer
            kwargs)`` when the method brings its own training data for this config (``zo_objective: f1``:
            QA prompts and gold answers), or None for the usual SFT or classification data.
        backward: the method's updates need a backward pass; zeroth-order methods (forward passes
            only) keep no activations for one, so gradient checkpointing is off by default for them.
        also_uses: other methods whose options this one reads (``sparse`` BAdam's partition options,
            ``adazeta`` LoRETTA's adapter shapes and the ``zo_*`` estimate): the CLI, the docs and the
            web UI show those groups with it.
        bnb_optimizers: a bitsandbytes optimizer (``optim: adamw_8bit``, ...) runs inside its updates;
            methods that run their own optimizer refuse one.
        check: ``"module:function"`` taking the run's arguments and raising a one-line ``ConfigError``
            for a combination of options this method cannot train (run when the config is read, before
            any model loads), or None.
        trainer_kwargs: ``"module:function"`` taking the run's arguments and returning the keyword
            arguments of the trainer's constructor (the method's options, as TRL hands a config to its
            trainer), or None.
        peft_tuner: the module that registers the method's adapter type with PEFT, when PEFT does not
            ship it; :mod:`llmtune.peft_hook` imports it once PEFT is imported, so a saved adapter loads
            with plain ``PeftModel.from_pretrained`` after ``import llmtune``.
    """

    name: str
    summary: str
    arguments: type | None = None
    prepare: str | None = None
    trainer: str = "llmtune.train.trainer:LlmtuneTrainer"
    issue: int | None = None
    normalise: str | None = None
    report: str | None = None
    keeps_half_weights: bool = False
    backward: bool = True
    data: str | None = None
    also_uses: tuple[str, ...] = ()
    bnb_optimizers: bool = False
    trainer_kwargs: str | None = None
    check: str | None = None
    peft_tuner: str | None = None

    @property
    def implemented(self) -> bool:
        return self.prepare is not None

    def prepare_fn(self) -> Callable[..., Any]:
        return _import(self.prepare)

    def prepare_model(self, model: Any, args: Any) -> Any:
        """``prepare``, then (unless the method ``keeps_half_weights``) what trains in float32 and
        what stays frozen in the compute dtype (``bf16``/``fp16``, else float32)."""
        model = self.prepare_fn()(model, args)
        if not self.keeps_half_weights:
            set_training_dtypes(model, compute_dtype(args.training.bf16, args.training.fp16))
        return model

    def trainer_class(self) -> type:
        return _import(self.trainer)

    def report_fn(self) -> Callable[..., str]:
        return _import(self.report)

    def check_run(self, args: Any) -> None:
        """The method's own checks of a run's options (see ``check``)."""
        if self.check:
            _import(self.check)(args)

    def trainer_arguments(self, args: Any) -> dict[str, Any]:
        """The method's own keyword arguments for its trainer's constructor (see ``trainer_kwargs``)."""
        return _import(self.trainer_kwargs)(args) if self.trainer_kwargs else {}

    def option_classes(self) -> tuple[type, ...]:
        """The option dataclasses the method reads: its own, then those of ``also_uses``."""
        own = (self.arguments,) if self.arguments is not None else ()
        return own + tuple(METHODS[name].arguments for name in self.also_uses if METHODS[name].arguments is not None)

    def own_data(self, args: Any, tokenizer: Any) -> tuple[Any, dict[str, Any]] | None:
        """``(datasets, trainer kwargs)`` of the method's own data for ``args``, or None (see ``data``)."""
        return _import(self.data)(args, tokenizer) if self.data else None


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (once per name)."""
    if method.name in METHODS:
        raise RuntimeError(f"finetuning_type {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The method for ``finetuning_type: name``; a one-line error for unknown or planned ones."""
    if name not in METHODS:
        raise one_of("finetuning_type", name, METHODS)
    method = METHODS[name]
    if not method.implemented:
        available = ", ".join(n for n, m in METHODS.items() if m.implemented)
        raise NotImplementedYetError(
            f"finetuning_type: {name!r} ({method.summary}) is not implemented yet (issue #{method.issue}); "
            f"available now: {available}"
        )
    return method


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """Let each method rewrite foreign spellings of its options (before unknown keys are refused)."""
    for method in METHODS.values():
        if method.normalise:
            config = _import(method.normalise)(config)
    return config


def finetuning_types() -> tuple[str, ...]:
    """Every registered ``finetuning_type``, in registration order (the one list all others derive from)."""
    return tuple(METHODS)


def method_argument_classes() -> list[type]:
    """The option dataclasses of every registered method, in registration order."""
    return [m.arguments for m in METHODS.values() if m.arguments is not None]


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
