"""The notebook controls the lessons share: a budget slider, and a button whose job shows it is running.

Every lesson's main button goes through :func:`run_on_click`: while its job runs the button is
disabled (a second click cannot start it twice) and says so, its output panel says the job
started and how long it took, and the job's own progress bars show in between. Lessons 3 and 7
use :func:`train_panel`, which also keeps what the run returns (the last run), so a notebook
or a test can read it afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as widgets

BUDGETS = (("1%", 0.01), ("2%", 0.02), ("5%", 0.05), ("10%", 0.1), ("20%", 0.2))
"""The budgets a student can pick: shares of the weight entries."""


LABEL_STYLE = {"description_width": "initial"}
"""A description shown in full rather than cut at the default 8em."""


def wide() -> widgets.Layout:
    """The layout of a slider: 44em wide, so a small drag moves one step, not a tenth of the range."""
    return widgets.Layout(width="44em")


def run_on_click(button: widgets.Button, output: widgets.Output, job: Callable[[], None]) -> None:
    """Make ``button`` run ``job()`` inside ``output``, visibly.

    On a click the panel is cleared, the button is disabled and reads "<label>: running...",
    the panel says the job started (the job's progress bars follow) and, at the end, how many
    seconds it took; the button comes back even when the job raises (the panel shows the
    traceback). A click arriving while a job runs is ignored.
    """
    label = button.description

    def on_click(_: object = None) -> None:
        if button.disabled:
            return
        button.disabled, button.description = True, f"{label}: running..."
        started = time.perf_counter()
        try:
            with output:
                output.clear_output(wait=True)
                print(f"{label}: running (progress below)...")
                job()
                print(f"{label}: done in {time.perf_counter() - started:.1f} s")
        finally:
            button.disabled, button.description = False, label

    button.on_click(on_click)


def budget_slider(value: float = 0.05, description: str = "budget") -> widgets.SelectionSlider:
    """A slider over :data:`BUDGETS` that reports only where it is released."""
    return widgets.SelectionSlider(options=list(BUDGETS), value=value, description=description,
                                   continuous_update=False, layout=wide())


def train_panel(run: Callable[[], Mapping[str, Any]],
                description: str = "Train") -> tuple[widgets.Button, widgets.Output, dict[str, Any]]:
    """A button, its output panel and the last run: pressing the button runs ``run()`` in the panel
    through :func:`run_on_click` (its prints and figures show there) and stores what it returns."""
    button = widgets.Button(description=description, button_style="primary")
    output = widgets.Output()
    last_run: dict[str, Any] = {}
    run_on_click(button, output, lambda: last_run.update(run()))
    return button, output, last_run
