"""What a grade says: the results of every check, question and open question of a submission,
as text for the student, as a gradebook row for the teacher (``gradebook``) and as
Gradescope's ``results.json`` (``gradescope``).

Text that came from a submission (error messages, refusals, answers, file names) is
collapsed to one line and truncated wherever it is shown, so it cannot pose as a line of
the report (a fake "PASS" or "total").
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    points: int = 0
    note: str = "graded by hand"


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
        lines.append(f"{hg.id}: {hg.note} ({hg.points} points): {one_line(hg.prompt, 200)}")
        lines.append(f"  answer: {one_line(hg.answer, 200) if hg.answer.strip() else '(no answer)'}")
    for note in report.notes:
        lines.append(f"note: {one_line(note)}")
    lines.append(f"total: {report.earned}/{report.points} automatic points")
    return "\n".join(lines)


