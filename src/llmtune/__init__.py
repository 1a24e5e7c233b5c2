"""llmtune: fine-tune large language models on the hardware you have."""

from llmtune import peft_hook
from llmtune.logs import drop_foreign_notices

__version__ = "0.1.0"

drop_foreign_notices()  # before bitsandbytes or DeepSpeed is imported (through transformers, peft, ...)
peft_hook.install()  # saved LoRETTA/AdaZeta adapters load with plain PeftModel.from_pretrained
