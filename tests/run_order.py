"""The order the suite starts its tests in: the longest modules first, spread over the workers.

`make test` runs the suite on pytest-xdist's ``worksteal`` schedule: the collected list is cut into
one contiguous share per worker (the first ``len // workers`` items to the first, and so on), and a
worker that runs dry takes over the not-yet-started last half of the busiest one's queue. The run
ends when its last long test ends, so long tests must start early and on every worker at once
(Graham 1969: longest processing time first). Sorting the long tests to the front of the list would
hand them all to the first worker's share; instead :func:`spread` deals them round-robin over the
shares, each at the front of its share, and fills every share to its length with the other tests in
their collected order. The long modules below are the longest of the suite, longest first, by
``python -m benchmarks.suite_times`` (CPU seconds per test: lesson notebooks run in a browser, or
without one in a kernel (tests/lesson_checks.py), process pools and Ray, the demo, the sandboxed grader).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

LONGEST_MODULES = (
    "test_browser.py",
    "test_lessons.py",
    "test_demo.py",
    "test_executor.py",
    "test_invariant.py",
    "test_scaleup_benchmark.py",
    "test_teacher_student.py",
    "test_benchmarks.py",
    "test_modular.py",
    "test_grade.py",
    "test_optim_state.py",
    "test_grade_isolation.py",
)


WHOLE_MODULES = ("test_teacher_student.py", "test_modular.py", "test_grade_isolation.py")
"""Long modules whose tests share an expensive module-scoped fixture (trained networks, a graded folder of
submissions): dealt whole to one share, so the fixture is built once, not once per worker that runs one of
their tests (dealt test by test, each of these was built on both workers: 9, 11 and 30 s of duplicated work)."""


class _Item(Protocol):
    path: Path


def spread(items: Sequence[_Item], workers: int = 1) -> list[_Item]:
    """``items`` reordered for ``workers`` contiguous shares (see the module docstring): the tests of
    :data:`LONGEST_MODULES`, in that module order, dealt round-robin to the shares and put first in
    each (a module of :data:`WHOLE_MODULES` as one unit, all its tests in one share); the rest, in their collected
    order, fill the shares to the lengths xdist gives them. With one worker, the long modules first. A module's
    tests stay contiguous within a share (its module-scoped fixtures are set up once per worker)."""
    if workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers}")
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    long = sorted((item for item in items if item.path.name in rank), key=lambda item: rank[item.path.name])
    rest = [item for item in items if item.path.name not in rank]
    units: list[list[_Item]] = []  # what is dealt: one test, or a whole module of WHOLE_MODULES
    for item in long:
        if item.path.name in WHOLE_MODULES and units and units[-1][0].path.name == item.path.name:
            units[-1].append(item)
        else:
            units.append([item])
    shares: list[list[_Item]] = [[] for _ in range(workers)]
    for i, unit in enumerate(units):
        shares[i % workers].extend(unit)
    left = len(items)
    for k, share in enumerate(shares):  # xdist gives the k-th worker len(pending) // (workers - k) items
        size = left // (workers - k)
        take = max(0, size - len(share))
        share.extend(rest[:take])
        del rest[:take]
        left -= len(share)
    shares[-1].extend(rest)
    return [item for share in shares for item in share]
