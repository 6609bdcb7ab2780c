"""What a grade says: the results of every check, question and open question of a submission,
as text for the student and as one CSV row per submission for the teacher.

Text that came from a submission (error messages, refusals, answers, file names) is
collapsed to one line and truncated wherever it is shown, so it cannot pose as a line of
the report (a fake "PASS" or "total").
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import TextIO

from lessons.grading.wire import printable


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line (any whitespace run becomes one space, any other control character its
    escape: ``wire.printable``), cut to ``limit`` characters."""
    return printable(text, limit)


@dataclass
class CheckResult:
    """One check of a question: its points, what was earned and, if it failed, why."""

    id: str
    title: str
    points: int
    earned: int
    hidden: bool
    message: str


@dataclass
class QuestionResult:
    """One graded function: the sum of its checks, and a note when it scored 0 as a whole."""

    id: str
    function: str
    points: int
    earned: int
    checks: list[CheckResult]
    note: str = ""


@dataclass
class HandGradedResult:
    """An open question: the prompt and the student's answer, for a person to grade."""

    id: str
    prompt: str
    answer: str
    note: str = "graded by hand (0 automatic points)"


@dataclass
class Report:
    """The grade of one submission: automatic points, every question, the open answers, notes."""

    submission: str
    assignment: str
    earned: int
    points: int
    questions: list[QuestionResult] = field(default_factory=list)
    hand_graded: list[HandGradedResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def format_report(report: Report) -> str:
    """The report as the student reads it: PASS/FAIL per check with the reason, then the total."""
    lines = [f"{one_line(report.submission)}: assignment {one_line(report.assignment, 40)}"]
    for q in report.questions:
        lines.append(f"{q.id} ({q.function}): {q.earned}/{q.points}" + (f"  [{one_line(q.note)}]" if q.note else ""))
        for c in q.checks:
            mark = "PASS" if c.earned == c.points else "FAIL"
            tag = " (hidden)" if c.hidden else ""
            detail = f": {one_line(c.message)}" if c.message else ""
            lines.append(f"  {mark} {c.earned}/{c.points}{tag} {c.title}{detail}")
    for hg in report.hand_graded:
        lines.append(f"{hg.id}: {hg.note}: {hg.prompt}")
        lines.append(f"  answer: {one_line(hg.answer, 200) if hg.answer.strip() else '(no answer)'}")
    for note in report.notes:
        lines.append(f"note: {one_line(note)}")
    lines.append(f"total: {report.earned}/{report.points} automatic points")
    return "\n".join(lines)


class CsvWriter:
    """One CSV row per submission, written and flushed as soon as it is graded, so a grader that
    dies (or is stopped) keeps every row before it. The columns (question ids) are fixed up front."""

    def __init__(self, stream: TextIO, question_ids: list[str]) -> None:
        self.stream, self.qids = stream, sorted(question_ids)
        self.writer = csv.writer(stream)
        self.writer.writerow(["submission", "assignment", "total", "max", *self.qids, "notes"])
        stream.flush()

    def write(self, r: Report) -> None:
        by_id = {q.id: q.earned for q in r.questions}
        self.writer.writerow([one_line(r.submission), one_line(r.assignment, 40), r.earned, r.points,
                              *[by_id.get(q, "") for q in self.qids], one_line(" | ".join(r.notes[:3]))])
        self.stream.flush()


def to_csv(reports: list[Report]) -> str:
    """One row per submission: total, maximum, then the points of every question."""
    buf = io.StringIO()
    writer = CsvWriter(buf, list({q.id for r in reports for q in r.questions}))
    for r in reports:
        writer.write(r)
    return buf.getvalue()
