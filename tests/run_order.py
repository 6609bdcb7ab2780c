"""The order the suite starts its tests in: the longest modules first.

`make test` runs the suite on pytest-xdist's ``worksteal`` schedule: each worker takes a share of
the collected list in order and an idle worker takes over the not-yet-started tail of a busy one.
The run then ends when its last long test ends, so a long test that starts late sets the wall time
(Graham 1969: longest processing time first). The modules below are the longest of the suite,
longest first, by ``pytest --durations=0`` of the whole suite (CPU and wall time alike: lesson
notebooks run in a browser (or, without one, in a kernel: tests/lesson_checks.py), process pools
and Ray, the demo, the sandboxed grader); every other module keeps its place after them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

LONGEST_MODULES = (
    "test_browser.py",
    "test_lessons.py",
    "test_executor.py",
    "test_demo.py",
    "test_grade_isolation.py",
    "test_grade.py",
    "test_optim_state.py",
    "test_benchmarks.py",
    "test_modular.py",
    "test_teacher_student.py",
)


class _Item(Protocol):
    path: Path


def longest_first(items: Sequence[_Item]) -> list[_Item]:
    """``items`` with those of :data:`LONGEST_MODULES` moved to the front in that module order; within a
    module, and among the other modules, the collected order is kept (module-scoped fixtures stay shared)."""
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    return sorted(items, key=lambda item: rank.get(item.path.name, len(rank)))  # sorted() is stable
