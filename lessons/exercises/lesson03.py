"""Lesson 3's exercises: the SNIP score, and top-k within a budget (the global and per-tensor policies).

SNIP (Lee et al. 2019) scores an entry by abs(w * g), the gradient summed over the
calibration batches: ``sparsity.criteria.snip``. Turning scores into a mask of a density is
``sparsity.masks.top_k`` (the lab's conventions: round(density * n) entries, at least one;
ties go to the earlier entry).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lessons.checking import check
from lessons.exercises import cases_from, tiny_mlp
from sparsity import criteria, masks


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def _library_snip_scores(model: nn.Module, loss_fn: Callable, batches: list) -> dict[str, torch.Tensor]:
    return criteria.snip(model, loss_fn, batches)


LIBRARY: dict[str, Callable] = {"snip_scores": _library_snip_scores, "top_k": masks.top_k}


def _batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)) for _ in range(n)]


def check_snip_scores(fn: Callable, quiet: bool = False) -> None:
    """``fn(model, loss_fn, batches)``: {weight name: abs(w * g)}, g the loss gradient summed over batches."""
    inputs = [
        ("one batch", (tiny_mlp((4, 3, 2), 0), _mse, _batches(1, 0)), {}),
        ("three batches: the gradients are summed before abs", (tiny_mlp((4, 3, 2), 1), _mse, _batches(3, 1)), {}),
        ("a deeper model", (tiny_mlp((4, 5, 3, 2), 2), _mse, _batches(2, 2)), {}),
    ]
    check(fn, cases_from(_library_snip_scores, inputs), name="snip_scores", quiet=quiet)


def _scores(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters() if n.endswith("weight")}


def check_top_k(fn: Callable, quiet: bool = False) -> None:
    """``fn(model, scores, density, scope="global")``: a mask of every parameter, the top entries True."""
    model = tiny_mlp((4, 3, 2), 0)
    scores = _scores(model, 0)
    ties = {n: torch.ones_like(s) for n, s in scores.items()}
    small_big = {"0.weight": scores["0.weight"] * 0.01, "2.weight": scores["2.weight"]}
    inputs = [
        ("global, 25%", (model, scores, 0.25), {}),
        ("per tensor, 25%", (model, scores, 0.25), {"scope": "per_tensor"}),
        ("global: a tensor of small scores gets nothing", (model, small_big, 0.3), {}),
        ("per tensor: every tensor gets its share anyway", (model, small_big, 0.3), {"scope": "per_tensor"}),
        ("all scores tied: the earliest entries win", (model, ties, 0.5), {}),
        ("a budget that rounds to zero still selects one entry", (model, scores, 0.001), {}),
        ("density 1 selects every scored entry, biases stay frozen", (model, scores, 1.0), {}),
        ("scores for one tensor only: the others come back frozen", (model, {"2.weight": scores["2.weight"]}, 0.5), {}),
    ]
    check(fn, cases_from(masks.top_k, inputs), name="top_k", quiet=quiet)
