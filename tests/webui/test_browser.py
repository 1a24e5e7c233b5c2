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
    # offline as CI is: the starting points then take the shipped demo data, whatever network this machine has
    env = {
        **os.environ,
        "LLMTUNE_WEBUI_RUNS": str(tmp_path / "runs"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
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


def toggle(page, section: str) -> None:
    """Open or close a collapsed section by its header (a click on the section's middle may land in a field)."""
    page.locator(f"#section-{section} > button.label-wrap").click()


def fill_in_section(page, section: str, values: dict[str, str]) -> None:
    """Open a collapsed section of the Train tab, fill its fields, close it again."""
    toggle(page, section)
    for key, value in values.items():
        fill(page, key, value)
    toggle(page, section)
    page.wait_for_selector(f"#f-{next(iter(values))}", state="hidden")  # closed: its fields are hidden again


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
        pick(page, "f-model_name_or_path", "llmtune/tiny-llama")  # the embedded default model
        assert "demo_alpaca" in page.locator("#f-dataset").inner_text()  # a shipped demo dataset
        for key, value in {
            "output_dir": "saves/browser run",
            "max_steps": "400",
            "cutoff_len": "48",
            "per_device_train_batch_size": "2",
            "learning_rate": "1e-3",
        }.items():
            fill(page, key, value)
        fill_in_section(page, "Training", {"logging_steps": "1", "save_steps": "1000"})
        fill_in_section(page, "Data", {"max_samples": "64"})

        mark("filled")
        page.click("#preview")
        page.wait_for_function(
            "document.querySelector('#command').innerText.includes('--max_steps=400')", timeout=120_000
        )
        command = page.locator("#command").inner_text()
        assert "--model_name_or_path=llmtune/tiny-llama" in command and "'--output_dir=saves/browser run'" in command
        toggle(page, "yaml")  # the YAML it equals, in its collapsed section
        assert "max_steps: 400" in wait_text(page, "#yaml", "max_steps: 400", 10)
        toggle(page, "yaml")

        mark("previewed")
        page.click("#start")
        page.wait_for_function("document.querySelector('#message').innerText.includes('started run')", timeout=120_000)
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
        pick(page, "f-model_name_or_path", "llmtune/tiny-llama")
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


def pick(page, key: str, value: str) -> None:
    """Type ``value`` into a dropdown that takes free text (a model, a run folder) and commit it."""
    box = page.locator(f"#{key}").locator("input").first
    box.click()
    box.fill(value)
    box.press("Enter")


def wait_text(page, selector: str, needle: str, timeout_s: float) -> str:
    page.wait_for_function(
        "([s, n]) => (document.querySelector(s)?.innerText || '').includes(n)",
        arg=[selector, needle],
        timeout=timeout_s * 1000,
    )
    return page.locator(selector).inner_text()


def train_to_the_end(page, output_dir: str, steps: int) -> None:
    """Set a short run (the tiny model), start it and watch it finish: the progress line, then ``finished``."""
    for key, value in {"output_dir": output_dir, "max_steps": str(steps), "per_device_train_batch_size": "4",
                       "cutoff_len": "64"}.items():  # fmt: skip
        fill(page, key, value)
    fill_in_section(page, "Training", {"logging_steps": "1", "save_steps": "1000"})
    started = re.compile(r"started run (\S+)")
    earlier = started.search(page.locator("#message").inner_text())  # an earlier start's message, if any
    page.click("#start")
    page.wait_for_function(  # this start's answer: a new run, or the one line saying why not
        "old => { const t = document.querySelector('#message')?.innerText || ''; const m = t.match(/started run (\\S+)/); "
        "return (m !== null && m[1] !== old) || t.includes('error:'); }",
        arg=earlier.group(1) if earlier else "",
        timeout=120_000,
    )
    message = page.locator("#message").inner_text()
    assert "error:" not in message, message
    run_id = started.search(message).group(1)
    wait_status(page, rf"finished · run {re.escape(run_id)} · .*step {steps}/{steps}", 180)


def test_the_two_jobs_chat_export_and_compare_in_a_browser(ui):
    """Issue #21 §1, §3, §4: the classification starting point, its data preview, a short run watched to
    the end, chat with it, export it; then the instruction starting point, a second run, both compared.
    Screenshots of each view go to the artifacts folder (docs/webui/ when regenerated, see docs/webui.md)."""
    from playwright.sync_api import sync_playwright

    url, workdir = ui
    artifacts = Path(os.environ.get("LLMTUNE_TEST_ARTIFACTS") or workdir / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    expected = {"classification": "demo_sst2", "instruction": "demo_alpaca"}  # offline (the ui fixture)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#start-classification")
        wait_text(page, "#memory-line", "lora: ", 120)  # the memory picture is drawn from the start
        page.wait_for_selector("#memory-plot img, #memory-plot svg, #memory-plot canvas", timeout=60_000)
        height = page.evaluate("document.documentElement.scrollHeight")
        page.screenshot(path=str(artifacts / "webui_train.png"), full_page=True)
        assert height <= 2 * 1000, f"the Train tab is {height} px high with its sections closed"

        # 1. the classification starting point, its data as the model sees it
        page.click("#start-classification")
        wait_text(page, "#start-message", expected["classification"], 120)
        assert expected["classification"] in page.locator("#f-dataset").inner_text().split()
        assert page.locator("#f-train_as_classification input").is_checked()
        page.click("#preview-data")
        counts = wait_text(page, "#data-preview", "rows", 120)
        assert re.search(rf"{expected['classification']}: [\d,]+ rows", counts)
        assert page.locator("#data-preview mark").count() >= 1  # the gold option of each row shown
        page.screenshot(path=str(artifacts / "webui_classification.png"), full_page=True)

        # 2. a short run, watched to the end
        train_to_the_end(page, "saves/cls", steps=6)
        cls_run = str(workdir / "saves" / "cls")
        assert (workdir / "saves" / "cls" / "adapter_config.json").is_file()

        # 3. the instruction starting point (the shipped data where the hub is out of reach), a second run
        page.click("#start-instruction")
        wait_text(page, "#start-message", expected["instruction"], 120)
        assert not page.locator("#f-train_as_classification input").is_checked()
        train_to_the_end(page, "saves/sft", steps=4)
        sft_run = str(workdir / "saves" / "sft")

        # 4. chat with it: the base model and the run's adapter, the answer streamed into the conversation
        page.get_by_role("tab", name="Chat").click()
        pick(page, "chat-model", "llmtune/tiny-llama")
        page.locator("#chat-adapter textarea, #chat-adapter input").first.fill(sft_run)
        page.click("#chat-load")
        assert "with adapter" in wait_text(page, "#chat-status", "loaded", 120)
        page.locator("#chat-input textarea, #chat-input input").first.fill("Reverse the word: map")
        page.locator("#chat-input textarea, #chat-input input").first.press("Enter")
        wait_text(page, "#chatbot", "Reverse the word: map", 120)
        page.wait_for_function(
            "(document.querySelector('#chatbot .bot-row')?.innerText || '').trim().length > 0", timeout=60_000
        )  # an answer, not an empty bubble
        page.screenshot(path=str(artifacts / "webui_chat.png"), full_page=True)

        # 5. export the classification run: its adapter merged into its base, the folder shown
        page.get_by_role("tab", name="Export").click()
        pick(page, "export-run", cls_run)
        page.wait_for_function(  # the export folder follows the run
            "run => document.querySelector('#export-dir textarea, #export-dir input')?.value === run + '-merged'",
            arg=cls_run,
            timeout=30_000,
        )
        page.locator("#export-dir textarea, #export-dir input").first.fill(str(workdir / "merged"))
        page.click("#export")
        assert str(workdir / "merged") in wait_text(page, "#export-message", "merged into", 180)
        assert (workdir / "merged" / "config.json").is_file()
        page.screenshot(path=str(artifacts / "webui_export.png"), full_page=True)

        # 6. evaluate: the runs that ended since the page was drawn are listed, no reload needed
        page.get_by_role("tab", name="Evaluate").click()
        page.locator("#e-run input").first.click()
        listed = wait_text(page, "#e-run", cls_run, 30)
        assert sft_run in listed
        pick(page, "e-run", cls_run)
        page.click("#e-preview")
        assert "config OK" in wait_text(page, "#e-message", "config OK", 60)
        page.get_by_text("Evaluation options").click()  # its adapter box lists the adapter runs that ended too
        page.locator("#e-f-adapter_name_or_path input").first.click()
        assert cls_run in wait_text(page, "#e-f-adapter_name_or_path", sft_run, 30)
        page.keyboard.press("Escape")

        # 7. compare the two runs: loss curves on one figure, a row each
        page.get_by_role("tab", name="Compare").click()
        for run in (cls_run, sft_run):
            pick(page, "compare-pick", run)
        page.keyboard.press("Escape")  # close the list of runs, which now offers both
        page.click("#compare")
        table = wait_text(page, "#compare-table", "sft", 120)
        assert "cls" in table and "last loss" in table
        assert page.locator("#compare-plot").locator("img, svg, canvas").count() > 0
        page.screenshot(path=str(artifacts / "webui_compare.png"), full_page=True)
        browser.close()
