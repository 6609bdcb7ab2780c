"""Every lesson as a student sees it: JupyterLab in a real Chromium, Run All in fast mode.

tests/test_lessons.py proves the lessons execute (nbclient, widget callbacks called from
Python); this test checks what the front end makes of them. One JupyterLab server (on
127.0.0.1, with a token, ``LAB_FAST=1``) serves the notebooks ``make lab`` builds; headless
Chromium, driven by Selenium through the system chromedriver, opens each one, runs all cells
and asserts: no error output, no "Error displaying widget" / "model not found" / raw widget
repr, every widget view rendered as a control, the notebook not marked unsaved on open, the
figures drawn, the lesson's main button changing its output panel (disabled while its job
runs), and, saved, closed and reopened, no stale widget view (a note where the controls were). The page
loads JupyterLab once per worker; later lessons and the reopening go through JupyterLab's own
``docmanager:open``, as a student opens a file (each load of the app cost Chromium several CPU seconds).
Before that, the lesson's widget-driving cell (tests/lesson_checks.py) is appended and run, and the
executed cells get the checks tests/test_lessons.py applies where no browser runs (so each lesson
executes once per test run). Each lesson's first exercise is then solved as a student would: its check cell showed the
"not implemented yet" failure after Run All (a cell tagged ``raises-exception``, so Run All
went on past it); the solution the lesson folds away is put into the stub cell (as a paste
would), the stub and the check cell are run, and the pass line appears; a wrong answer then
gets the check's failure message naming the case.
Per lesson, pytest's temporary folder gets a screenshot after the main button's job
(``<lesson>.png``) and one where the test ended or failed (``<lesson>-last.png``). Without
Chromium, its driver or Selenium the test skips with the reason.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lesson_checks import CHROMEDRIVER, CHROMIUM, WIDGET_CHECKS, check_executed
from lessons import lab

ROOT = Path(__file__).resolve().parents[1]
LESSON_TIMEOUT_S = 300.0
CLICK_TIMEOUT_S = 120.0
BROKEN = ("Jupyter news", "Error displaying widget", "model not found", "Traceback (most recent call last)", "Loading widget...")
RAW_WIDGET = re.compile(r"^(\w*Box|Output|Button|\w*Slider|Dropdown|ToggleButtons|Checkbox|Select\w*|Label|HTML|Tab)\(")
"""An ipywidget shown as its text form (its front end did not render it)."""
# The notebook's settings for the run: every cell attached to the page (no windowing), so the
# checks see every output, not only those scrolled into view.
SETTINGS = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"}}

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs the system Chromium and its driver (apt-get install chromium chromium-driver)")

# JavaScript run in the page (window.jupyterapp: the server runs with expose_app_in_browser).
# Polled every second while a lesson runs: with arguments[1] false only the text and error outputs come
# back (what the waits check), not the figures and widget states, which are fetched once at the end.
NOTEBOOK_STATE = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!w || !w.context || w.context.path !== arguments[0] || !w.sessionContext.session
    || !w.sessionContext.session.kernel) return null;
const full = arguments[1];
const cells = [];
for (const cell of w.content.model.cells) {
  const outputs = [];
  for (let i = 0; cell.type === 'code' && i < cell.outputs.length; i++) {
    const o = cell.outputs.get(i);  // only the outputs asked for are serialised (figures are large)
    if (full || o.type === 'stream' || o.type === 'error') outputs.push(o.toJSON());
  }
  cells.push({type: cell.type, count: cell.type === 'code' ? cell.executionCount : null, outputs,
              tags: cell.getMetadata('tags') || []});
}
return JSON.stringify({status: w.sessionContext.session.kernel.status, dirty: w.context.model.dirty,
                       pending: [...w.node.querySelectorAll('.jp-InputPrompt')].filter(p => p.textContent.includes('*')).length,
                       cells});
"""
APPEND_CELL = """
const w = window.jupyterapp.shell.currentWidget;
w.content.model.sharedModel.insertCell(w.content.model.cells.length, {cell_type: 'code', source: arguments[0]});
return w.content.model.cells.length - 1;
"""
"""Append a code cell holding ``arguments[0]`` to the open notebook; return its index."""
RUN_CELL = """
const w = window.jupyterapp.shell.currentWidget;
w.content.activeCellIndex = arguments[0];
if (arguments[1] !== null) w.content.widgets[arguments[0]].model.sharedModel.setSource(arguments[1]);
w.content.mode = 'command';
return window.jupyterapp.commands.execute('notebook:run-cell').then(() => true);
"""
"""Put ``arguments[1]`` (unless null) into cell ``arguments[0]`` and run that cell, as a paste then Ctrl-Enter would."""
PAGE_TEXT = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
const cells = w && w.content && w.content.widgets ? [...w.content.widgets] : [];
return [document.body.innerText,
        cells.filter(c => (c.model.getMetadata('tags') || []).includes('raises-exception')).map(c => c.node.innerText)];
