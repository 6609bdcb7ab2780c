"""The autograder: ``python -m lessons.grade SUBMISSION.ipynb [--json]``, or a folder -> one CSV.

How a submission is graded, and why it cannot earn points it did not earn:

1. This process (the *parent*) never runs student code. It reads the notebook, removes any
   hidden-test region, and builds for every question the test cases of its visible and
   hidden checks (``lessons.assignments.checks`` / ``.hidden``).
2. A sandboxed child process (``lessons/assignments/sandbox.py``: ``python -I``, its own
   session and temp folder, resource limits, an audit hook that blocks the lab's modules,
   the repository's files, subprocesses, signals and ctypes) executes the code cells, calls
   each graded function on the cases' inputs and writes back only the outputs.
3. The parent compares the outputs with results it computes itself from the lab's code.
   What the child prints, how it patches torch or the check functions, what it claims:
   none of it reaches the comparison. Loading the outputs uses ``weights_only=True``.
4. Each cell and each question has a time limit. A cell or question that hangs, or that
   kills its process (``os._exit``), is reported, and a fresh child grades what is left.
5. A question whose function imports the lab's modules (the solutions), or opens the
   repository's files (the hidden tests), scores 0 with a message saying so.

Open questions are listed as "graded by hand" (0 automatic points) with the student's answer.
The sandbox needs Linux (``fork``, ``/proc``, resource limits and audit hooks).

One concept per module in ``lessons/grading/``: ``submission`` (reading the notebook),
``runner`` (the sandboxed children and their limits), ``scoring`` (cases, comparison,
points) and ``report`` (the results, as text and CSV); this module is the command line.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from lessons.assignments.checks import ASSIGNMENTS
from lessons.grading.report import Report, format_report, to_csv
from lessons.grading.runner import Limits, Sandbox
from lessons.grading.scoring import grade_notebook

__all__ = ["Limits", "Report", "Sandbox", "format_report", "grade_notebook", "main", "to_csv"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessons.grade", description="Grade assignment notebooks.")
    parser.add_argument("paths", nargs="+", type=Path, help="submission notebooks or folders of them")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    parser.add_argument("--csv", type=Path, help="write one CSV row per submission to this file")
    parser.add_argument("--assignment", choices=sorted(ASSIGNMENTS), help="when the notebook does not say")
    parser.add_argument("--time-limit", type=float, default=Limits.question_s, help="seconds per question")
    parser.add_argument("--cell-time-limit", type=float, default=Limits.cell_s, help="seconds per code cell")
    args = parser.parse_args(argv)
    files: list[Path] = []
    for p in args.paths:
        if p.is_dir():
            files += sorted(p.glob("*.ipynb"))
        elif p.exists():
            files.append(p)
        else:
            parser.error(f"{p} does not exist")
    limits = Limits(question_s=args.time_limit, cell_s=args.cell_time_limit)
    with Sandbox() as sandbox:
        reports = [grade_notebook(f, assignment=args.assignment, limits=limits, sandbox=sandbox) for f in files]
    folder = any(p.is_dir() for p in args.paths)
    if args.csv:
        args.csv.write_text(to_csv(reports))
    if args.json:
        print(json.dumps([asdict(r) for r in reports] if folder or len(reports) > 1 else asdict(reports[0]), indent=2))
    elif folder and not args.csv:
        print(to_csv(reports), end="")
    else:
        print("\n\n".join(format_report(r) for r in reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
