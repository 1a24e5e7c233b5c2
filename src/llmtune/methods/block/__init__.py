"""``finetuning_type: block``: BAdam, Adam on one block of layers at a time (Luo et al., 2024).

``partition.py`` splits the model into blocks (shared with ``finetuning_type: sparse``),
``optimizer.py`` holds :class:`BlockOptimizer` (a plain ``torch.optim.Optimizer``), ``model.py``
readies the model, ``trainer.py`` wires the optimizer into the trainer, and ``normalise.py``
reads LLaMA-Factory's ``use_badam`` spelling.
"""
