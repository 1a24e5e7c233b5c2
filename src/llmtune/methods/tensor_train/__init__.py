"""Tensor-train (TT) layers shared by ``loretta`` and ``adazeta``.

``shape.py`` chooses mode sizes and counts parameters (no torch needed); ``linear.py`` holds
:class:`TensorTrainLinear`, the layer both methods build their adapters from.
"""

from llmtune.methods.tensor_train.linear import TensorTrainLinear
from llmtune.methods.tensor_train.shape import factorize, split_tt_shape, tt_parameter_count, tt_shape_for

__all__ = ["TensorTrainLinear", "factorize", "split_tt_shape", "tt_parameter_count", "tt_shape_for"]
