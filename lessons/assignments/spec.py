"""An assignment, read from its one source file: everything the build and the grader need.

A source (``lessons/assignments/a<N>_<name>.py``, jupytext percent format) is the
instructor's notebook. Its cells say what they are in their ``# %%`` line:

* the first markdown cell opens with ``# Title`` and carries ``lesson=N minutes=M``;
* ``question="fn"`` (optionally ``id="short"`` for the question id ``a<N>.short`` instead of
  ``a<N>.fn``, and ``mode="steps"`` / ``"grad"``, see ``lessons.checking.with_mode``):
  the code cell that defines the graded function ``fn``, its reference solution between
  nbgrader's ``### BEGIN SOLUTION`` / ``### END SOLUTION`` (the student gets a stub there);
* ``hand_graded="id" points=P``: an open question's prompt; the next markdown cell holds the
  model answer between the same markers (the student gets ``YOUR ANSWER HERE``);
* ``tags=["grading"]``: the cases, never shipped: ``visible_cases()`` and, between
  ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``, ``hidden_cases()``; each returns
  ``{function: [lessons.checking.Case, ...]}``. A case left without ``expected`` gets the
  reference solution's output; its ``points`` are what it is worth;
* ``tags=["checks"]``: the visible checks the student runs (against the shipped cases);
  ``tags=["explore"]``: experiments with the lab. Neither runs while grading.

Markdown may say ``{{points:fn}}`` or ``{{points:id}}`` ("8 points", from the cases) and
``{{points}}`` (the assignment's total). Hidden cases may come from elsewhere instead:
``load(path, hidden=DIR)`` runs ``DIR/<name>.py`` (which defines ``hidden_cases()``) and
ignores the file's own hidden region, so a course can keep its hidden tests private.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from lessons.checking import Case, with_mode

HERE = Path(__file__).resolve().parent
SOLUTION = ("### BEGIN SOLUTION", "### END SOLUTION")
HIDDEN_TESTS = ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
NOT_GRADED = frozenset({"checks", "explore", "grading"})
"""Tags of the template cells the grader does not run: visible checks, lab experiments, case definitions."""


@dataclass(frozen=True)
class GradedCase:
    """A case as the grader holds it: keyed, its expected output filled in, hidden or not."""

    key: str
    case: Case
    hidden: bool


@dataclass(frozen=True)
class Question:
    """A graded function: ``id`` is ``<a-number>.<function>``; its points are its cases' points."""

    id: str
    function: str
    mode: str
    cases: tuple[GradedCase, ...]

    @property
    def points(self) -> int:
        return sum(c.case.points for c in self.cases)


@dataclass(frozen=True)
class HandGraded:
    """An open question a person grades: the prompt and the points it is worth."""

    id: str
    prompt: str
    points: int


@dataclass(frozen=True)
class Assignment:
    name: str
    title: str
    lesson: int
    minutes: int
    source: Path
    questions: tuple[Question, ...]
    hand_graded: tuple[HandGraded, ...]

    @property
    def points(self) -> int:
        """Automatic points (what the grader scores)."""
        return sum(q.points for q in self.questions)

    @property
    def hand_points(self) -> int:
        return sum(h.points for h in self.hand_graded)

    def question(self, question_id: str) -> Question:
        for q in self.questions:
            if q.id == question_id:
                return q
        raise ValueError(f"{self.name} has no question {question_id!r}; it has {[q.id for q in self.questions]}")


def sources(folder: Path = HERE) -> list[Path]:
    """Every assignment source in ``folder``: ``a<number>_<name>.py``, in number order (a10 after a9)."""
    found = [p for p in folder.glob("a*_*.py") if re.fullmatch(r"a\d+_\w+", p.stem)]
    return sorted(found, key=lambda p: (int(re.match(r"a(\d+)", p.stem).group(1)), p.stem))


def find(name: str, folder: Path = HERE) -> Path:
    """The source of assignment ``name``; a ValueError listing the known ones."""
    known = {p.stem: p for p in sources(folder)}
    if name not in known:
        raise ValueError(f"unknown assignment {name!r}; known: {sorted(known)}")
    return known[name]


def remove_region(text: str, markers: tuple[str, str], replacement: str | None) -> str:
    """``text`` with every marked region (markers included) replaced by ``replacement`` at the
    marker's indentation, or removed when None. A region left open is an error."""
    begin, end = markers
    out: list[str] = []
    inside = False
    for line in text.split("\n"):
        stripped = line.strip()
        if not inside and stripped == begin:
            inside = True
            if replacement is not None:
                indent = line[: len(line) - len(line.lstrip())]
                out.extend(indent + r for r in replacement.split("\n"))
        elif inside and stripped == end:
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"a {begin!r} region is not closed by {end!r}")
    return "\n".join(out)


def regions(text: str, markers: tuple[str, str]) -> list[str]:
    """The lines inside every marked region of ``text`` (what must never reach a student)."""
    begin, end = markers
    inside, lines = False, []
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped in (begin, end):
            inside = stripped == begin
        elif inside:
            lines.append(line)
    return lines


