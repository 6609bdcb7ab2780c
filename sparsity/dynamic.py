"""Mask update rules for dynamic sparsity: change which entries train, not how many.

A fixed mask commits to a subnetwork before training has said which entries matter.
Dynamic sparse training revisits the choice every few steps at a constant budget:

* :func:`rigl_swap` (RigL, Evci et al. 2020; for fine-tuning, SpIEL, Ansell et al.
  2024): in each tensor drop the selected entries that moved least and grow as many
  unselected entries with the largest gradient magnitude;
* :func:`reselect_top` (LIFT, Liu et al. 2025): periodically re-select each tensor's top
  entries by freshly computed scores, e.g. principal weights of the current model.

Both keep the count of every tensor, so the result can be handed straight to
``CompactAdamW.reselect``. Ties are broken by position: the earlier entry is picked
first, so an update is deterministic. In the lab's one training loop
(``sparsity.train.fit``), RigL every ``K`` steps is the hook ``sparsity.train.RigL``: it
swaps in ``before_step``, after the backward (the dense gradient is there, unselected
entries too) and before the optimizer moves::

    opt = CompactAdamW(model.named_parameters(), mask, lr=1e-3)
    fit(model, opt, loss_of_batch, T, batches=batches, hooks=[RigL(K, T, reference=snapshot(model))])

LIFT's re-selection needs no gradient: ``sparsity.train.Reselect`` runs it after every
``K``-th step::

    reselect = Reselect(K, lambda model, step: reselect_top(opt.mask, criteria.lift(model, rank=64)))
    fit(model, opt, loss_of_batch, T, batches=batches, hooks=[reselect])

A dropped entry keeps its current value (SpIEL resets it to the reference instead: ``sparsity.spiel``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from sparsity.validate import Mask, check_mask, check_reference


def _check_fraction(fraction: object) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"fraction must be a number in [0, 1], got {type(fraction).__name__}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return float(fraction)


def _check_scores(mask: Mask, scores: object, arg: str, names: list[str]) -> dict[str, torch.Tensor]:
    """The scores of ``names``: present, tensors of the mask's shape and device, no NaN (other keys are ignored)."""
    if not isinstance(scores, Mapping):
        raise TypeError(f"{arg} must be a mapping from parameter name to tensor, got {type(scores).__name__}")
    missing = [n for n in names if n not in scores]
    if missing:
        raise ValueError(f"{arg} has no entry for '{missing[0]}'")
    return check_reference(mask, {n: scores[n] for n in names}, arg)


def _partial(mask: Mask) -> list[str]:
    """Names of the tensors with something to choose: some but not all entries selected."""
    return [n for n, m in mask.items() if 0 < int(m.sum()) < m.numel()]


def _first_k(scores: torch.Tensor, k: int, descending: bool) -> torch.Tensor:
    """Positions of the k largest (or smallest) scores; ties go to the earlier position."""
    return torch.sort(scores, descending=descending, stable=True).indices[:k]


ROUNDINGS = ("floor", "round")
"""How :func:`rigl_swap` turns ``fraction * k`` into a count: ``floor`` as RigL's code does (an int cast of
``n_ones * drop_fraction`` in google-research/rigl and in the rigl-torch port), ``round`` as the lab's first
RigL did (the committed RigL rows)."""


def rigl_swap(
    mask: Mask,
    drop_scores: Mapping[str, torch.Tensor],
    grow_scores: Mapping[str, torch.Tensor],
    fraction: float,
    rounding: str = "floor",
) -> Mask:
    """RigL drop/grow (Evci et al. 2020) at a constant count per tensor; returns a new mask.

    In each tensor with k selected entries, the ``n = floor(fraction * k)`` (``rounding="round"``:
    ``round(fraction * k)``) selected entries with the smallest ``abs(drop_scores)`` (for fine-tuning:
    the change from the reference, ``theta - theta_ref``; RigL's sparse training drops the smallest
    ``abs(theta)``) are dropped and the ``n`` entries unselected before the swap with the largest
    ``abs(grow_scores)`` (the gradient) are grown.
    Unlike RigL, a just-dropped entry cannot regrow in the same swap, so ``n`` entries
    really change; ``n`` is capped by the number of unselected entries. Scores are
    needed only for partly selected tensors; other keys are ignored.
    """
    mask = check_mask(mask, mask)
    fraction = _check_fraction(fraction)
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    count = math.floor if rounding == "floor" else round
    names = _partial(mask)
    drop_scores = _check_scores(mask, drop_scores, "drop_scores", names)
    grow_scores = _check_scores(mask, grow_scores, "grow_scores", names)
    out = {n: m.clone() for n, m in mask.items()}
    for name in names:
        flat = out[name].view(-1)
        selected = flat.nonzero().squeeze(1)
        unselected = (~flat).nonzero().squeeze(1)
        n = min(count(fraction * selected.numel()), unselected.numel())
        drop = selected[_first_k(drop_scores[name].reshape(-1)[selected].abs(), n, descending=False)]
        grow = unselected[_first_k(grow_scores[name].reshape(-1)[unselected].abs(), n, descending=True)]
        flat[drop] = False
        flat[grow] = True
    return out


def reselect_top(mask: Mask, scores: Mapping[str, torch.Tensor]) -> Mask:
    """LIFT-style periodic re-selection: each tensor keeps its count, taken from the top ``scores``.

    LIFT's authors (Liu et al. 2025) re-select the principal weights every K steps of
    training (K from 10 to 2,000 in their configs): recompute the scores on the current
    model and call this every K steps (``sparsity.train.Reselect``), so the selection
    follows the model as it changes. Larger score = more important; scores are needed only for
    partly selected tensors; other keys are ignored.
    """
    mask = check_mask(mask, mask)
    names = _partial(mask)
    scores = _check_scores(mask, scores, "scores", names)
    out = {n: m.clone() for n, m in mask.items()}
    for name in names:
        flat = torch.zeros_like(out[name]).view(-1)
        flat[_first_k(scores[name].reshape(-1), int(mask[name].sum()), descending=True)] = True
        out[name] = flat.view(mask[name].shape)
    return out
