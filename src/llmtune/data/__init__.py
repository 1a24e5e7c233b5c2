"""Datasets: the registry, loading and checking rows, chat templates, and tokenised SFT examples.

The path through this package: ``check_datasets`` (before any model loads) reads and checks
every configured dataset; ``get_dataset`` does the same, renders each conversation with a
``Template`` and returns tokenised ``input_ids``/``labels`` datasets.
"""

from llmtune.data.loader import check_datasets
from llmtune.data.processor import PreparedData, get_dataset
from llmtune.data.registry import DatasetAttr, load_registry, resolve_dataset_dir
from llmtune.data.report import DataReport
from llmtune.data.template import Template
from llmtune.data.templates import TEMPLATES, get_template

__all__ = [
    "TEMPLATES",
    "DataReport",
    "DatasetAttr",
    "PreparedData",
    "Template",
    "check_datasets",
    "get_dataset",
    "get_template",
    "load_registry",
    "resolve_dataset_dir",
]
