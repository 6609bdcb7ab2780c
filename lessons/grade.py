"""The autograder: ``python -m lessons.grade SUBMISSION.ipynb [--json]``, or a folder -> one CSV.

How a submission is graded, and why it cannot earn points it did not earn:

1. This process (the *parent*) never runs student code. It reads the notebook as data,
   removes any hidden-test region, and builds every question's test cases, visible and
   hidden (``lessons.assignments.checks`` / ``.hidden``).
2. A child process runs the code cells and calls each graded function on the cases'
   inputs, inside bubblewrap (``lessons/grading/runner.py``): as ``nobody``, with its own
   PID, network, IPC and mount namespaces, seeing only the Python environment (read-only),
   the child script and a private ``/tmp``: not the repository (solutions, hidden tests),
   not the other submissions, not build or temp folders. An audit hook inside is a second
   line: a question whose code tries to import the lab, start processes, send signals,
   open sockets or use ctypes scores 0 with a message saying so.
3. The child sends back only outputs, as JSON lines on a pipe. The parent validates each
   output (types, shapes, sizes, a budget of values; ``lessons.grading.wire``) and then
   compares it with results it computes itself from the lab's code. What the child
   prints, patches or claims reaches neither the comparison nor the report as a line.
4. The parent keeps the clock: each cell, each question and each submission has a
   wall-clock limit that nothing the child writes can reset. A cell or question that hangs
   or kills its process is reported; a fresh child grades what is left.
5. In a folder, every submission is graded on its own (one that breaks the grader costs its
   own row) and its CSV row is written as soon as it is graded.

Without bubblewrap the grader refuses to grade (install it: ``apt-get install bubblewrap``),
unless ``--trusted`` says the code is trusted. Open questions are listed as "graded by
hand" (0 automatic points) with the student's answer. Linux only.

One concept per module in ``lessons/grading/``: ``submission`` (reading the notebook),
``runner`` (the isolated children and their limits), ``wire`` (reading their outputs back),
``scoring`` (cases, comparison, points) and ``report`` (text and CSV); this is the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from lessons.assignments.checks import ASSIGNMENTS
from lessons.grading.report import CsvWriter, Report, format_report, one_line, to_csv
from lessons.grading.runner import IsolationUnavailable, Limits, Sandbox
from lessons.grading.scoring import grade_notebook
from lessons.grading.submission import identify, read_notebook

__all__ = ["IsolationUnavailable", "Limits", "Report", "Sandbox", "format_report", "grade_notebook", "main",
           "to_csv"]


def _question_ids(files: list[Path], forced: str | None) -> list[str]:
    """The CSV's columns: the questions of every assignment the notebooks name (read as data)."""
    names = set()
    for f in files:
        try:
            names.add(identify(read_notebook(f), f, forced))
        except Exception:  # noqa: BLE001 - an unreadable notebook gets its row, with no question columns
            continue
    return [q.id for name in sorted(names) for q in ASSIGNMENTS[name].questions]


def _grade_one(path: Path, assignment: str | None, limits: Limits, sandbox: Sandbox) -> Report:
    try:
        return grade_notebook(path, assignment=assignment, limits=limits, sandbox=sandbox)
    except Exception as err:  # noqa: BLE001 - one submission that breaks the grader costs only its own row
        return Report(str(path), assignment or "?", 0, 0, notes=[one_line(f"grader error: {type(err).__name__}: {err}")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessons.grade", description="Grade assignment notebooks.")
    parser.add_argument("paths", nargs="+", type=Path, help="submission notebooks or folders of them")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    parser.add_argument("--csv", type=Path, help="write one CSV row per submission to this file, as each is graded")
    parser.add_argument("--assignment", choices=sorted(ASSIGNMENTS), help="when the notebook does not say")
    parser.add_argument("--time-limit", type=float, default=Limits.question_s, help="seconds per question (default: %(default)s)")
    parser.add_argument("--cell-time-limit", type=float, default=Limits.cell_s, help="seconds per code cell (default: %(default)s)")
    parser.add_argument("--submission-time-limit", type=float, default=Limits.submission_s,
                        help="seconds per submission, restarts included (default: %(default)s)")
    parser.add_argument("--trusted", action="store_true",
                        help="grade without bubblewrap's isolation (only for code you trust)")
    args = parser.parse_args(argv)
    files: list[Path] = []
    for p in args.paths:
        if p.is_dir():
            files += sorted(p.glob("*.ipynb"))
        elif p.exists():
            files.append(p)
        else:
            parser.error(f"{p} does not exist")
    for name, value in (("--time-limit", args.time_limit), ("--cell-time-limit", args.cell_time_limit),
                        ("--submission-time-limit", args.submission_time_limit)):
        if not value > 0:
            parser.error(f"{name} must be a positive number of seconds, got {value}")
    limits = Limits(question_s=args.time_limit, cell_s=args.cell_time_limit, submission_s=args.submission_time_limit)
    folders = tuple(str(p.resolve()) for p in args.paths if p.is_dir()) + tuple(str(f.resolve().parent) for f in files)
    try:
        sandbox = Sandbox(trusted=args.trusted, hide=tuple(dict.fromkeys(folders)))
    except IsolationUnavailable as err:
        print(f"python -m lessons.grade: refusing to grade: {err}", file=sys.stderr)
        return 2
    reports = []
    csv_file = open(args.csv, "w", newline="", encoding="utf-8") if args.csv else None
    try:
        writer = CsvWriter(csv_file, _question_ids(files, args.assignment)) if csv_file else None
        for f in files:
            reports.append(_grade_one(f, args.assignment, limits, sandbox))
            if writer:
                writer.write(reports[-1])
    finally:
        sandbox.close()
        if csv_file:
            csv_file.close()
    folder = any(p.is_dir() for p in args.paths)
    if args.json:
        print(json.dumps([asdict(r) for r in reports] if folder or len(reports) > 1 else asdict(reports[0]), indent=2))
    elif folder and not args.csv:
        print(to_csv(reports), end="")
    else:
        print("\n\n".join(format_report(r) for r in reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