"""
OPEN_IN_APP = """
const app = window.jupyterapp;
if (!app || !app.shell) return false;
for (const w of [...app.shell.widgets('main')]) w.dispose();
app.commands.execute('docmanager:open', {path: arguments[0]});
return true;
"""
"""Close every open document (saved, or left by a finished lesson) and open ``arguments[0]`` in the JupyterLab
already loaded in the page, as a student does from the file browser; false where no JupyterLab is loaded yet
(the page must be fetched)."""
OUTPUT_PANELS = """
return [...window.jupyterapp.shell.currentWidget.node.querySelectorAll('.widget-output')]
  .map(e => e.innerHTML);
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check: Callable[[], Any], timeout: float, poll: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """One JupyterLab for all lessons: (base url, token, the folder of built notebooks)."""
    folder = tmp_path_factory.mktemp("lab")
    lab.build(folder)
    settings = tmp_path_factory.mktemp("settings")
    for name, values in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, LAB_FAST="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path_factory.mktemp("ws")))
    log = (tmp_path_factory.mktemp("log") / "jupyterlab.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser",
                             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
                             f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True",
                             *lab.server_args(folder)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).status == 200
        except OSError:
            assert proc.poll() is None, f"JupyterLab exited (code {proc.returncode}); log: {log.name}"
            return False

    try:
        _wait("JupyterLab to answer", up, 120)
        yield base, token, folder
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless system Chromium with a fresh profile and no network side traffic."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _state(driver: Any, name: str, *, full: bool = False) -> dict[str, Any] | None:
    """The open notebook's kernel status and cells; its outputs: only text and errors unless ``full``."""
    raw = driver.execute_script(NOTEBOOK_STATE, name, full)
    return json.loads(raw) if raw else None


def _errors(state: dict[str, Any], *, checks: bool = False) -> list[str]:
    """Error outputs of the ordinary cells, or (``checks=True``) of the exercises' check cells."""
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in state["cells"]
            if ("raises-exception" in c["tags"]) == checks for o in c["outputs"] if o.get("output_type") == "error"]


def _first_exercise(source: Path) -> tuple[str, str]:
    """The name of a lesson's first exercise and the solution the lesson folds away for it."""
    import jupytext

    cells = jupytext.read(source).cells
    (check,) = [c for c in cells if "raises-exception" in c.metadata.get("tags", [])][:1]
    name = check.source.strip()[len("check_"):].split("(")[0]
    solutions = [m for c in cells if c.cell_type == "markdown"
                 for m in re.findall(r"<summary>Solution</summary>\s*```python\n(.*?)```", c.source, re.S)]
    (solution,) = [s for s in solutions if re.search(rf"^def {name}\(", s, re.M)]
    return name, solution


def _open(driver: Any, base: str, token: str, name: str) -> None:
    """Open notebook ``name``: in the JupyterLab the page already runs (its other documents closed), else by
    fetching the page. Loading JupyterLab costs Chromium several CPU seconds; one load per worker is enough."""
    if not driver.execute_script(OPEN_IN_APP, name):
        driver.get(f"{base}/lab/tree/{name}?reset&token={token}")


