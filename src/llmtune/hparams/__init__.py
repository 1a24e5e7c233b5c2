"""Argument dataclasses (one per concern) and the one parser that builds them."""

from llmtune.hparams.data_args import DataArguments
from llmtune.hparams.finetuning_args import FinetuningArguments
from llmtune.hparams.model_args import ModelArguments
from llmtune.hparams.parser import RunArguments, load_run_arguments, parse_args, read_config_file

__all__ = [
    "DataArguments",
    "FinetuningArguments",
    "ModelArguments",
    "RunArguments",
    "load_run_arguments",
    "parse_args",
    "read_config_file",
]
