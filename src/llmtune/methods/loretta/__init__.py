"""``finetuning_type: loretta``: LoRETTA tensor-train adapters (Yang et al., NAACL 2024), trained by backprop.

``config.py`` holds the ``loretta_*`` options (light: parsing a config imports nothing heavy),
``tuner/`` the PEFT method (``LorettaConfig``, the layer, ``LorettaModel``, registered with
``peft.utils.register_peft_method``), ``model.py`` the ``prepare`` step and the log line comparing
the trainable parameters with LoRA on the same layers. The TT layer itself is in
:mod:`llmtune.methods.tensor_train`.
"""
