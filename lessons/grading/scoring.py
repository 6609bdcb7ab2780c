"""Scoring a submission: the cases of every check are built here, the sandbox returns the
graded functions' outputs, and every output is compared with what the lab's own code
computes. Nothing the student's process prints or claims reaches the comparison; a
question whose code tried what a graded submission may not do scores 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lessons.assignments.checks import Assignment, Question
from lessons.assignments.hidden import assignment as load_assignment
from lessons.grading.report import CheckResult, QuestionResult, Report, one_line
from lessons.grading.runner import Limits, Sandbox, SandboxRun, run_submission
from lessons.grading.wire import check_kind
from lessons.grading.submission import code_cells, defines, hand_graded_answers, identify, read_notebook


def _plan(spec: Assignment) -> dict[str, list[tuple[str, Any]]]:
    """Every question's cases, keyed '<check id>/<case name>' (built here, in the grader)."""
    return {q.id: [(f"{c.id}/{case.name}", case) for c in q.checks for case in c.cases()] for q in spec.questions}


def _score_question(q: Question, planned: list[tuple[str, Any]], run: SandboxRun,
                    cells: list[tuple[int, str]]) -> QuestionResult:
    outputs = run.outputs.get(q.id, {})
    failure = run.failures.get(q.id)
    answer_cells = {str(i) for i, src in cells if defines(src, q.function)}
    cheats = list(dict.fromkeys(
        what for unit, what in run.denials
        if unit == f"q {q.id}" or (unit.startswith("cell ") and unit.split(" ")[1] in answer_cells)
    ))
    results = []
    for check in q.checks:
        message = ""
        for key, case in planned:
            if not key.startswith(check.id + "/"):
                continue
            got = outputs.get(key)
            if failure:
                message = failure
            elif not isinstance(got, dict):
                message = "no result for this case"
            elif "error" in got:
                message = f"raised {got['error']}"
            else:
                try:
                    message = check_kind(q.returns, case.mode, got["output"]) or check.verify(case, got["output"]) or ""
                except Exception as err:  # noqa: BLE001 - malformed output from the student's process
                    message = f"the output could not be checked ({type(err).__name__}: {err})"
            if message:
                message = one_line(f"case [{case.name}]: {message}")
                break
        earned = 0 if message or cheats else check.points
        results.append(CheckResult(check.id, check.title, check.points, earned, check.hidden, message))
    note = ""
    if cheats:
        note = ("0 points: the graded code tried to use what a submission may not use while graded "
                f"(the lab's modules, processes, signals, sockets or ctypes): {'; '.join(cheats[:3])}")
    elif failure:
        note = f"0 points: {failure}"
    note = one_line(note)
    return QuestionResult(q.id, q.function, q.points, sum(r.earned for r in results), results, note)


def grade_notebook(path: str | Path, *, assignment: str | None = None, limits: Limits = Limits(),
                   sandbox: Sandbox | None = None) -> Report:
    """Grade one submission. Never raises for a bad submission: problems become messages and 0 points.

    Without a ``sandbox``, one is made for this call (bubblewrap; IsolationUnavailable if it is missing).
    """
    path = Path(path)
    try:
        nb = read_notebook(path)
        name = identify(nb, path, assignment)
        spec = load_assignment(name)
        cells = code_cells(nb)
    except Exception as err:  # noqa: BLE001 - a malformed submission is a message, never a crash
        return Report(str(path), assignment or "?", 0, 0, notes=[f"could not grade: {type(err).__name__}: {err}"])
    planned = _plan(spec)
    own = sandbox is None
    sandbox = sandbox or Sandbox()
    try:
        run = run_submission(sandbox, cells, list(spec.questions), planned, limits)
    finally:
        if own:
            sandbox.close()
    questions = [_score_question(q, planned[q.id], run, cells) for q in spec.questions]
    notes = [f"cell {i} raised {msg}" for i, msg in sorted(run.cell_errors.items())]
    notes += [f"cell {i} was skipped: {msg}" for i, msg in sorted(run.skipped_cells.items())]
    notes += [f"refused in {unit}: {what}" for unit, what in dict.fromkeys(run.denials)]
    notes = [one_line(n) for n in notes[:20]]
    return Report(str(path), name, sum(q.earned for q in questions), spec.points, questions,
                  hand_graded_answers(nb, spec), notes)
