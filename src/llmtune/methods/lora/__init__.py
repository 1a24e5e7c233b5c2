"""``finetuning_type: lora``: PEFT LoRA adapters."""
