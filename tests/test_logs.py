"""llmtune's console holds llmtune's own lines: other libraries' import-time notices are dropped (llmtune.logs)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmtune.logs import DROPPED_NOTICES, drop_foreign_notices

ROOT = Path(__file__).resolve().parents[1]
# What bitsandbytes (through the kernels package) prints on import on a CPU with AVX512-BF16, offline.
BITSANDBYTES_NOTICES = ("Failed to load CPU gemm_4bit_forward", "Skipping publisher trust check", "kernels-community")


def output_of(*argv: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "LLMTUNE_LOG_LEVEL": "INFO"}
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def notices_printed_here(bnb):
    """Skip unless bitsandbytes prints its kernel notices on this machine (only CPUs with AVX512-BF16 do);
    then check that a plain import prints them, so that their absence below means something."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("needs a CPU with AVX512-BF16, where bitsandbytes prints its kernel notice on import")
    bare = output_of("-c", "import bitsandbytes")
    assert all(notice in bare for notice in BITSANDBYTES_NOTICES), bare[-2000:]


@pytest.mark.parametrize(
    "argv",
    [
        ("-m", "llmtune.options"),  # no CLI: the notices are dropped on `import llmtune`
        pytest.param(
            ("-m", "llmtune", "estimate", "--model_name_or_path", "llmtune/tiny-llama"), marks=pytest.mark.slow
        ),
    ],
    ids=["docs", "estimate"],
)
def test_a_command_prints_no_bitsandbytes_kernel_notice(notices_printed_here, argv):
    out = output_of(*argv)
    assert not [line for line in out.splitlines() if any(notice in line for notice in BITSANDBYTES_NOTICES)]


class Kept(logging.Handler):
    """The messages that reach a logger's handlers (caplog misses loggers that do not propagate, as DeepSpeed's)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_only_the_listed_notices_are_dropped():
    drop_foreign_notices()
    drop_foreign_notices()  # twice: still one filter per logger
    for name, starts in DROPPED_NOTICES.items():
        logger, kept = logging.getLogger(name), Kept()
        assert len(logger.filters) == 1, name
        logger.addHandler(kept)
        try:
            logger.warning("%s: more of the notice", starts[0])
            logger.warning("something else from %s", name)
        finally:
            logger.removeHandler(kept)
        assert kept.messages == [f"something else from {name}"], name
