"""After ``import llmtune``, PEFT knows the LORETTA adapter type however PEFT comes to be imported
(llmtune.peft_hook), and without ``import llmtune`` it does not."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = "from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as M; print('LORETTA' in M)"
ORDERS = {
    "peft first": "import llmtune; import peft",
    # transformers' is_peft_available() looks PEFT up without importing it, before anything imports it
    "an existence check first": "import llmtune, importlib.util; importlib.util.find_spec('peft'); import peft",
    "transformers first": "import llmtune, transformers; transformers.utils.is_peft_available(); import peft",
    "peft before llmtune": "import peft; import llmtune",
}


def _registered(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", f"{code}; {CHECK}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.parametrize("order", list(ORDERS))
def test_loretta_is_registered_whatever_imports_peft(order):
    assert _registered(ORDERS[order]) == "True"


def test_without_llmtune_peft_does_not_know_loretta():
    assert _registered("import peft") == "False"