def _run_cell(driver: Any, name: str, index: int, text: str | None, timeout: float = 60.0) -> dict[str, Any]:
    """Run one cell (after putting ``text`` into it) and return the notebook's state once the kernel is idle."""
    before = _state(driver, name)["cells"][index]["count"]
    driver.execute_script(RUN_CELL, index, text)
    return _wait(f"{name}: cell {index} to run", lambda: (s := _state(driver, name)) and s["status"] == "idle"
                 and not s["pending"] and s["cells"][index]["count"] not in (None, before) and s, timeout, poll=0.2)


def _solve_first_exercise(driver: Any, name: str, source: Path, state: dict[str, Any]) -> None:
    """The student's path through an exercise: the stub fails its check, the solution passes, a wrong answer fails."""
    exercise, solution = _first_exercise(source)
    stub = next(i for i, c in enumerate(state["cells"]) if c["type"] == "code" and i + 1 < len(state["cells"])
                and "raises-exception" in state["cells"][i + 1]["tags"])
    check = stub + 1

    def shown(s: dict[str, Any]) -> str:
        return "\n".join("".join(o.get("text", "")) + f"{o.get('ename', '')}: {o.get('evalue', '')}"
                         for o in s["cells"][check]["outputs"])

    assert f"{exercise}: not implemented yet" in shown(state), f"{name}: the stub's check showed {shown(state)!r}"
    _run_cell(driver, name, stub, solution)
    passed = _run_cell(driver, name, check, None)
    assert re.search(rf"{exercise}: all \d+ cases passed", shown(passed)), f"{name}: solved, the check showed {shown(passed)!r}"
    _run_cell(driver, name, stub, f"def {exercise}(*args, **kwargs):\n    return None\n")
    failed = _run_cell(driver, name, check, None)
    assert re.search(rf"AssertionError: {exercise}: case .+ failed: expected .+, got None", shown(failed)), (
        f"{name}: a wrong answer's check showed {shown(failed)!r}")


def _rendered(driver: Any, name: str) -> None:
    """Wait until no widget view is still loading: views made by the last cell or click (a progress bar in
    an output panel) render a moment after the kernel goes idle, longer on a loaded machine."""
    time.sleep(1.0)
    _wait(f"{name}: every widget view to render", lambda: "Loading widget..." not in _page_text(driver), 60)


def _page_text(driver: Any) -> str:
    """The page's text without the exercises' check cells, whose AssertionError (with its traceback) is their job."""
    text, checks = driver.execute_script(PAGE_TEXT)
    for shown in checks:
        text = text.replace(shown, "")
    return text


