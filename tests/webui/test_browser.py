"""A real browser drives ``llmtune webui``: preview, start, close the page, reopen it, abort.

Headless Debian chromium through Playwright. The run is its own process: the second page finds
it from files, sees its steps go on, aborts it and sees the checkpoint kept. A screenshot of each
page goes to ``$LLMTUNE_TEST_ARTIFACTS`` (or the test's tmp folder).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ui(tmp_path):
    """``llmtune webui`` on a free loopback port, in its own working folder; stopped afterwards."""
    port = free_port()
    env = {**os.environ, "LLMTUNE_WEBUI_RUNS": str(tmp_path / "runs")}
    log = (tmp_path / "ui.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtune", "webui", "--port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "ui.log").read_text()
            assert time.time() < deadline, "llmtune webui did not answer within 120 s"
            time.sleep(0.5)
    yield url, tmp_path
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def fill(page, key: str, value: str) -> None:
    page.locator(f"#f-{key}").locator("input, textarea").first.fill(value)


def status_text(page) -> str:
    return page.locator("#run-status").inner_text()


def wait_status(page, pattern: str, timeout_s: float) -> re.Match:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = re.search(pattern, status_text(page))
        if found:
            return found
        page.wait_for_timeout(250)
    raise AssertionError(f"status never matched {pattern!r}: {status_text(page)!r}")


def test_start_close_reopen_abort_in_a_browser(ui):
    from playwright.sync_api import sync_playwright

    url, workdir = ui
    t0 = time.time()
    mark = lambda what: print(f"{time.time() - t0:6.1f}s {what}", flush=True)  # noqa: E731
    artifacts = Path(os.environ.get("LLMTUNE_TEST_ARTIFACTS") or workdir / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 1600})
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#preview")
        fill(page, "model_name_or_path", "llmtune/tiny-llama")  # the embedded default model
        assert "demo_alpaca" in page.locator("#f-dataset").inner_text()  # a shipped demo dataset
        for key, value in {
            "output_dir": "saves/browser run",
            "max_steps": "400",
            "logging_steps": "1",
            "save_steps": "1000",
            "cutoff_len": "48",
            "max_samples": "64",
            "per_device_train_batch_size": "2",
            "learning_rate": "1e-3",
        }.items():
            fill(page, key, value)

        mark("filled")
        page.click("#preview")
        page.wait_for_function("document.querySelector('#command').innerText.includes('--max_steps=400')")
        command = page.locator("#command").inner_text()
        assert "--model_name_or_path=llmtune/tiny-llama" in command and "'--output_dir=saves/browser run'" in command
        assert "max_steps: 400" in page.locator("#yaml").inner_text()

        mark("previewed")
        page.click("#start")
        page.wait_for_function("document.querySelector('#message').innerText.includes('started run')", timeout=30_000)
        step = int(wait_status(page, r"step (\d+)/400 · loss \d", 120).group(1))
        page.screenshot(path=str(artifacts / "webui_first_page.png"), full_page=True)
        mark("loss seen")
        page.close()  # the run is its own process: closing the page changes nothing

        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#run-status")
        seen = int(wait_status(page, r"running · .* step (\d+)/400", 60).group(1))
        deadline = time.time() + 60
        while seen <= step and time.time() < deadline:  # found again from its files, and still going
            page.wait_for_timeout(250)
            seen = int(wait_status(page, r"running · .* step (\d+)/400", 5).group(1))
        assert seen > step
        assert page.locator("#loss-plot").locator("canvas, svg").count() > 0
        mark("progress continues")
        page.click("#abort")
        wait_status(page, r"\*?interrupted", 90)
        text = status_text(page)
        assert "stopped by SIGINT" in text and "checkpoint saved in" in text
        mark("interrupted")
        page.screenshot(path=str(artifacts / "webui_reopened_page.png"), full_page=True)
        browser.close()

    out = workdir / "saves" / "browser run"
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints and (checkpoints[-1] / "llmtune_complete.json").is_file()
    assert (artifacts / "webui_reopened_page.png").stat().st_size > 10_000


def test_the_memory_picture_follows_the_method_in_a_browser(ui):
    """Issue #21 §2: the stacked bars of every finetuning type, redrawn when the method changes."""
    from playwright.sync_api import sync_playwright

    url, workdir = ui
    artifacts = Path(os.environ.get("LLMTUNE_TEST_ARTIFACTS") or workdir / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.goto(url)
        page.wait_for_selector("#estimate")
        fill(page, "model_name_or_path", "llmtune/tiny-llama")
        page.click("#estimate")
        page.wait_for_function("document.querySelector('#memory-line').innerText.includes('lora: ')", timeout=60_000)
        assert page.locator("#memory-plot").locator("img, svg, canvas").count() > 0
        box = page.locator("#f-finetuning_type").locator("input").first
        box.click()
        box.fill("block")
        box.press("Enter")
        page.wait_for_function("document.querySelector('#memory-line').innerText.includes('block: ')", timeout=60_000)
        assert re.search(r"block: [\d.]+ GB \(fits\)", page.locator("#memory-line").inner_text())
        page.locator("#memory-plot").screenshot(path=str(artifacts / "webui_memory_picture.png"))
        browser.close()
    assert (artifacts / "webui_memory_picture.png").stat().st_size > 5_000
