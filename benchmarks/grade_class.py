"""How long the autograder takes for a class: N copies of one assignment's reference notebook
in a folder, graded by the command line into one CSV, as an instructor would run it.

Each submission gets its own sandboxed child (bubblewrap, seccomp, a fresh noexec scratch),
so the time per submission is mostly the child's start-up (Python and torch). The machine's
load is printed beside the time, since these machines are shared.

    python -m benchmarks.grade_class [--students 40] [--assignment a1_masks] [--out benchmarks/results/grade_class.md]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

from lessons.assignments.build import build
from lessons.grade import main as grade


def measure(students: int, assignment: str) -> tuple[float, list[dict]]:
    """Seconds to grade a folder of ``students`` copies of ``assignment``'s reference, and the CSV rows."""
    with tempfile.TemporaryDirectory(prefix="grade-class-") as tmp:
        built = Path(tmp) / "built"
        build(built)
        folder = Path(tmp) / "class"
        folder.mkdir()
        for i in range(students):
            shutil.copy(built / "solutions" / f"{assignment}.ipynb", folder / f"{assignment}_student{i:03d}.ipynb")
        csv_path = Path(tmp) / "grades.csv"
        start = time.monotonic()
        with contextlib.redirect_stdout(io.StringIO()):  # the reports; the CSV is what we read
            code = grade([str(folder), "--csv", str(csv_path)])
        seconds = time.monotonic() - start
        if code != 0:
            raise SystemExit(f"the grader exited with {code}")
        with open(csv_path, newline="") as f:
            return seconds, list(csv.DictReader(f))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grade_class", description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=40,
                        help="how many copies of the reference submission to grade (default: %(default)s)")
    parser.add_argument("--assignment", default="a1_masks", help="the assignment graded (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = parser.parse_args(argv)
    if args.students < 1:
        parser.error(f"--students must be at least 1, got {args.students}")
    load_before = os.getloadavg()[0]
    seconds, rows = measure(args.students, args.assignment)
    load_after = os.getloadavg()[0]
    full = sum(r["total"] == r["max"] for r in rows)
    table = ("| students | assignment | seconds | per student | full marks | load (1 min) before / after | cores |\n"
             "| ---: | --- | ---: | ---: | ---: | --- | ---: |\n"
             f"| {len(rows)} | {args.assignment} | {seconds:.0f} | {seconds / len(rows):.1f} | {full}/{len(rows)} "
             f"| {load_before:.1f} / {load_after:.1f} | {os.cpu_count()} |\n")
    print(table, end="")
    if args.out:
        args.out.write_text("# Grading a class folder\n\n`python -m benchmarks.grade_class --students "
                            f"{args.students} --assignment {args.assignment}`: every submission in its own "
                            "sandboxed child (bubblewrap, seccomp, noexec scratch), one CSV.\n\n" + table)


if __name__ == "__main__":
    main()