@pytest.mark.parametrize("source", lab.SOURCES, ids=lambda p: p.stem)
def test_lesson_in_a_real_browser(source: Path, server: tuple[str, str, Path], browser: Any,
                                  tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    base, token, folder = server
    name = f"{source.stem}.ipynb"
    _open(browser, base, token, name)
    try:
        opened = _wait(f"{name} to open with an idle kernel", lambda: (s := _state(browser, name))
                       and s["status"] == "idle" and s, 120)
        time.sleep(1.0)  # give the front end a moment to settle metadata it would mark unsaved
        assert not _state(browser, name)["dirty"], f"{name} is marked unsaved on open (kernelspec mismatch?)"
        assert all(c["count"] is None for c in opened["cells"])

        browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")

        def finished() -> dict[str, Any] | None:
            s = _state(browser, name)
            assert not (s and _errors(s)), f"{name}: error output: {_errors(s)}"
            unexpected = [e for e in _errors(s, checks=True) if "not implemented yet" not in e] if s else []
            assert not unexpected, f"{name}: an exercise's check failed with more than the stub's message: {unexpected}"
            done = s and s["status"] == "idle" and not s["pending"] and all(
                c["count"] is not None for c in s["cells"] if c["type"] == "code")
            return s if done else None

        _wait(f"{name} to run all cells", finished, LESSON_TIMEOUT_S, poll=1.0)
        _rendered(browser, name)
        # The lesson's main button first, on the controls as Run All left them (the widget-driving cell below
        # presses it too, and pressed again with the same settings it would redraw the same panel).
        button = browser.find_elements(By.CSS_SELECTOR, ".jupyter-widgets button.mod-primary")[-1]
        before = browser.execute_script(OUTPUT_PANELS)
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
        button.click()
        _wait(f"{name}: '{button.text}' to be disabled while its job runs",
              lambda: not button.is_enabled(), 30, poll=0.05)
        _wait(f"{name}: '{button.text}' to finish", lambda: button.is_enabled() and (s := _state(browser, name))
              and s["status"] == "idle", CLICK_TIMEOUT_S)
        _rendered(browser, name)
        after = browser.execute_script(OUTPUT_PANELS)
        assert after != before, f"{name}: pressing the main button changed no output panel"
        text = _page_text(browser)
        assert not [b for b in BROKEN if b in text], f"{name}: after the click the page shows {[b for b in BROKEN if b in text]}"

        browser.save_screenshot(str(tmp_path / f"{source.stem}.png"))  # the main control and what it drew
        print(f"screenshot: {tmp_path / f'{source.stem}.png'}")

        # Then the widgets driven from the kernel as a student would set them (tests/lesson_checks.py), and the
        # checks every executed lesson gets, on what the front end holds.
        _run_cell(browser, name, browser.execute_script(APPEND_CELL, WIDGET_CHECKS[source.name]), None, LESSON_TIMEOUT_S)
        _rendered(browser, name)  # widget views render after the kernel went idle
        state = _state(browser, name, full=True)
        check_executed(name, state["cells"])
        raised = [p for p in browser.execute_script(OUTPUT_PANELS) if "Traceback (most recent call last)" in p]
        assert not raised, f"{name}: a widget callback raised (shown in its output panel, hidden or not): {raised[:1]}"
        text = _page_text(browser)
        assert not [b for b in BROKEN if b in text], f"{name}: the page shows {[b for b in BROKEN if b in text]}"
        shown = browser.execute_script("return [...document.querySelectorAll('.jp-OutputArea-output')]"
                                       ".map(e => e.innerText).join('\\n')")
        raw = [t for t in shown.splitlines() if RAW_WIDGET.match(t.strip())]
        assert not raw, f"{name}: widgets shown as raw reprs: {raw[:3]}"
        views = sum(lab.WIDGET_VIEW in o.get("data", {}) and lab.is_control(o) for c in state["cells"] for o in c["outputs"])
        controls = browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output > .jupyter-widgets")
        assert views and len(controls) >= views, f"{name}: {views} widget views, {len(controls)} rendered as controls"
        images = sum("image/png" in o.get("data", {}) for c in state["cells"] for o in c["outputs"])
        drawn = browser.find_elements(By.CSS_SELECTOR, ".jp-RenderedImage img")
        assert images >= 3 and len(drawn) >= images, f"{name}: {images} figures saved, {len(drawn)} drawn"

        _solve_first_exercise(browser, name, source, state)

        # Saved and reopened, as a student comes back to a lesson: no stale widget views.
        browser.execute_script("window.jupyterapp.commands.execute('docmanager:save')")
        _wait(f"{name} to be saved", lambda: (s := _state(browser, name)) and not s["dirty"], 30)
        saved = (folder / name).read_text()
        assert lab.WIDGET_VIEW not in saved and lab.CONTROLS_NOTE in saved, f"{name}: widget views saved"
        _open(browser, base, token, name)
        _wait(f"{name} to reopen", lambda: _state(browser, name), 120)
        time.sleep(1.0)
        text = _page_text(browser)
        assert not [b for b in BROKEN if b in text], f"{name}: reopened, the page shows {[b for b in BROKEN if b in text]}"
        assert lab.CONTROLS_NOTE in text
    finally:
        browser.save_screenshot(str(tmp_path / f"{source.stem}-last.png"))  # where it ended (or failed)
        browser.execute_script("const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                               "if (w && w.sessionContext) w.sessionContext.shutdown();")
