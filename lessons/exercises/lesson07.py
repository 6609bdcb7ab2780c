"""Lesson 7's exercises: the best rank-r approximation of a matrix, and LIFT's principal-weight mask.

Truncated SVD gives the best rank-r approximation (Eckart & Young 1936):
``sparsity.criteria.low_rank_approximation``. LIFT (Liu et al. 2025) fine-tunes the top
entries *of that approximation* by magnitude: ``sparsity.masks.lift`` (per tensor).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lessons.checking import check
from lessons.exercises import cases_from
from sparsity import masks
from sparsity.criteria import low_rank_approximation


def _library_principal_mask(weight: torch.Tensor, rank: int, density: float) -> torch.Tensor:
    holder = nn.Module()
    holder.register_parameter("w", nn.Parameter(weight.detach().clone(), requires_grad=False))
    return masks.lift(holder, density, rank)["w"]


LIBRARY: dict[str, Callable] = {"low_rank_approximation": low_rank_approximation,
                                "principal_mask": _library_principal_mask}


def _matrix(m: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed))


def check_low_rank_approximation(fn: Callable, quiet: bool = False) -> None:
    """``fn(weight, rank)``: the best rank-``rank`` approximation of a 2-D weight, in float32."""
    inputs = [
        ("rank 1 of a square matrix", (_matrix(6, 6, 0), 1), {}),
        ("rank 3 of a wide matrix", (_matrix(4, 9, 1), 3), {}),
        ("full rank gives the matrix back", (_matrix(5, 3, 2), 3), {}),
        ("a bf16 weight: the approximation is float32", (_matrix(6, 4, 3).bfloat16(), 2), {}),
    ]
    check(fn, cases_from(low_rank_approximation, inputs), name="low_rank_approximation", quiet=quiet)


def check_principal_mask(fn: Callable, quiet: bool = False) -> None:
    """``fn(weight, rank, density)``: bool mask of the top ``density`` share of abs(rank-r approximation)."""
    spiky = _matrix(8, 8, 5)
    spiky[0, 0] = 40.0  # the largest weight; its rank-1 approximation also favours its row and column
    inputs = [
        ("rank 1, 25%", (_matrix(8, 6, 0), 1, 0.25), {}),
        ("rank 4, 10%", (_matrix(10, 10, 1), 4, 0.1), {}),
        ("not the same as plain magnitude", (spiky, 1, 0.2), {}),
        ("a budget that rounds to zero still selects one entry", (_matrix(4, 4, 2), 2, 0.01), {}),
        ("a bf16 weight", (_matrix(8, 8, 3).bfloat16(), 2, 0.25), {}),
    ]
    check(fn, cases_from(_library_principal_mask, inputs), name="principal_mask", quiet=quiet)
