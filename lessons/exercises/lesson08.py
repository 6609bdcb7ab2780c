"""Lesson 8's exercises: the 2:4 keep-mask, and its compressed form (values and 2-bit positions).

2:4 keeps the two largest abs(w) of every four consecutive inputs (Mishra et al. 2021):
``sparsity.two_four.mask_24``. Sparse tensor cores store the kept values and, per group, the
two positions packed as ``i0 | i1 << 2`` in a byte: ``sparsity.two_four.compress``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lessons.checking import check
from lessons.exercises import cases_from
from sparsity import two_four


def _library_compress(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return two_four.compress(weight)


LIBRARY: dict[str, Callable] = {"mask_24": two_four.mask_24, "compress": _library_compress}


def _matrix(m: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed))


def _pruned(m: int, n: int, seed: int) -> torch.Tensor:
    w = _matrix(m, n, seed)
    return w * two_four.mask_24(w)


def check_mask_24(fn: Callable, quiet: bool = False) -> None:
    """``fn(weight)``: bool keep-mask, the two largest abs(w) of every 4 consecutive inputs of each row."""
    inputs = [
        ("one row of two groups", (torch.tensor([[0.1, -0.9, 0.5, 0.2, 3.0, 0.0, -4.0, 1.0]]),), {}),
        ("a random 8 x 16 matrix", (_matrix(8, 16, 0),), {}),
        ("ties: the earlier inputs win", (torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, -2.0, 2.0]]),), {}),
        ("an all-zero row still keeps two per group", (torch.zeros(2, 8),), {}),
        ("a bf16 weight", (_matrix(4, 8, 1).bfloat16(),), {}),
    ]
    check(fn, cases_from(two_four.mask_24, inputs), name="mask_24", quiet=quiet)


def check_compress(fn: Callable, quiet: bool = False) -> None:
    """``fn(weight)`` of a 2:4 weight: ``(values [N, K/2], meta uint8 [N, K/4])``, meta = i0 | i1 << 2 per group."""
    inputs = [
        ("one row", (torch.tensor([[0.0, -0.9, 0.5, 0.0, 3.0, 0.0, -4.0, 0.0]]),), {}),
        ("a pruned 4 x 16 matrix", (_pruned(4, 16, 0),), {}),
        ("a group with one zero kept weight: the lowest free position is stored",
         (torch.tensor([[0.0, 0.0, 0.7, 0.0], [0.0, 0.0, 0.0, 0.0]]),), {}),
        ("a bf16 weight keeps its dtype", (_pruned(2, 8, 1).bfloat16(),), {}),
    ]
    check(fn, cases_from(_library_compress, inputs), name="compress", quiet=quiet)
