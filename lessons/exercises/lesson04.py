"""Lesson 4's exercises: the keep-mask of global magnitude pruning, and one IMP round with rewinding.

Magnitude pruning (Han et al. 2015) keeps the largest abs(w) over all weight matrices:
``sparsity.prune.magnitude_prune``. One round of iterative magnitude pruning with rewinding
(Frankle & Carbin 2019; Frankle et al. 2020) prunes further among the survivors, then puts the
survivors back to an early snapshot: ``magnitude_prune(..., keep=)`` then ``apply_mask_`` on
the rewound weights, the steps ``sparsity.prune.iterative_magnitude_pruning`` takes per round.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from lessons.checking import check
from lessons.exercises import cases_from, tiny_mlp
from sparsity import prune

Mask = dict[str, torch.Tensor]


def _library_magnitude_keep(model: nn.Module, sparsity: float) -> Mask:
    return prune.magnitude_prune(model, sparsity)


def _library_imp_round(model: nn.Module, keep: Mask, rewind_to: dict[str, torch.Tensor],
                       sparsity: float) -> dict[str, dict[str, torch.Tensor]]:
    new_keep = prune.magnitude_prune(model, sparsity, keep=keep)
    rewound = copy.deepcopy(model)
    rewound.load_state_dict(rewind_to)
    prune.apply_mask_(rewound, new_keep)
    return {"keep": new_keep, "weights": {n: p.detach() for n, p in rewound.named_parameters()}}


LIBRARY: dict[str, Callable] = {"magnitude_keep": _library_magnitude_keep, "imp_round": _library_imp_round}


def check_magnitude_keep(fn: Callable, quiet: bool = False) -> None:
    """``fn(model, sparsity)``: {name: bool keep-mask}; the smallest abs(w) of all weights pruned, biases kept."""
    tied = tiny_mlp((4, 3, 2), 2)
    with torch.no_grad():
        for p in tied.parameters():
            p.fill_(0.5)
    inputs = [
        ("50% of a small MLP", (tiny_mlp((4, 3, 2), 0), 0.5), {}),
        ("90% of a deeper one", (tiny_mlp((4, 8, 6, 2), 1), 0.9), {}),
        ("sparsity 0 prunes nothing", (tiny_mlp((4, 3, 2), 0), 0.0), {}),
        ("all weights equal: the earliest entries are kept", (tied, 0.5), {}),
    ]
    check(fn, cases_from(_library_magnitude_keep, inputs), name="magnitude_keep", quiet=quiet)


def _trained_and_early(seed: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A model standing in for the trained one, and its "early checkpoint" (a snapshot before the change)."""
    model = tiny_mlp((4, 6, 2), seed)
    early = {n: t.clone() for n, t in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.linspace(0.5, 2.0, p.numel()).view_as(p))
    return model, early


def check_imp_round(fn: Callable, quiet: bool = False) -> None:
    """``fn(model, keep, rewind_to, sparsity)``: {"keep": the new keep-mask, "weights": the rewound, pruned weights}."""
    model, early = _trained_and_early(0)
    everything = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    first = prune.magnitude_prune(model, 0.5)
    zeroed = copy.deepcopy(model)
    prune.apply_mask_(zeroed, first)
    other, other_early = _trained_and_early(1)
    inputs = [
        ("round 1 from the dense model", (model, everything, early, 0.5), {}),
        ("round 2: pruned entries stay pruned", (zeroed, first, early, 0.75), {}),
        ("same sparsity as before: nothing new pruned, still rewound", (zeroed, first, early, 0.5), {}),
        ("another model, 30%", (other, everything, other_early, 0.3), {}),
    ]
    check(fn, cases_from(_library_imp_round, inputs), name="imp_round", quiet=quiet)
