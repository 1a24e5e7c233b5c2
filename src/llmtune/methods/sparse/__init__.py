"""``finetuning_type: sparse``: BAdam's ratio mode, Adam on a sliding fraction of every weight.

The block partition (which parameters may train) is shared with ``finetuning_type: block``; the
optimizer, :class:`~llmtune.methods.sparse.optimizer.RatioBlockOptimizer`, is a plain
``torch.optim.Optimizer``.
"""
