"""Model and tokenizer loading, and the embedded tiny model ``llmtune/tiny-llama``.

``check_model_args`` validates a config before anything loads; ``load_tokenizer`` and
``load_model`` then load what ``resolve_model_path`` finds (an embedded model built locally,
a local folder, or a hub id); ``check_precision`` refuses bf16/fp16 the hardware cannot run.
"""

from llmtune.model.loader import (
    check_model_args,
    check_precision,
    count_parameters,
    load_model,
    load_tokenizer,
    resolve_model_path,
)
from llmtune.model.tiny import TINY_MODEL_NAME, ensure_tiny_model

__all__ = [
    "TINY_MODEL_NAME",
    "check_model_args",
    "check_precision",
    "count_parameters",
    "ensure_tiny_model",
    "load_model",
    "load_tokenizer",
    "resolve_model_path",
]
