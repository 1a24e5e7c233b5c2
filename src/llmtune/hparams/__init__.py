"""Argument dataclasses (one per concern) and the one parser that reads and coerces them.

The bottom layer: it imports nothing of llmtune above it. The setup step that checks a run against the
methods, the models and the machine is :mod:`llmtune.arguments`.
"""

from llmtune.hparams.data_args import DataArguments
from llmtune.hparams.finetuning_args import FinetuningArguments
from llmtune.hparams.model_args import ModelArguments
from llmtune.hparams.parser import RunArguments, read_config_file

__all__ = ["DataArguments", "FinetuningArguments", "ModelArguments", "RunArguments", "read_config_file"]
