"""The notebook controls the criterion lessons share: a budget slider and a Train button with its panel.

Lessons 3 and 7 let a student pick a budget and press **Train**; what the run prints and
plots lands in an output panel under the button, and what it returns is kept (the last
run), so a notebook or a test can read it afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as widgets

BUDGETS = (("1%", 0.01), ("2%", 0.02), ("5%", 0.05), ("10%", 0.1), ("20%", 0.2))
"""The budgets a student can pick: shares of the weight entries."""


def budget_slider(value: float = 0.05, description: str = "budget") -> widgets.SelectionSlider:
    """A slider over :data:`BUDGETS` that reports only where it is released."""
    return widgets.SelectionSlider(options=list(BUDGETS), value=value, description=description,
                                   continuous_update=False)


def train_panel(run: Callable[[], Mapping[str, Any]],
                description: str = "Train") -> tuple[widgets.Button, widgets.Output, dict[str, Any]]:
    """A button, its output panel and the last run: pressing the button clears the panel, calls
    ``run()`` inside it (its prints and figures show there) and stores what it returns."""
    button = widgets.Button(description=description, button_style="primary")
    output = widgets.Output()
    last_run: dict[str, Any] = {}

    def on_click(_: object = None) -> None:
        with output:
            output.clear_output(wait=True)
            last_run.update(run())

    button.on_click(on_click)
    return button, output, last_run
