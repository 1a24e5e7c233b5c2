"""``llmtune``: one command line in front of every finetuning method.

llmtune train CONFIG.yaml [--key value ...]     train (flags override the file's keys)
llmtune validate CONFIG.yaml [--key value ...]  check config and data, load no weights
llmtune estimate CONFIG.yaml [--key value ...]  GPU memory the run needs, load no weights
llmtune eval [CONFIG.yaml | RUN_DIR] [--key value ...]  score tasks (sst2, ...) or MT-bench with a judge
llmtune chat [CONFIG.yaml] --model_name_or_path M [--adapter_name_or_path A]  talk to a model in the terminal
llmtune env | version | webui
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
  chat       talk to a model (and its adapter) in the terminal, with its chat template
  webui      the Gradio app (not available yet: issue #7)
  env        versions of the libraries and the devices llmtune sees
  version    llmtune's version
"""

PLANNED = {"webui": 7}


def _setup_logging() -> None:
    import warnings

    # Raised inside PEFT/transformers on every run; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    level = os.environ.get("LLMTUNE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(format="[llmtune] %(message)s", level=getattr(logging, level, logging.INFO))
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
    from llmtune.data import check_datasets
    from llmtune.hparams import load_run_arguments
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


def cmd_chat(tokens: list[str]) -> int:
    from llmtune.chat import run_chat

    run_chat(tokens)
    return 0


def cmd_train(tokens: list[str]) -> int:
    from llmtune.hparams import load_run_arguments
    from llmtune.train.run import run_sft

    args = load_run_arguments(tokens)
    result = run_sft(args)
    loss = result.metrics.get("train_loss")
    shown = f" (train_loss {loss:.4f})" if isinstance(loss, float) else ""
    if os.environ.get("RANK", "0") == "0":  # under torchrun, say it once
        print(f"llmtune: saved to {result.output_dir}{shown}")
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
        "chat": cmd_chat,
        "env": lambda _t: cmd_env(),
    }
    if command not in commands:
        from llmtune.errors import suggest

        print(f"llmtune: unknown command {command!r}{suggest(command, commands)}\n\n{USAGE}", file=sys.stderr)
        return 2
    if any(t in ("-h", "--help") for t in tokens):
        if command == "eval":
            from llmtune.eval.config import eval_options_text

            print(eval_options_text())
            return 0
        if command == "chat":
            import llmtune.chat

            print(llmtune.chat.__doc__)
            return 0
        from llmtune.hparams.docs import options_text

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
