"""The wheel holds what an installed llmtune needs: the package, its data, the web UI and its presets."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("hatchling", reason="building the wheel offline needs hatchling (the dev extra has it)")


@pytest.mark.slow
def test_wheel_installs_a_working_web_ui_and_data(tmp_path):
    build = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    done = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = tmp_path.glob("llmtune-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
    for name in (
        "llmtune/cli.py",
        "llmtune/_data/dataset_info.json",
        "llmtune/_examples/train_lora/tiny_lora_sft.yaml",
        "llmtune/webui/__init__.py",
        "llmtune/webui/app.py",
    ):
        assert name in names, name
    assert not [n for n in names if n.startswith("webui/")]  # no top-level package that could clash with another
    # Run from the unpacked wheel alone (no checkout on the path, another working directory): the UI's
    # code imports and finds its presets and datasets, as after `pip install llmtune`.
    probe = (
        "import os, llmtune, llmtune.webui as w, llmtune.webui.fields as f; "
        "assert all(m.__file__.startswith(os.environ['SITE']) for m in (llmtune, w)), llmtune.__file__; "
        "p = f.presets(); assert 'train_lora/tiny_lora_sft' in p, sorted(p); "
        "assert 'demo_alpaca' in f.dataset_names(), f.dataset_names(); print('ok', len(p))"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "SITE": str(site), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]
