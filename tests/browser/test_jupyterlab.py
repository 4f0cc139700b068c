"""The course as a learner meets it: JupyterLab 4 in a real Chromium, driven by Playwright.

Starts ``jupyter lab`` on loopback with a token over a copy of the notebooks, opens each
chapter with a widget, runs all cells, and checks that no cell shows an error, that every
widget rendered, and that moving each widget's first control changes its figure (the PNG
bytes differ). Screenshots go to ``$COURSE_ARTIFACTS`` (default ``.ci/artifacts``).

Needs Debian's Chromium at /usr/bin/chromium (``.ci/run`` installs it); the browser is never
downloaded. The server and the browser are stopped at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHAPTERS = os.environ.get("COURSE_BROWSER_CHAPTERS", "").split() or [
    "00_setup",
    "03_recurrent_view",
    "04_gated_linear_attention",
    "05_state_space_models",
    "07_selective_ssm_mamba",
    "09_runtime_scaling",
]
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    work = tmp_path_factory.mktemp("lab")
    for name in CHAPTERS:
        shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", work)
    if (ROOT / "benchmarks").exists():
        shutil.copytree(ROOT / "benchmarks", work.parent / "benchmarks", dirs_exist_ok=True)
    token, port = secrets.token_hex(16), _free_port()
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", f"--ServerApp.token={token}", f"--ServerApp.root_dir={work}",
           "--ServerApp.open_browser=False", "--allow-root", "--LabApp.news_url=",
           "--ServerApp.disable_check_xsrf=True"]  # fmt: skip
    log = open(work / "server.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("jupyter lab did not start:\n" + (work / "server.log").read_text())
        yield f"{base}|{token}", work
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def _artifacts() -> Path:
    path = Path(os.environ.get("COURSE_ARTIFACTS", ROOT / ".ci" / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run_all(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def _accept_dialogs(page) -> None:
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    if accept.count():
        accept.first.click()


def _wait_idle(page, seconds: float = 120) -> None:
    """Wait for the kernel to be started and idle (accepting a kernel-choice dialog)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        _accept_dialogs(page)
        status = " ".join(page.locator(".jp-StatusBar-TextItem").all_inner_texts())
        if "| Idle" in status:
            return
        page.wait_for_timeout(500)
    raise AssertionError(f"kernel not idle after {seconds} s: {status!r}")


def _busy(page) -> bool:
    """A cell is queued or running (``[*]``), or the kernel is not idle."""
    prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    status = " ".join(page.locator(".jp-StatusBar-TextItem").all_inner_texts())
    return any("*" in p for p in prompts) or "| Idle" not in status


def _wait_done(page, seconds: float) -> bool:
    """Wait for the run to finish: not busy on three polls in a row."""
    deadline, quiet = time.time() + seconds, 0
    while time.time() < deadline and quiet < 3:
        quiet = 0 if _busy(page) else quiet + 1
        page.wait_for_timeout(1000)
    return quiet >= 3


def _nudge_slider(page, box) -> bool:
    handle = box.locator(".noUi-handle, .ui-slider-handle").first
    if handle.count() == 0:
        return False
    handle.focus()
    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    return True


def _press_toggle(page, box) -> bool:
    button = box.locator(".widget-toggle-button:not(.mod-active)").first
    if button.count() == 0:
        return False
    button.click()
    return True


def _pick_option(page, box) -> bool:
    select = box.locator("select:not([multiple])").first
    if select.count() == 0:
        return False
    options = select.locator("option").all_inner_texts()
    current = select.input_value()
    others = [o for o in options if o != current]
    if not others:
        return False
    select.select_option(label=others[0])
    return True


def _click_checkbox(page, box) -> bool:
    checkbox = box.locator("input[type=checkbox]").first
    if checkbox.count() == 0:
        return False
    checkbox.click()
    return True


def _figure_images(page) -> list[str]:
    return page.eval_on_selector_all(
        ".jp-OutputArea-output img", "els => els.map(e => e.getAttribute('src') || '')"
    )


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_runs_and_widgets_respond(lab, browser, chapter: str) -> None:
    url_token, work = lab
    base, token = url_token.split("|")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        # a workspace of its own, reset: only this notebook is open in the page
        page.goto(f"{base}/lab/workspaces/{chapter}/tree/{chapter}.ipynb?reset&token={token}")
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=90_000)
        _wait_idle(page)
        _run_all(page)
        page.wait_for_timeout(3000)
        done = _wait_done(page, 240)
        page.screenshot(path=str(_artifacts() / f"{chapter}_ran.png"), full_page=False)
        assert done, f"{chapter}: cells still running after 240 s"
        errors = page.locator(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        )
        tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
        assert not tracebacks, f"{chapter}: error output\n{tracebacks[0][:2000]}"
        # one output area per displayed widget (its controls may nest several boxes)
        widgets = page.locator(".jp-OutputArea-output:has(.jupyter-widgets)")
        assert widgets.count() >= 1, f"{chapter}: no widget rendered"
        page.screenshot(path=str(_artifacts() / f"{chapter}_before.png"), full_page=False)
        moved = 0
        for i in range(widgets.count()):
            box = widgets.nth(i)
            box.scroll_into_view_if_needed()
            before = _figure_images(page)
            for attempt in (_nudge_slider, _press_toggle, _pick_option, _click_checkbox):
                if not attempt(page, box):
                    continue
                for _ in range(30):
                    if _figure_images(page) != before:
                        break
                    page.wait_for_timeout(500)
                if _figure_images(page) != before:
                    break
            assert _figure_images(page) != before, f"{chapter}: widget {i}'s figure did not change"
            moved += 1
            box.screenshot(path=str(_artifacts() / f"{chapter}_widget{i}_moved.png"))
        assert moved >= 1, f"{chapter}: no widget had a control to move"
        page.screenshot(path=str(_artifacts() / f"{chapter}_after.png"), full_page=False)
    finally:
        page.close()
    saved = json.loads((work / f"{chapter}.ipynb").read_text())
    assert saved["cells"], "the notebook copy is empty"
