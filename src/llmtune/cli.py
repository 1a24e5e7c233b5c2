"""``llmtune``: one command line in front of every finetuning method.

llmtune train CONFIG.yaml [--key value ...]     train (flags override the file's keys)
llmtune validate CONFIG.yaml [--key value ...]  check config and data, load no weights
llmtune estimate CONFIG.yaml [--key value ...]  GPU memory the run needs, load no weights
llmtune eval [CONFIG.yaml | RUN_DIR] [--key value ...]  score tasks (sst2, ...) or MT-bench with a judge
llmtune kernel [CONFIG.yaml] [--key value ...]  eNTK of prompt-based fine-tuning on a k-shot split
llmtune export --model_name_or_path BASE --adapter_name_or_path ADAPTER --export_dir DIR  merge a LoRA adapter
llmtune webui [--host 127.0.0.1] [--port 7860] [--share]   the Gradio app (llmtune.webui)
llmtune chat [CONFIG.yaml] --model_name_or_path M [--adapter_name_or_path A]  talk to a model in the terminal
llmtune env | version
"""

from __future__ import annotations

import logging
import os
import sys

USAGE = """usage: llmtune <command> [CONFIG.yaml] [--key value ...]

commands:
  train      fine-tune a model (see `llmtune train --help` for every key)
  validate   check a config and its datasets without loading any weights
  estimate   the GPU memory a config's run needs, by finetuning type, without loading any weights
  eval       score a model or a training run on tasks (sst2, squad, ...) or MT-bench (see `llmtune eval --help`)
  kernel     the eNTK view of fine-tuning: k-shot accuracy from a kernel, no training (see `llmtune kernel --help`)
  export     merge a LoRA (QLoRA too) or LoRETTA reparam adapter into its base: a standard model folder
  webui      the Gradio app: build, preview, start and watch runs (--host, --port, --share; see docs/webui.md)
  chat       talk to a model (and its adapter) in the terminal, with its chat template
  env        versions of the libraries and the devices llmtune sees
  version    llmtune's version
"""

PLANNED: dict[str, int] = {}


def _setup_logging() -> None:
    import warnings

    # Raised inside PEFT/transformers on every run; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    level = os.environ.get("LLMTUNE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(format="[llmtune] %(message)s", level=getattr(logging, level, logging.INFO))
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Other libraries' import-time notices are dropped on `import llmtune` (llmtune.logs).


