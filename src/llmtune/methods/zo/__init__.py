"""``finetuning_type: zo``: MeZO zeroth-order fine-tuning with forward passes only (ZO-AdaMU optional).

``config.py`` holds the ``zo_*`` options; ``optimizer.py`` the SPSA estimate and MeZO's ZO-SGD
update and ``adamu.py`` ZO-AdaMU's (plain ``torch.optim.Optimizer``s), ``schedule.py`` ZO-AdaMU's
annealing as a pure function of the step; ``objectives.py`` what the
two forwards evaluate (the model's loss, or minus a non-differentiable accuracy or F1);
``model.py`` what is trained (every weight, LoRA or a prefix); ``trainer.py`` the wiring into the
training loop.
"""
