"""Scoring a submission: the sandbox returns the graded functions' outputs on every case, and
each output is compared here with the expected output the grader computed from the reference
solution (``lessons.assignments.spec``), by the case's own compare (``lessons.checking.same``
unless it says otherwise). Nothing the student's process prints or claims reaches the
comparison; a question whose code tried what a graded submission may not do scores 0.

Cases sharing a ``group`` earn their points together, only when all of them pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lessons.assignments.spec import HERE, Assignment, GradedCase, Question, find, load
from lessons.checking import same
from lessons.grading.report import CheckResult, QuestionResult, Report, one_line
from lessons.grading.runner import Limits, Sandbox, SandboxRun, run_submission
from lessons.grading.submission import code_cells, defines, hand_graded_answers, identify, read_notebook


@dataclass(frozen=True)
class Call:
    """What the sandbox needs of a case: how to call the function, on what."""

    mode: str
    args: tuple
    kwargs: dict


def _plan(questions: list[Question]) -> dict[str, list[tuple[str, Call]]]:
    return {q.id: [(g.key, Call(q.mode, g.case.args, g.case.kwargs)) for g in q.cases] for q in questions}


def _judge(graded: GradedCase, got: Any, failure: str | None) -> str:
    """'' when the case passed, else why not (one line)."""
    if failure:
        return failure
    if not isinstance(got, dict):
        return "no result for this case"
    if "error" in got:
        return f"raised {got['error']}"
    compare = graded.case.compare or same
    try:
        return compare(graded.case.expected, got["output"]) or ""
    except Exception as err:  # noqa: BLE001 - a malformed output from the student's process
        return f"the output could not be checked ({type(err).__name__}: {err})"


def _groups(q: Question) -> list[list[GradedCase]]:
    """The question's cases in scoring units: a group together, every other case alone."""
    units: dict[str, list[GradedCase]] = {}
    for g in q.cases:
        units.setdefault(f"group {g.case.group}" if g.case.group else g.key, []).append(g)
    return list(units.values())


def score_question(q: Question, run: SandboxRun, cells: list[tuple[int, str]]) -> QuestionResult:
    outputs = run.outputs.get(q.id, {})
    failure = run.failures.get(q.id)
    answer_cells = {str(i) for i, src in cells if defines(src, q.function)}
    cheats = list(dict.fromkeys(
        what for unit, what in run.denials
        if unit == f"q {q.id}" or (unit.startswith("cell ") and unit.split(" ")[1] in answer_cells)
    ))
    results = []
    for unit in _groups(q):
        points = sum(g.case.points for g in unit)
        message = ""
        for g in unit:
            problem = _judge(g, outputs.get(g.key), failure)
            if problem:
                message = one_line(problem if len(unit) == 1 else f"case [{g.case.name}]: {problem}")
                break
        title = unit[0].case.name if len(unit) == 1 else f"{unit[0].case.group} ({len(unit)} cases, all must pass)"
        earned = 0 if message or cheats else points
        results.append(CheckResult(unit[0].key if len(unit) == 1 else f"{'hidden' if unit[0].hidden else 'visible'}/"
                                   f"{unit[0].case.group}", title, points, earned, unit[0].hidden, message))
    note = ""
    if cheats:
        note = ("0 points: the graded code tried to use what a submission may not use while graded "
                f"(the lab's modules, processes, signals, sockets or ctypes): {'; '.join(cheats[:3])}")
    elif failure:
        note = f"0 points: {failure}"
    return QuestionResult(q.id, q.function, q.points, sum(r.earned for r in results), results, one_line(note))


def grade_notebook(path: str | Path, *, assignment: str | None = None, limits: Limits = Limits(),
                   sandbox: Sandbox | None = None, hidden: Path | None = None,
                   only: str | None = None, folder: Path = HERE) -> Report:
    """Grade one submission. Never raises for a bad submission: problems become messages and 0 points.

    ``hidden``: a folder of private hidden tests (``<assignment>.py``); ``only``: grade just this
    question id (a regrade); ``folder``: where the assignment sources are. Without a ``sandbox``, one is made for this call (bubblewrap;
    IsolationUnavailable if it is missing).
    """
    path = Path(path)
    try:
        nb = read_notebook(path)
        name = identify(nb, path, assignment, folder)
        spec: Assignment = load(find(name, folder), hidden)
        cells = code_cells(nb)
        questions = [spec.question(only)] if only else list(spec.questions)
    except Exception as err:  # noqa: BLE001 - a malformed submission is a message, never a crash
        return Report(str(path), assignment or "?", 0, 0, notes=[one_line(f"could not grade: {type(err).__name__}: {err}")])
    own = sandbox is None
    sandbox = sandbox or Sandbox()
    try:
        run = run_submission(sandbox, cells, questions, _plan(questions), limits)
    finally:
        if own:
            sandbox.close()
    results = [score_question(q, run, cells) for q in questions]
    notes = [f"cell {i} raised {msg}" for i, msg in sorted(run.cell_errors.items())]
    notes += [f"cell {i} was skipped: {msg}" for i, msg in sorted(run.skipped_cells.items())]
    notes += [f"refused in {unit}: {what}" for unit, what in dict.fromkeys(run.denials)]
    notes = [one_line(n) for n in notes[:20]]
    return Report(str(path), name, sum(q.earned for q in results), sum(q.points for q in results), results,
                  hand_graded_answers(nb, spec), notes)
