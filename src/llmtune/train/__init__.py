"""The one training path (:func:`run_sft`), the trainer, and its callbacks."""
