"""``LorettaModel``: injects LoRETTA layers into a model (PEFT's ``BaseTuner``)."""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from llmtune.methods.loretta.tuner.config import DEFAULT_TARGETS, LorettaConfig
from llmtune.methods.loretta.tuner.layer import Linear, LorettaLayer


class LorettaModel(BaseTuner):
    """Wraps each target linear layer of ``model`` in :class:`~llmtune.methods.loretta.tuner.layer.Linear`.

    Use it through PEFT, as any registered method::

        import llmtune.methods.loretta.tuner  # registers "loretta" with PEFT
        model = get_peft_model(base, LorettaConfig(task_type="CAUSAL_LM", mode="reparam"))
        PeftModel.from_pretrained(base, saved_dir)  # after the same import
    """

    prefix: str = "loretta_"
    tuner_layer_cls = LorettaLayer
    target_module_mapping = DEFAULT_TARGETS["adapter"]

    def _prepare_adapter_config(self, peft_config: LorettaConfig, model_config: dict) -> LorettaConfig:
        if peft_config.target_modules is None:
            model_type = model_config.get("model_type")
            defaults = DEFAULT_TARGETS[peft_config.mode].get(model_type)
            if defaults is None:
                raise ValueError(
                    f"target_modules: LoRETTA has no default for model_type {model_type!r}; name the layers to adapt"
                )
            peft_config.target_modules = set(defaults) | set(peft_config.input_target_modules or ())
        return peft_config

    def _create_and_replace(
        self,
        peft_config: LorettaConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs,
    ) -> None:
        placement = peft_config.placement(target_name)
        if isinstance(target, LorettaLayer):
            target.update_layer(adapter_name, placement, peft_config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear):
            raise TypeError(f"target_modules: {current_key} is a {type(base).__name__}; loretta adapts nn.Linear only")
        new_module = Linear(target, adapter_name, placement, peft_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter is not trained
        self._replace_module(parent, target_name, new_module, target)
