"""What a grade says: the results of every check, question and open question of a submission,
as text for the student and as one CSV row per submission for the teacher."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field


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
    lines = [f"{report.submission}: assignment {report.assignment}"]
    for q in report.questions:
        lines.append(f"{q.id} ({q.function}): {q.earned}/{q.points}" + (f"  [{q.note}]" if q.note else ""))
        for c in q.checks:
            mark = "PASS" if c.earned == c.points else "FAIL"
            tag = " (hidden)" if c.hidden else ""
            detail = f": {c.message}" if c.message else ""
            lines.append(f"  {mark} {c.earned}/{c.points}{tag} {c.title}{detail}")
    for hg in report.hand_graded:
        lines.append(f"{hg.id}: {hg.note}: {hg.prompt}")
        answer = " ".join(hg.answer.split())
        lines.append(f"  answer: {answer[:200] + ('...' if len(answer) > 200 else '') if answer else '(no answer)'}")
    for note in report.notes:
        lines.append(f"note: {note}")
    lines.append(f"total: {report.earned}/{report.points} automatic points")
    return "\n".join(lines)


def to_csv(reports: list[Report]) -> str:
    """One row per submission: total, maximum, then the points of every question."""
    qids = sorted({q.id for r in reports for q in r.questions})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["submission", "assignment", "total", "max", *qids, "notes"])
    for r in reports:
        by_id = {q.id: q.earned for q in r.questions}
        writer.writerow([r.submission, r.assignment, r.earned, r.points, *[by_id.get(q, "") for q in qids],
                         " | ".join(r.notes[:3])])
    return buf.getvalue()
