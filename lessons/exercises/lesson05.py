"""Lesson 5's exercises: the LoRA-equal budget of a matrix, and the area under a learning-forgetting frontier.

A rank-r LoRA adapter on an (m, n) matrix trains r * (m + n) entries (Hu et al. 2021); the
lab's sparse methods get the same count, capped at the matrix's size: ``sparsity.masks.lora_equal``.
A method is judged by its Pareto frontier of (retention, target) points and the area it
dominates (Biderman et al. 2024): ``scaleup.frontier.pareto`` and ``scaleup.frontier.area``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lessons.checking import check
from lessons.exercises import cases_from
from scaleup.frontier import area, pareto
from sparsity import masks


def _library_lora_equal_count(shape: tuple[int, int], rank: int) -> int:
    holder = nn.Module()
    holder.register_parameter("w", nn.Parameter(torch.zeros(shape), requires_grad=False))
    return int(masks.lora_equal(holder, {"w": torch.ones(shape)}, rank)["w"].sum())


def _library_frontier_area(points: list[tuple[float, float]]) -> float:
    return area(pareto(points))


LIBRARY: dict[str, Callable] = {"lora_equal_count": _library_lora_equal_count, "frontier_area": _library_frontier_area}


def check_lora_equal_count(fn: Callable, quiet: bool = False) -> None:
    """``fn(shape, rank)``: how many entries a LoRA-equal sparse mask trains in a matrix of ``shape``."""
    inputs = [
        ("a square matrix, rank 4", ((64, 64), 4), {}),
        ("a wide matrix, rank 1", ((8, 32), 1), {}),
        ("a tall matrix, rank 8", ((256, 64), 8), {}),
        ("a rank so large the budget exceeds the matrix: every entry", ((6, 4), 3), {}),
    ]
    check(fn, cases_from(_library_lora_equal_count, inputs), name="lora_equal_count", quiet=quiet)


def check_frontier_area(fn: Callable, quiet: bool = False) -> None:
    """``fn(points)``: the area of the unit square dominated by the Pareto frontier of (x, y) points."""
    inputs = [
        ("one point", ([(0.5, 0.4)],), {}),
        ("a frontier of three points", ([(0.9, 0.2), (0.6, 0.5), (0.2, 0.9)],), {}),
        ("a dominated point adds nothing", ([(0.9, 0.2), (0.6, 0.5), (0.5, 0.4), (0.2, 0.9)],), {}),
        ("repeated points count once", ([(0.6, 0.5), (0.6, 0.5), (0.3, 0.7)],), {}),
        ("no points: area 0", ([],), {}),
    ]
    check(fn, cases_from(_library_frontier_area, inputs), name="frontier_area", quiet=quiet)
