"""Lesson 1's exercises: the proximal L1 step toward the start, and each tensor's share of the update.

The proximal operator of ``t * |theta - theta_0|_1`` is soft-thresholding of the change
(Parikh & Boyd 2014, "Proximal Algorithms"): the lab's ``sparsity.regularize.prox_l1_to_init_``.
The update share is what lesson 1 reads to say which layer moved: ``sparsity.metrics.update_norms``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lessons.checking import check
from lessons.exercises import cases_from, tiny_mlp
from sparsity.metrics import update_norms
from sparsity.regularize import prox_l1_to_init_


def _library_prox_l1_step(weight: torch.Tensor, start: torch.Tensor, threshold: float) -> torch.Tensor:
    holder = nn.Module()
    holder.register_parameter("w", nn.Parameter(weight.detach().clone(), requires_grad=False))
    prox_l1_to_init_(holder, {"w": start}, threshold)
    return holder.w.detach()


def _library_update_shares(model: nn.Module, start: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: norms.share for name, norms in update_norms(model, start).items()}


LIBRARY: dict[str, Callable] = {"prox_l1_step": _library_prox_l1_step, "update_shares": _library_update_shares}


def check_prox_l1_step(fn: Callable, quiet: bool = False) -> None:
    """``fn(weight, start, threshold)``: the weight after soft-thresholding its change from ``start``."""
    w = torch.tensor([0.50, -0.20, 0.31, 1.00, -1.00])
    w0 = torch.tensor([0.40, -0.30, 0.30, 0.00, -0.50])
    inputs = [
        ("changes above and below the threshold", (w, w0, 0.05), {}),
        ("threshold 0 (no pull: the weight unchanged)", (w, w0, 0.0), {}),
        ("a change exactly at the threshold ends exactly at the start", (torch.tensor([0.75, 0.25]),
                                                                       torch.tensor([0.5, 0.5]), 0.25), {}),
        ("a threshold above every change (everything back to the start)", (w, w0, 10.0), {}),
        ("a matrix", (torch.arange(6.0).reshape(2, 3), torch.ones(2, 3), 1.5), {}),
        ("bf16 weights stay bf16", (w.bfloat16(), w0.bfloat16(), 0.05), {}),
    ]
    check(fn, cases_from(_library_prox_l1_step, inputs), name="prox_l1_step", quiet=quiet)


def _moved(seed: int, how: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    model = tiny_mlp((4, 3, 2), seed)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        if how == "one tensor":
            model[2].weight.add_(0.5)
        elif how == "all":
            for p in model.parameters():
                p.add_(torch.linspace(-1, 1, p.numel()).view_as(p))
    return model, start


def check_update_shares(fn: Callable, quiet: bool = False) -> None:
    """``fn(model, start)``: each parameter's share of the model's total L1 change from ``start``."""
    inputs = [(f"{how} moved", _moved(seed, how), {}) for seed, how in ((0, "one tensor"), (1, "all"))]
    inputs.append(("nothing moved: every share is 0", _moved(2, "nothing"), {}))
    check(fn, cases_from(_library_update_shares, inputs), name="update_shares", quiet=quiet)
