"""``finetuning_type: full``: every weight is trained."""
