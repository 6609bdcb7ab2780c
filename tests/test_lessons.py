"""Every lesson executes top to bottom in fast mode, and its widgets respond headlessly.

The lessons are kept as jupytext percent-format sources; here they are converted to
notebooks and run in a real Jupyter kernel with nbclient, exactly as a student would.
Where the browser test can run (tests/lesson_checks.py says when), it executes each lesson
once with the same widget-driving cell and the same checks, and the nbclient run here skips:
one execution per lesson per test run, not two.
"""

import copy
import warnings
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError
from nbclient.output_widget import OutputWidget

from lesson_checks import WIDGET_CHECKS, browser_runs_the_lessons, check_executed
from lessons.notebook_run import patch_message_polling

patch_message_polling()  # jupyter/nbclient#312: see lessons/notebook_run.py

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))


def test_every_lesson_has_a_widget_check() -> None:
    assert LESSONS, "no lesson sources found"
    assert {p.name for p in LESSONS} == set(WIDGET_CHECKS)


def _widget_errors(client: NotebookClient) -> list[str]:
    """Tracebacks shown inside Output widgets.

    ipywidgets' Output context displays an exception raised inside it and swallows it, so
    a failing callback would otherwise surface only as a missing result in the checks.
    nbclient mimics the front end for Output widgets, so their outputs are kept here.
    """
    return ["\n".join(o.get("traceback", [])) for w in client.comm_objects.values() if isinstance(w, OutputWidget)
            for o in w.outputs if o.get("output_type") == "error"]


def _execute(source: Path) -> nbformat.NotebookNode:
    nb = jupytext.read(source)
    nb.cells.append(nbformat.v4.new_code_cell(WIDGET_CHECKS[source.name]))
    client = NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    try:
        client.execute()
    finally:
        shown = _widget_errors(client)
        if shown:
            raise AssertionError(f"{source.name}: a widget callback raised:\n" + "\n\n".join(shown))
    return nb


@pytest.mark.skipif(browser_runs_the_lessons(), reason="tests/test_browser.py executes every lesson in Chromium "
                    "with the same widget-driving cell and checks (tests/lesson_checks.py); "
                    "LAB_TEST_NBCLIENT=1 runs this too")
@pytest.mark.parametrize("source", LESSONS, ids=lambda p: p.stem)
def test_lesson_executes_in_fast_mode(source: Path) -> None:
    try:
        nb = _execute(source)
    except CellTimeoutError:
        # Seen rarely on a loaded 2-core machine: kernel and client both idle, one Jupyter
        # message lost. One fresh kernel retries; a lesson that truly hangs times out twice.
        warnings.warn(f"{source.name}: a cell timed out; retrying once in a fresh kernel")
        nb = _execute(source)
    check_executed(source.name, nb.cells)


def test_lab_builds_each_notebook_once_and_keeps_a_students_edits(tmp_path: Path) -> None:
    from lessons import lab

    first = lab.build(tmp_path)
    assert [built for _, built in first] == [True] * len(LESSONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{p.stem}.ipynb" for p in LESSONS)
    notebook = first[0][0]
    nb = nbformat.read(notebook, as_version=4)
    assert nb.metadata.kernelspec == lab.KERNELSPEC  # ipykernel's own name: an untouched lesson opens saved
    nb.cells.append(nbformat.v4.new_code_cell("my_answer = 42"))
    nbformat.write(nb, notebook)
    again = lab.build(tmp_path)
    assert [built for _, built in again] == [False] * len(LESSONS)
    assert nbformat.read(notebook, as_version=4).cells[-1].source == "my_answer = 42"
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="--dir"):
        lab.build(tmp_path / "file")


def test_jupyterlab_is_allowed_to_run_as_root_only_when_root_starts_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """JupyterLab refuses to start as root without --allow-root (every container runs as root)."""
    from lessons import lab

    assert "--allow-root" in lab.server_args(tmp_path, as_root=True)
    assert "--allow-root" not in lab.server_args(tmp_path, as_root=False)
    monkeypatch.setattr(lab.os, "geteuid", lambda: 0)
    assert "--allow-root" in lab.server_args(tmp_path)
    monkeypatch.setattr(lab.os, "geteuid", lambda: 1000)
    assert "--allow-root" not in lab.server_args(tmp_path)


def test_saving_drops_widget_views_that_would_reopen_as_errors() -> None:
    from lessons import lab

    view = {"model_id": "abc", "version_major": 2, "version_minor": 0}
    bar = {"output_type": "display_data", "metadata": {},
           "data": {lab.WIDGET_VIEW: view, "text/plain": "train:   0%|          | 0/300 [00:00<?, ?it/s]"}}
    panel = {"output_type": "display_data", "metadata": {},
             "data": {lab.WIDGET_VIEW: view, "text/plain": "VBox(children=(Button(description='Train'),))"}}
    text = {"output_type": "stream", "name": "stdout", "text": "fast mode: True\n"}
    model = {"type": "notebook", "content": {"metadata": {"widgets": {"state": {}}},
                                             "cells": [{"cell_type": "code", "outputs": [text, bar, panel, copy.deepcopy(panel)]}]}}
    lab.strip_widget_views(model)
    outputs = model["content"]["cells"][0]["outputs"]
    assert "widgets" not in model["content"]["metadata"]
    assert all(lab.WIDGET_VIEW not in o.get("data", {}) for o in outputs)
    assert [o.get("data", {}).get("text/plain") for o in outputs] == [None, lab.CONTROLS_NOTE]


@pytest.mark.parametrize("source", LESSONS, ids=lambda p: p.stem)
def test_lesson_states_objectives_time_and_ends_with_a_summary_and_questions(source: Path) -> None:
    """What a student working alone needs around the experiments: what they will learn, what they need,
    how long it takes; a prediction before a main experiment, checked after it; a summary printed from
    the run's numbers (a code cell under the heading); questions."""
    cells = jupytext.read(source).cells
    text = "\n".join(c.source for c in cells)
    for needed in ("**By the end you can**", "**Prerequisites**", "**Time**", "**Predict before you run.**",
                   "## Questions to think about"):
        assert needed in text, f"{source.name}: no {needed}"
    assert "TIME_FAST" not in text and "TIME_FULL" not in text, f"{source.name}: the time is not filled in"
    assert any(c.cell_type == "code" and "reveal(prediction" in c.source for c in cells), f"{source.name}: no reveal"
    summary = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and "## Summary" in c.source)
    assert cells[summary + 1].cell_type == "code" and "print(" in cells[summary + 1].source, source.name
