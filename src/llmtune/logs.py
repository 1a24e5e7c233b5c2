"""Which lines other libraries may print on llmtune's console.

A few libraries log a notice on import that a user cannot act on, in every run, quantised or not.
:func:`drop_foreign_notices` runs on ``import llmtune``, before any of them is imported, and drops
exactly those messages (by logger and message start); everything else they log still shows.
"""

from __future__ import annotations

import logging

# logger name -> how the dropped messages start
DROPPED_NOTICES: dict[str, tuple[str, ...]] = {
    # bitsandbytes, on a CPU with AVX512-BF16, tries on import to fetch an optional 4-bit matmul kernel
    # from the Hub (through the kernels package, which warns that offline it cannot check the
    # publisher) and says it failed; it falls back to its own kernel, and a run without
    # quantisation uses neither.
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    "kernels._internals.hf_hub": ("Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",),
    # DeepSpeed, imported by transformers when installed, says on a machine without a GPU that it uses
    # the CPU; llmtune says which device trains. (DeepSpeed resets its logger's level: hence a filter.)
    "DeepSpeed": ("Setting accelerator to CPU",),
}


class _DropNotices(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def drop_foreign_notices() -> None:
    """Filter the :data:`DROPPED_NOTICES` out of their loggers (once; calling again changes nothing)."""
    for name, starts in DROPPED_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices(starts))
