"""How long does each lesson take to run? Executes lessons in a Jupyter kernel and times them.

A lesson's header states its running time in fast mode (``LAB_FAST=1``) and full mode;
this script is where those numbers come from (``benchmarks/results/lesson_times.md``). Each
lesson is converted from its jupytext source and run top to bottom with nbclient, as
``tests/test_lessons.py`` runs it: ``--widget-checks`` also appends that test's cell that
drives the lesson's widgets (a few seconds), as the fast-mode numbers were measured. The
exercises' check cells fail on the untouched stubs (they are tagged ``raises-exception``,
so the run goes on). Prints the wall time, the load average before and after (the lab's
machines are shared: say the load beside a time) and the slowest cells, so a cell over
30 s can be checked for a progress bar.

    LAB_FAST=1 python -m benchmarks.lesson_times 01 02 --widget-checks
    LAB_FAST= python -m benchmarks.lesson_times 07
"""

from __future__ import annotations

import argparse
import os
import runpy
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def time_lesson(number: str, widget_checks: bool = False,
                folder: Path = ROOT / "lessons") -> tuple[float, list[tuple[float, int, str]], int]:
    """(wall seconds, [(seconds, cell index, first line)] slowest first, error outputs outside check cells)."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    from lessons.notebook_run import patch_message_polling

    patch_message_polling()  # jupyter/nbclient#312: no cell waiting forever on a missed message

    sources = sorted(folder.glob(f"{number}_*.py"))
    if not sources:
        raise ValueError(f"lesson {number!r}: no {folder}/{number}_*.py")
    notebook = jupytext.read(sources[0])
    if widget_checks:
        checks = runpy.run_path(str(ROOT / "tests" / "lesson_checks.py"))["WIDGET_CHECKS"]
        if sources[0].name not in checks:
            raise ValueError(f"lesson {number!r}: tests/lesson_checks.py has no widget-driving cell for "
                             f"{sources[0].name}")
        notebook.cells.append(nbformat.v4.new_code_cell(checks[sources[0].name]))
    cells: list[tuple[float, int, str]] = []

    class Timed(NotebookClient):
        async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):  # noqa: ANN001
            started = time.monotonic()
            try:
                return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
            finally:
                first = cell.source.splitlines()[0][:70] if cell.source else ""
                cells.append((time.monotonic() - started, cell_index, first))

    started = time.monotonic()
    Timed(notebook, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    wall = time.monotonic() - started
    errors = sum(o.get("output_type") == "error" for c in notebook.cells
                 if "raises-exception" not in c.metadata.get("tags", []) for o in c.get("outputs", []))
    return wall, sorted(cells, reverse=True), errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="+", help="lesson numbers, e.g. 01 07")
    parser.add_argument("--widget-checks", action="store_true", help="also drive the widgets as tests/test_lessons.py does")
    args = parser.parse_args(argv)
    mode = "fast" if os.environ.get("LAB_FAST", "").strip().lower() in ("1", "true", "yes") else "full"
    for number in args.lessons:
        load = os.getloadavg()[0]
        wall, cells, errors = time_lesson(number, args.widget_checks)
        print(f"lesson {number}, {mode} mode: {wall:.0f} s (load {load:.1f} -> {os.getloadavg()[0]:.1f}); "
              f"{errors} error outputs outside the exercises' check cells")
        for seconds, index, first in cells[:5]:
            print(f"  cell {index:>3}: {seconds:7.1f} s  {first}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