def cmd_env() -> int:
    import importlib.metadata as md
    import platform

    import torch

    import llmtune

    print(f"llmtune        {llmtune.__version__}")
    print(f"python         {platform.python_version()} ({platform.platform()})")
    for package in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "deepspeed", "bitsandbytes"):
        try:
            version = md.version(package)
        except md.PackageNotFoundError:
            version = "not installed"
        print(f"{package:<14} {version}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            bf16 = "bf16" if torch.cuda.is_bf16_supported() else "no bf16"
            print(f"cuda:{i}         {props.name}, {props.total_memory / 2**30:.1f} GiB, {bf16}")
    else:
        print(f"devices        cpu only ({os.cpu_count()} cores); no CUDA GPU visible")
    return 0


def cmd_validate(tokens: list[str]) -> int:
    from llmtune.arguments import load_run_arguments
    from llmtune.data import check_datasets
    from llmtune.methods import get_method
    from llmtune.train.run import check_output_dir, resolve_resume

    args = load_run_arguments(tokens)
    method = get_method(args.finetuning.finetuning_type)
    check_output_dir(args, resolve_resume(args))
    report = check_datasets(args.data)
    print("config OK:")
    for key, value in args.public_config().items():
        print(f"  {key}: {value}")
    print(f"method: {method.name} ({method.summary})")
    from llmtune.compat import check_config, status_of

    cell = check_config(args.given)
    rule = status_of(cell)
    print(f"compatibility: {cell.describe()}: {rule.status} ({rule.detail})")
    print(f"data: {report.summary()}")
    return 0


def cmd_estimate(tokens: list[str]) -> int:
    from llmtune.train.estimate import (
        compare_methods,
        estimate_memory,
        fits_line,
        format_bytes,
        load_estimate_arguments,
        load_model_config,
    )

    args = load_estimate_arguments(tokens)
    config = load_model_config(args)
    estimate = estimate_memory(args, config)
    print(f"{args.model.model_name_or_path}:")
    print("\n".join(estimate.report()))
    print(fits_line(estimate.total, args.gpu_memory_gb))
    others = {k: v for k, v in compare_methods(args, config).items() if k != args.finetuning.finetuning_type}
    if others:
        shown = ", ".join(f"{name} {format_bytes(e.total)}" for name, e in others.items())
        print(f"the same run as other finetuning types: {shown}")
    return 0


def cmd_eval(tokens: list[str]) -> int:
    from llmtune.eval import load_eval_arguments
    from llmtune.eval.run import run_eval

    run_eval(load_eval_arguments(tokens))
    return 0


def cmd_kernel(tokens: list[str]) -> int:
    from llmtune.kernel.config import load_kernel_arguments
    from llmtune.kernel.run import run_kernel

    run_kernel(load_kernel_arguments(tokens))
    return 0


def cmd_export(tokens: list[str]) -> int:
    from llmtune.export import export_model, load_export_arguments

    model_args, export = load_export_arguments(tokens)
    print(f"llmtune: exported to {export_model(model_args, export)}")
    return 0


def cmd_chat(tokens: list[str]) -> int:
    from llmtune.chat import run_chat

    run_chat(tokens)
    return 0


def cmd_train(tokens: list[str]) -> int:
    from llmtune.arguments import load_run_arguments
    from llmtune.launch import is_main_process, launch_plan, relaunch
    from llmtune.train.run import run_sft

    args = load_run_arguments(tokens)  # every mistake is reported once, before any process starts
    plan = launch_plan(os.environ, force=bool(args.training.deepspeed))
    if plan is not None:  # NPROC_PER_NODE / NNODES / FORCE_TORCHRUN, or deepspeed: run under torchrun
        return relaunch(plan, ["train", *tokens])
    result = run_sft(args)
    loss = result.metrics.get("train_loss")
    shown = f" (train_loss {loss:.4f})" if isinstance(loss, float) else ""
    if is_main_process():  # under torchrun, say it once
        print(f"llmtune: saved to {result.output_dir}{shown}")
    return 0


def _import_webui():
    """``llmtune.webui``, once gradio (an optional extra) is known to be there."""
    import importlib

    from llmtune.errors import ConfigError

    try:
        importlib.import_module("gradio")
    except ImportError:
        raise ConfigError('the web UI needs gradio: pip install -e ".[webui]"') from None
    return importlib.import_module("llmtune.webui")


def cmd_webui(tokens: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="llmtune webui", description="the Gradio app (docs/webui.md)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    options = parser.parse_args(tokens)
    webui = _import_webui()
    webui.launch_ui(options.host, options.port, options.share)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llmtune`` console script; returns the process exit status."""
    from llmtune.errors import LlmtuneError, TrainingInterrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, tokens = argv[0], argv[1:]
    if command in ("version", "--version"):
        import llmtune

        print(llmtune.__version__)
        return 0
    if command in PLANNED:
        print(f"llmtune {command}: not available yet (issue #{PLANNED[command]})", file=sys.stderr)
        return 2
    commands = {
        "train": cmd_train,
        "validate": cmd_validate,
        "estimate": cmd_estimate,
        "eval": cmd_eval,
        "kernel": cmd_kernel,
        "export": cmd_export,
        "chat": cmd_chat,
        "env": lambda _t: cmd_env(),
        "webui": cmd_webui,
    }
    if command not in commands:
        from llmtune.errors import suggest

        print(f"llmtune: unknown command {command!r}{suggest(command, commands)}\n\n{USAGE}", file=sys.stderr)
        return 2
    if any(t in ("-h", "--help") for t in tokens) and command != "webui":
        if command == "eval":
            from llmtune.eval.config import eval_options_text

            print(eval_options_text())
            return 0
        if command == "kernel":
            from llmtune.kernel.config import kernel_options_text

            print(kernel_options_text())
            return 0
        if command == "export":
            from llmtune.export import export_help

            print(export_help())
            return 0
        if command == "chat":
            import llmtune.chat

            print(llmtune.chat.__doc__)
            return 0
        from llmtune.options import options_text

        print(options_text())
        return 0
    _setup_logging()
    try:
        return commands[command](tokens)
    except TrainingInterrupted as err:
        print(f"llmtune: {err}", file=sys.stderr)
        return 128 + (err.signum or 2)
    except LlmtuneError as err:
        print(f"llmtune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmtune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
