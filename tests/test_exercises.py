"""Every lesson exercise, found automatically: its check rejects trivial answers and accepts the
solution the lesson shows, and the lesson holds the stub, the check cell and that solution.

The solution tested is the one a student unfolds in the notebook (the ```python block under
``<summary>Solution</summary>``), so a solution that drifts from its check fails here.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import jupytext
import pytest
import torch

import lessons.exercises
from lessons.checking import TRIVIAL_ANSWERS
from lessons.exercises import yours_or_library

ROOT = Path(__file__).resolve().parents[1]
MODULES = {info.name: importlib.import_module(f"lessons.exercises.{info.name}")
           for info in pkgutil.iter_modules(lessons.exercises.__path__) if re.fullmatch(r"lesson\d\d", info.name)}
EXERCISES = [(module, name[len("check_"):]) for module in sorted(MODULES)
             for name in sorted(vars(MODULES[module])) if name.startswith("check_")]
SOLUTION = re.compile(r"<summary>Solution</summary>\s*```python\n(.*?)```", re.S)


def _lesson(module: str) -> list:
    (source,) = (ROOT / "lessons").glob(f"{module[len('lesson'):]}_*.py")
    return jupytext.read(source).cells


def _solutions(module: str) -> dict[str, object]:
    """The functions the lesson's solution blocks define, run in a namespace holding torch (as the notebook does)."""
    namespace: dict[str, object] = {"torch": torch, "nn": torch.nn}
    for cell in _lesson(module):
        if cell.cell_type == "markdown":
            for code in SOLUTION.findall(cell.source):
                exec(compile(code, f"<{module} solution>", "exec"), namespace)  # noqa: S102 - the lesson's own text
    return namespace


def test_every_lesson_has_at_least_two_exercises() -> None:
    lessons_found = sorted(p.name[:2] for p in (ROOT / "lessons").glob("[0-9][0-9]_*.py"))
    assert sorted(m[len("lesson"):] for m in MODULES) == lessons_found
    for module in MODULES.values():
        checks = [n for n in vars(module) if n.startswith("check_")]
        assert len(checks) >= 2, module.__name__
        assert set(module.LIBRARY) == {n[len("check_"):] for n in checks}, module.__name__


@pytest.mark.parametrize(("module", "name"), EXERCISES, ids=[f"{m}.{n}" for m, n in EXERCISES])
@pytest.mark.parametrize("trivial", list(TRIVIAL_ANSWERS))
def test_check_rejects_trivial_answers(module: str, name: str, trivial: str) -> None:
    check = getattr(MODULES[module], f"check_{name}")
    with pytest.raises(AssertionError, match=rf"^{name}: "):
        check(TRIVIAL_ANSWERS[trivial], quiet=True)


@pytest.mark.parametrize(("module", "name"), EXERCISES, ids=[f"{m}.{n}" for m, n in EXERCISES])
def test_lesson_shows_stub_check_and_a_solution_that_passes(module: str, name: str, capsys) -> None:
    cells = _lesson(module)
    stubs = [c for c in cells if c.cell_type == "code" and re.search(rf"^def {name}\(", c.source, re.M)]
    assert len(stubs) == 1 and "raise NotImplementedError" in stubs[0].source, f"{module}: one stub of {name}"
    calls = [c for c in cells if c.cell_type == "code" and c.source.strip() == f"check_{name}({name})"]
    assert len(calls) == 1 and "raises-exception" in calls[0].metadata.get("tags", []), (
        f"{module}: one check cell for {name}, tagged raises-exception so Run All goes on past an unsolved stub")
    solution = _solutions(module).get(name)
    assert callable(solution), f"{module}: no solution block defines {name}"
    getattr(MODULES[module], f"check_{name}")(solution)
    assert capsys.readouterr().out.strip().endswith("cases passed")


def test_solution_is_not_the_library_call() -> None:
    """A solution block must teach the idea, not call the function the check compares with."""
    for module in MODULES:
        text = "\n".join(SOLUTION.findall("\n".join(c.source for c in _lesson(module) if c.cell_type == "markdown")))
        assert not re.search(r"\b(import|from)\s+(sparsity|scaleup|toys|lessons)\b|\b(sparsity|scaleup|toys|lessons)\.[a-z]",
                             text), module


def test_yours_or_library_uses_the_students_function_only_once_it_passes(capsys) -> None:
    ex: ModuleType = MODULES["lesson06"]
    right = _solutions("lesson06")["group_advantages"]
    assert yours_or_library(ex, "group_advantages", right) is right
    assert "your group_advantages" in capsys.readouterr().out

    def wrong(reward: torch.Tensor) -> torch.Tensor:
        return reward - reward.mean(1, keepdim=True)

    assert yours_or_library(ex, "group_advantages", wrong) is ex.LIBRARY["group_advantages"]
    note = capsys.readouterr().out
    assert note.startswith("note: the next cells use the lab's group_advantages") and "failed" in note
