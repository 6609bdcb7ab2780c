"""The teacher's outputs of a grading run: a gradebook CSV and Gradescope's ``results.json``.

The CSV has one row per submission: ``submission, assignment, total, max``, the points of
every automatically graded question, an empty column per hand-graded question (the teacher
types the score in), then ``student`` and ``notes``. ``total`` counts the automatic points
and whatever hand-graded scores are entered; ``max`` counts both kinds. Rows are written and
flushed as each submission is graded, so a run that dies keeps the rows before it.

Grading into an existing CSV keeps what a person entered there: the hand-graded scores of
every row, and with a regrade of one question (``--question``) the other questions' points.

Student ids come from a roster (a CSV with a ``student`` column: the id found in the file
name wins, the longest if several match; roster students without a submission get a row
saying so) or from a file-name pattern (a regular expression with a ``student`` group).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from lessons.grading.report import Report, one_line

FIXED = ("submission", "assignment", "total", "max")


@dataclass(frozen=True)
class Column:
    """A gradebook column: a question id, its maximum, and whether a person grades it."""

    id: str
    points: int
    by_hand: bool


class StudentIds:
    """Who handed in a file: from a roster, a file-name pattern, or (neither) the file name itself."""

    def __init__(self, roster: Path | None = None, pattern: str | None = None) -> None:
        self.students: list[str] = []
        if roster is not None:
            with open(roster, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or "student" not in reader.fieldnames:
                    raise ValueError(f"roster {roster}: needs a 'student' column, has {reader.fieldnames}")
                self.students = [row["student"].strip() for row in reader if row["student"].strip()]
        try:
            self.pattern = re.compile(pattern) if pattern else None
        except re.error as err:
            raise ValueError(f"--id-pattern {pattern!r}: not a regular expression ({err})") from None
        if self.pattern is not None and "student" not in self.pattern.groupindex:
            raise ValueError(f"--id-pattern {pattern!r}: needs a group named 'student', e.g. (?P<student>[^_]+)")

    def of(self, path: str) -> tuple[str, str]:
        """(student id, a note if it could not be told)."""
        name = Path(path).name
        if self.students:
            found = [s for s in self.students if s in name]
            return (max(found, key=len), "") if found else ("", "file name matches no student of the roster")
        if self.pattern is not None:
            match = self.pattern.search(name)
            return (match.group("student"), "") if match else ("", "file name does not match --id-pattern")
        return Path(path).stem, ""

    def missing(self, seen: Iterable[str]) -> list[str]:
        return [s for s in self.students if s not in set(seen)]


def read_previous(path: Path, columns: list[Column]) -> dict[str, dict[str, str]]:
    """An existing gradebook's rows by submission (empty if there is none); a ValueError naming the
    cell if a score cell holds anything but a number, before anything is graded."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = {row["submission"]: row for row in csv.DictReader(f) if row.get("submission")}
    for submission, row in rows.items():
        for c in columns:
            _number(row.get(c.id), f"cell {c.id} of {submission}")
    return rows


def _number(text: str | None, what: str) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"the gradebook's {what} holds {text!r}, not a number") from None


class Gradebook:
    """Writes the CSV row by row; ``previous`` rows give the scores a person entered (and, in a
    regrade, the points of the questions not regraded: ``regraded`` names the one that is)."""

    def __init__(self, stream: TextIO, columns: list[Column], ids: StudentIds,
                 previous: dict[str, dict[str, str]] | None = None, regraded: str | None = None) -> None:
        self.stream, self.columns, self.ids = stream, columns, ids
        self.previous, self.regraded = previous or {}, regraded
        self.writer = csv.writer(stream)
        self.writer.writerow([*FIXED, *(c.id for c in columns), "student", "notes"])
        stream.flush()
        self.seen: list[str] = []

    def write(self, r: Report) -> None:
        student, id_note = self.ids.of(r.submission)
        self.seen.append(student)
        before = self.previous.get(r.submission, {})
        earned = {q.id: q.earned for q in r.questions}
        own = {c.id for c in self.columns if c.id.split(".")[0] == r.assignment.split("_")[0]}
        cells, total, most = [], 0.0, 0
        for c in self.columns:
            if c.id not in own:
                cells.append("")
                continue
            if c.by_hand or (self.regraded and c.id != self.regraded):
                value = _number(before.get(c.id), f"cell {c.id} of {r.submission}")
                cells.append("" if value is None else f"{value:g}")
            else:
                value = earned.get(c.id)
                cells.append("" if value is None else value)
            total += value or 0
            most += c.points
        notes = [*r.notes, *([id_note] if id_note else [])]
        self.writer.writerow([one_line(r.submission), one_line(r.assignment, 40), f"{total:g}", most, *cells,
                              one_line(student, 80), one_line(" | ".join(notes[:3]))])
        self.stream.flush()

    def close(self) -> None:
        """Rows for the roster's students who handed nothing in."""
        for student in self.ids.missing(self.seen):
            self.writer.writerow(["", "", 0, "", *("" for _ in self.columns), student, "no submission"])
        self.stream.flush()


def gradescope(report: Report) -> dict:
    """Gradescope's ``results.json`` for one submission: one test per graded unit (hidden ones shown
    after the grades are published), the open questions listed for the manual rubric."""
    tests = [{"name": f"{q.id}: {c.title}", "score": c.earned, "max_score": c.points,
              "output": c.message or "passed", "visibility": "after_published" if c.hidden else "visible"}
             for q in report.questions for c in q.checks]
    lines = [f"{h.id} ({h.points} points) is graded by hand: {one_line(h.prompt, 200)}" for h in report.hand_graded]
    return {"score": report.earned, "tests": tests, "output": "\n".join([*lines, *(f"note: {n}" for n in report.notes)]),
            "visibility": "visible"}


def write_gradescope(path: Path, reports: list[Report]) -> None:
    if len(reports) != 1:
        raise ValueError(f"--gradescope writes one submission's results; {len(reports)} were graded")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(gradescope(reports[0]), indent=2))
