"""LoRETTA as a PEFT method: ``config.py``, ``layer.py``, ``model.py``, registered here as PEFT's own
methods register (``peft/tuners/vera/__init__.py``), so ``get_peft_model``, ``save_pretrained``,
``PeftModel.from_pretrained`` and ``merge_and_unload`` work for it. Import this package before
loading a saved LoRETTA adapter.
"""

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import register_peft_method

from llmtune.methods.loretta.tuner.config import LorettaConfig
from llmtune.methods.loretta.tuner.layer import Linear, LorettaLayer
from llmtune.methods.loretta.tuner.model import LorettaModel
from llmtune.methods.loretta.tuner.peft_type import LORETTA_PEFT_TYPE

__all__ = ["Linear", "LorettaConfig", "LorettaLayer", "LorettaModel"]

if LORETTA_PEFT_TYPE not in PEFT_TYPE_TO_TUNER_MAPPING:  # a reloaded module must not register twice
    register_peft_method(name="loretta", config_cls=LorettaConfig, model_cls=LorettaModel, prefix="loretta_")
