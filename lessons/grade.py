"""The autograder: ``python -m lessons.grade SUBMISSION.ipynb [--json]``, or a folder -> a gradebook CSV.

How a submission is graded, and why it cannot earn points it did not earn:

1. This process (the *parent*) never runs student code. It reads the notebook as data,
   removes any hidden-test region, and takes every question's cases, visible and hidden,
   with their expected outputs from the assignment's source (``lessons.assignments.spec``:
   the reference solution's outputs, computed here; ``--hidden DIR`` for private hidden tests).
2. A child process runs the code cells and calls each graded function on the cases'
   inputs, inside bubblewrap (``lessons/grading/runner.py``): as ``nobody``, with its own
   PID, network, IPC and mount namespaces, seeing only the Python environment (read-only),
   the child script and a private ``/tmp``: not the repository (solutions, hidden tests),
   not the other submissions, not build or temp folders. An audit hook inside is a second
   line: a question whose code tries to import the lab, start processes, send signals,
   open sockets or use ctypes scores 0 with a message saying so.
3. The child sends back only outputs, as JSON lines on a pipe. The parent validates each
   output (types, shapes, sizes, a budget of values; ``lessons.grading.wire``) and then
   compares it with the expected output by the case's compare. What the child
   prints, patches or claims reaches neither the comparison nor the report as a line.
4. The parent keeps the clock: each cell, each question and each submission has a
   wall-clock limit that nothing the child writes can reset. A cell or question that hangs
   or kills its process is reported; a fresh child grades what is left.
5. In a folder, every submission is graded on its own (one that breaks the grader costs its
   own row) and its gradebook row is written as soon as it is graded (``grading.gradebook``:
   student ids, hand-graded columns, regrading one question with ``--question``,
   Gradescope's ``results.json`` with ``--gradescope``).

Without bubblewrap the grader refuses to grade (install it: ``apt-get install bubblewrap``),
unless ``--trusted`` says the code is trusted. Open questions are listed as "graded by
hand" with the student's answer. Linux only.

One concept per module in ``lessons/grading/``: ``submission`` (reading the notebook),
``runner`` (the isolated children and their limits), ``wire`` (reading their outputs back),
``scoring`` (comparison, points), ``report`` (text) and ``gradebook`` (CSV, Gradescope); this is the
command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from lessons.assignments.spec import HERE, find, load
from lessons.grading.gradebook import Column, Gradebook, StudentIds, read_previous, write_gradescope
from lessons.grading.report import Report, format_report, one_line
from lessons.grading.runner import IsolationUnavailable, Limits, Sandbox
from lessons.grading.scoring import grade_notebook
from lessons.grading.submission import identify, read_notebook

__all__ = ["IsolationUnavailable", "Limits", "Report", "Sandbox", "format_report", "grade_notebook", "main"]


def _columns(files: list[Path], forced: str | None, hidden: Path | None, folder: Path) -> list[Column]:
    """The gradebook's question columns: every assignment the notebooks name (read as data)."""
    names = set()
    for f in files:
        try:
            names.add(identify(read_notebook(f), f, forced, folder))
        except Exception:  # noqa: BLE001 - an unreadable notebook gets its row, with no question columns
            continue
    columns = []
    for name in sorted(names):
        spec = load(find(name, folder), hidden)
        columns += [Column(q.id, q.points, False) for q in spec.questions]
        columns += [Column(h.id, h.points, True) for h in spec.hand_graded]
    return columns


