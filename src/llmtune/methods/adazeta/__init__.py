"""``finetuning_type: adazeta``: AdaZeta (Yang et al., EMNLP 2024), zeroth-order training of tensor-train adapters.

``config.py`` holds the ``adazeta_*`` options, ``schedule.py`` the adaptive query count as a pure
function of the epoch, ``optimizer.py`` the ZO-SGD subclass that follows it and splits queries
across processes, ``trainer.py`` the ``zo`` trainer subclass, ``model.py`` the ``prepare`` step (the
LoRETTA adapters of :mod:`llmtune.methods.loretta`, norms frozen) and ``checks.py`` the refusals
made before anything loads.
"""