def tags(cell: Any) -> set[str]:
    found = cell.metadata.get("tags", []) if hasattr(cell, "metadata") else []
    return set(found) if isinstance(found, list) else set()


def read(path: Path) -> Any:
    """The source as a notebook (jupytext), with a clear error naming the file."""
    import jupytext

    try:
        return jupytext.read(path)
    except Exception as err:  # noqa: BLE001 - any parse problem becomes a message naming the file
        raise ValueError(f"{path}: not a jupytext percent-format assignment source ({err})") from err


def _reference_namespace(nb: Any, path: Path, hidden: Path | None) -> dict[str, Any]:
    """Run the instructor's code (set-up, reference solutions, case definitions) in one namespace."""
    namespace: dict[str, Any] = {"__name__": f"assignment_{path.stem}"}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or tags(cell) & {"checks", "explore"}:
            continue
        text = cell.source if hidden is None else remove_region(cell.source, HIDDEN_TESTS, None)
        exec(compile(text, f"{path}, cell {index}", "exec"), namespace)  # noqa: S102 - the instructor's own code
    if hidden is not None:
        private = hidden / f"{path.stem}.py"
        if not private.is_file():
            raise ValueError(f"--hidden {hidden}: no {private.name} there (it defines hidden_cases() for {path.stem})")
        exec(compile(private.read_text(), str(private), "exec"), namespace)  # noqa: S102
    return namespace


def _cases(namespace: dict, which: str, path: Path, functions: dict[str, str]) -> dict[str, list[Case]]:
    make = namespace.get(which)
    if make is None:
        return {}
    found = make()
    unknown = set(found) - set(functions)
    if unknown:
        raise ValueError(f"{path}: {which}() has cases for {sorted(unknown)}, which no question cell defines")
    for function, cases in found.items():
        for case in cases:
            if not isinstance(case, Case):
                raise ValueError(f"{path}: {which}()[{function!r}] holds a {type(case).__name__}, not a Case")
    return found


def _with_expected(case: Case, reference: Any) -> Case:
    if case.expected is not None:
        return case
    expected = reference(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
    return Case(case.name, case.args, case.kwargs, expected, case.compare, case.points, case.group)


@cache
def load(path: Path, hidden: Path | None = None) -> Assignment:
    """Read one assignment source: its questions with every case's expected output, its open questions."""
    nb = read(path)
    prefix = path.stem.split("_")[0]
    head = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    title = head.source.split("\n")[0].lstrip("# ").strip() if head is not None else ""
    if head is None or not title or "lesson" not in head.metadata:
        raise ValueError(f"{path}: the first markdown cell must open with '# Title' and say lesson=N minutes=M")
    functions = {c.metadata["question"]: c.metadata.get("mode", "call") for c in nb.cells if "question" in c.metadata}
    ids = {c.metadata["question"]: c.metadata["id"] for c in nb.cells if "question" in c.metadata and "id" in c.metadata}
    for cell in nb.cells:
        if "question" in cell.metadata and SOLUTION[0] not in cell.source:
            raise ValueError(f"{path}: the cell of question {cell.metadata['question']!r} has no {SOLUTION[0]} region")
    namespace = _reference_namespace(nb, path, hidden)
    visible = _cases(namespace, "visible_cases", path, functions)
    secret = _cases(namespace, "hidden_cases", path, functions)
    questions = []
    for function, mode in functions.items():
        reference = with_mode(namespace[function], mode)
        graded = []
        for hidden_case, items in ((False, visible.get(function, [])), (True, secret.get(function, []))):
            graded += [GradedCase(f"{'hidden' if hidden_case else 'visible'}/{c.name}", _with_expected(c, reference),
                                  hidden_case) for c in items]
        keys = [g.key for g in graded]
        if not graded or len(set(keys)) != len(keys):
            raise ValueError(f"{path}: question {function!r} needs cases with distinct names, got {keys}")
        questions.append(Question(f"{prefix}.{ids.get(function, function)}", function, mode, tuple(graded)))
    hand = tuple(HandGraded(c.metadata["hand_graded"], " ".join(c.source.split("\n", 1)[-1].split()),
                            int(c.metadata.get("points", 0))) for c in nb.cells if "hand_graded" in c.metadata)
    return Assignment(path.stem, title, int(head.metadata["lesson"]), int(head.metadata.get("minutes", 0)), path,
                      tuple(questions), hand)


def render_points(text: str, spec: Assignment) -> str:
    """Fill ``{{points:fn}}`` / ``{{points:id}}`` and ``{{points}}`` from the declared cases and open questions."""
    worth = {q.function: q.points for q in spec.questions} | {h.id: h.points for h in spec.hand_graded}

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name is None:
            return f"{spec.points + spec.hand_points} points"
        if name not in worth:
            raise ValueError(f"{spec.source}: {{{{points:{name}}}}} names no question or open question")
        return f"{worth[name]} point{'s' if worth[name] != 1 else ''}"

    return re.sub(r"\{\{points(?::([\w.]+))?\}\}", fill, text)
