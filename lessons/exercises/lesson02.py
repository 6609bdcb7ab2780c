"""Lesson 2's exercises: the exclusive part of each subnetwork, and the modularity score.

Ablating only the entries no other task's subnetwork uses is how lesson 2 tests
specialisation (Csordás et al. 2021): ``sparsity.discover.exclusive``. The modularity score
(mean damage on the ablation matrix's diagonal minus off it) is
``sparsity.ablate.AblationMatrix.modularity``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lessons.checking import check
from lessons.exercises import cases_from
from sparsity.ablate import AblationMatrix
from sparsity.discover import exclusive

Mask = dict[str, torch.Tensor]


def _library_modularity(scores: list[list[float]], baseline: list[float], chance: float) -> float:
    tasks = tuple(f"t{i}" for i in range(len(baseline)))
    matrix = AblationMatrix(tasks, tasks, tuple(tuple(row) for row in scores), tuple(baseline))
    return matrix.modularity(chance)


LIBRARY: dict[str, Callable] = {"exclusive": exclusive, "modularity": _library_modularity}


def _mask(*rows: list[int]) -> Mask:
    return {"fc1.weight": torch.tensor(rows, dtype=torch.bool), "fc2.weight": torch.tensor([[1, 0]], dtype=torch.bool)}


def check_exclusive(fn: Callable, quiet: bool = False) -> None:
    """``fn(subnetworks)``: each task's mask minus every entry another task's mask also selects."""
    a, b, c = _mask([1, 1, 0], [0, 1, 0]), _mask([0, 1, 1], [0, 1, 0]), _mask([0, 0, 0], [1, 1, 1])
    empty = {n: torch.zeros_like(m) for n, m in a.items()}
    inputs = [
        ("two overlapping masks", ({"t0": a, "t1": b},), {}),
        ("three masks (an entry shared by any other goes)", ({"t0": a, "t1": b, "t2": c},), {}),
        ("disjoint masks stay whole", ({"t0": _mask([1, 0, 0], [0, 0, 0]), "t1": _mask([0, 0, 1], [0, 0, 0])},), {}),
        ("an empty mask stays empty and takes nothing from the others", ({"t0": a, "t1": empty},), {}),
    ]
    check(fn, cases_from(exclusive, inputs), name="exclusive", quiet=quiet)


def check_modularity(fn: Callable, quiet: bool = False) -> None:
    """``fn(scores, baseline, chance)``: mean normalised damage on the diagonal minus mean damage off it."""
    inputs = [
        ("perfectly modular: own task to chance, others intact", ([[0.25, 0.9], [0.8, 0.25]], [0.8, 0.9], 0.25), {}),
        ("partly modular", ([[0.5, 0.85], [0.7, 0.4]], [0.8, 0.9], 0.25), {}),
        ("below chance counts as full damage (clipped to 1)", ([[0.1, 0.9], [0.8, 0.0]], [0.8, 0.9], 0.25), {}),
        ("a score above the baseline counts as no damage (clipped to 0)", ([[0.3, 0.95], [0.9, 0.5]], [0.8, 0.9], 0.25), {}),
        ("anti-modular: the others suffer more", ([[0.7, 0.3], [0.3, 0.8]], [0.8, 0.9], 0.25), {}),
        ("a task at chance before ablation has no damage to take", ([[0.25, 0.9], [0.25, 0.5]], [0.25, 0.9], 0.25), {}),
        ("three tasks", ([[0.2, 0.9, 0.7], [0.8, 0.3, 0.7], [0.6, 0.9, 0.2]], [0.8, 0.9, 0.7], 0.2), {}),
    ]
    check(fn, cases_from(_library_modularity, inputs), name="modularity", quiet=quiet)
