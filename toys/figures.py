"""The figure every plot of the toy studies starts from: a cleared figure and its panels side by side.

Plots take an optional ``fig`` so a notebook widget can redraw into the same figure; without one
they make a new figure of their own size. matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

from typing import Any


def panels(fig: Any, figsize: tuple[float, float], ncols: int = 1) -> tuple[Any, Any]:
    """``fig`` (or a new figure of ``figsize``), cleared, and its axes: one for ``ncols=1``, else a row of ``ncols``."""
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=figsize)
    fig.clear()
    return fig, fig.subplots(1, ncols) if ncols > 1 else fig.subplots()