def _grade_one(path: Path, args: argparse.Namespace, limits: Limits, sandbox: Sandbox) -> Report:
    try:
        return grade_notebook(path, assignment=args.assignment, limits=limits, sandbox=sandbox, hidden=args.hidden,
                              only=args.question, folder=args.assignments)
    except Exception as err:  # noqa: BLE001 - one submission that breaks the grader costs only its own row
        return Report(str(path), args.assignment or "?", 0, 0,
                      notes=[one_line(f"grader error: {type(err).__name__}: {err}")])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lessons.grade", description="Grade assignment notebooks.")
    parser.add_argument("paths", nargs="+", type=Path, help="submission notebooks or folders of them")
    parser.add_argument("--json", action="store_true", help="print the reports as a JSON list")
    parser.add_argument("--csv", type=Path, help="the gradebook: one row per submission, written as each is "
                        "graded; an existing one keeps its hand-graded scores")
    parser.add_argument("--gradescope", type=Path, help="write Gradescope's results.json (one submission)")
    parser.add_argument("--assignment", help="the assignment's name, when the notebook does not say")
    parser.add_argument("--assignments", type=Path, default=HERE,
                        help="the folder of assignment sources (default: the lab's, %(default)s)")
    parser.add_argument("--hidden", type=Path, help="a folder of private hidden tests, <assignment>.py each")
    parser.add_argument("--question", help="regrade only this question id (e.g. a1.magnitude_mask); with --csv, "
                        "the other questions' points are kept from the existing gradebook")
    parser.add_argument("--roster", type=Path, help="a CSV with a 'student' column: ids found in file names")
    parser.add_argument("--id-pattern", help="a regular expression with a group 'student' applied to file names")
    parser.add_argument("--time-limit", type=float, default=Limits.question_s, help="seconds per question (default: %(default)s)")
    parser.add_argument("--cell-time-limit", type=float, default=Limits.cell_s, help="seconds per code cell (default: %(default)s)")
    parser.add_argument("--submission-time-limit", type=float, default=Limits.submission_s,
                        help="seconds per submission, restarts included (default: %(default)s)")
    parser.add_argument("--trusted", action="store_true",
                        help="grade without bubblewrap's isolation (only for code you trust)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
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
    if args.hidden is not None and not args.hidden.is_dir():
        parser.error(f"--hidden {args.hidden}: not a folder")
    try:
        ids = StudentIds(args.roster, args.id_pattern)
        if args.assignment is not None:
            find(args.assignment, args.assignments)
        columns = _columns(files, args.assignment, args.hidden, args.assignments)
        previous = read_previous(args.csv, columns) if args.csv else {}
    except (OSError, ValueError) as err:
        parser.error(str(err))
    if args.question and args.question not in {c.id for c in columns if not c.by_hand}:
        parser.error(f"--question {args.question}: not a question of {sorted({c.id for c in columns})}")
    limits = Limits(question_s=args.time_limit, cell_s=args.cell_time_limit, submission_s=args.submission_time_limit)
    folders = tuple(str(p.resolve()) for p in args.paths if p.is_dir()) + tuple(str(f.resolve().parent) for f in files)
    hide = (*folders, *(str(p.resolve()) for p in (args.hidden, args.assignments) if p is not None))
    try:
        sandbox = Sandbox(trusted=args.trusted, hide=tuple(dict.fromkeys(hide)))
    except IsolationUnavailable as err:
        print(f"python -m lessons.grade: refusing to grade: {err}", file=sys.stderr)
        return 2
    reports = []
    partial = args.csv.with_name(args.csv.name + ".partial") if args.csv else None
    try:
        with open(partial, "w", newline="", encoding="utf-8") if partial else open(os.devnull, "w") as stream:
            book = Gradebook(stream, columns, ids, previous, args.question) if partial else None
            for f in files:
                reports.append(_grade_one(f, args, limits, sandbox))
                if book:
                    book.write(reports[-1])
            if book:
                book.close()
    finally:
        sandbox.close()
    if partial:
        partial.replace(args.csv)  # only a finished run replaces the gradebook (hand scores are kept in it)
    if args.gradescope:
        write_gradescope(args.gradescope, reports)
    if args.json:
        print(json.dumps([asdict(r) for r in reports], indent=2))
    elif not args.csv:
        print("\n\n".join(format_report(r) for r in reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
