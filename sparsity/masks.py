"""Mask selection: which entries of which tensors are allowed to train.

A mask is a plain ``dict`` from parameter name to a bool tensor of the parameter's
shape, True where the entry is trainable. Every selector here returns a mask that
covers *every* parameter of the model: tensors that are not eligible come back all
False (frozen), so the mask says explicitly what trains and what does not and never
relies on the coverage rule for absent names (``sparsity.validate.Mask``).

Budgets: ``density`` is the share of eligible entries selected, either over all
eligible entries at once (``scope="global"``: big or important tensors may take more
than their share) or tensor by tensor (``scope="per_tensor"``: every tensor gets the
same density). The number selected is ``round(density * n)``, at least one.
Ties in the score are broken by position (the earlier entry wins), so a selection is
deterministic.

Three layers, kept apart so each can change alone: a *criterion* scores every entry
(``sparsity.criteria``), a *selection policy* here turns scores into a mask (``top_k``,
``lora_equal``, ``n_m``), and a *storage* trains the selected entries (``sparsity.optim``
with a dense mask, ``sparsity.compact`` with indices). The selectors ``random``,
``magnitude`` and ``lift`` are a criterion plus ``top_k``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from sparsity import criteria
from sparsity.eligibility import KINDS, eligible, input_axes, match_parameters, parameter_kinds
from sparsity.validate import (
    Mask,
    check_density,
    check_mask,
    check_nonnegative,
    check_positive_int,
    check_reference,
    named_params,
)

__all__ = [
    "KINDS", "SCOPES", "parameter_kinds", "eligible", "top_k", "top_k_within", "lora_equal", "n_m",
    "random", "magnitude", "lift", "layers", "from_update", "validate", "density",
]

SCOPES = ("global", "per_tensor")


def _empty_mask(model: nn.Module) -> Mask:
    return {n: torch.zeros_like(p, dtype=torch.bool) for n, p in named_params(model).items()}


def _count(density: float, n: int) -> int:
    return max(1, round(density * n))


def _top_entries(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool tensor marking the k largest scores; ties go to the earlier position."""
    order = torch.sort(scores.flatten(), descending=True, stable=True).indices[:k]
    chosen = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    chosen[order] = True
    return chosen.view(scores.shape)


def _checked_scores(model: nn.Module, scores: object) -> dict[str, torch.Tensor]:
    scores = check_reference(named_params(model), scores, "scores")
    if not scores:
        raise ValueError("scores is empty: no parameter to select from")
    return scores


def top_k(model: nn.Module, scores: dict[str, torch.Tensor], density: float, scope: str = "global") -> Mask:
    """Turn per-entry scores into a mask holding the top ``density`` share of entries.

    ``scores`` names the eligible tensors; every other parameter comes back frozen.
    """
    density = check_density(density)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    scores = _checked_scores(model, scores)
    mask = _empty_mask(model)
    if scope == "per_tensor":
        for name, s in scores.items():
            mask[name] = _top_entries(s, _count(density, s.numel()))
        return mask
    flat = torch.cat([s.detach().flatten().float().cpu() for s in scores.values()])
    chosen = _top_entries(flat, _count(density, flat.numel()))
    start = 0
    for name, s in scores.items():
        mask[name] = chosen[start : start + s.numel()].view(s.shape).to(s.device)
        start += s.numel()
    return mask


def top_k_within(
    model: nn.Module,
    scores: dict[str, torch.Tensor],
    support: Mask,
    density: float,
    scope: str = "global",
) -> Mask:
    """``top_k`` restricted to a set: entries outside ``support`` are never selected.

    For criteria that name a *set* (the entries an L1 run moved, the weights of chosen
    blocks): the set is ranked by ``scores`` first, so no budget is lost to ties outside
    it; when the budget exceeds the set, the whole set is returned (fewer entries than
    the budget; callers report the actual count).
    """
    support = check_mask(named_params(model), support, "support")
    scores = _checked_scores(model, scores)
    missing = [n for n in scores if n not in support]
    if missing:
        raise ValueError(f"support has no entry for the scored tensors {missing}")
    ranked = {n: torch.where(support[n], s.float(), -torch.inf) for n, s in scores.items()}
    chosen = top_k(model, ranked, density, scope)
    return {n: m & support[n] if n in support else m for n, m in chosen.items()}


def lora_equal(model: nn.Module, scores: dict[str, torch.Tensor], rank: int) -> Mask:
    """In each matrix of shape (m, n), the top ``rank * (m + n)`` entries by score.

    That is exactly the trainable count of a LoRA adapter of rank ``rank`` on the same
    matrix, so a sparse method and LoRA can be compared at a matched budget.
    """
    check_positive_int(rank, "rank")
    scores = _checked_scores(model, scores)
    mask = _empty_mask(model)
    for name, s in scores.items():
        if s.ndim < 2:
            raise ValueError(f"lora_equal budgets matrices; '{name}' has shape {tuple(s.shape)}")
        m, n = s.shape[0], s[0].numel()
        mask[name] = _top_entries(s, min(rank * (m + n), s.numel()))
    return mask


def n_m(model: nn.Module, scores: dict[str, torch.Tensor], n: int = 2, m: int = 4) -> Mask:
    """N:M structure: in every group of ``m`` consecutive entries along the input dimension
    (the last one of ``nn.Linear``'s ``[out, in]``; axis 0 of GPT-2's ``Conv1D`` ``[in, out]``,
    see ``sparsity.eligibility.input_axes``), the ``n`` best by score. 2:4 is what sparse
    tensor cores accelerate.
    """
    check_positive_int(n, "n")
    check_positive_int(m, "m")
    if n > m:
        raise ValueError(f"n must be <= m, got {n}:{m}")
    scores = _checked_scores(model, scores)
    mask = _empty_mask(model)
    axes = input_axes(model)
    for name, s in scores.items():
        if s.ndim < 2:
            raise ValueError(f"N:M needs matrices; '{name}' has shape {tuple(s.shape)}")
        s = s.detach().movedim(axes[name], -1)
        if s.shape[-1] % m:
            raise ValueError(f"N:M with m={m} needs the input dimension divisible by {m}; '{name}' has {s.shape[-1]}")
        groups = s.reshape(-1, m)
        best = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
        chosen = torch.zeros(groups.shape, dtype=torch.bool, device=s.device).scatter_(1, best, True)
        mask[name] = chosen.view(s.shape).movedim(-1, axes[name]).contiguous()
    return mask


def random(
    model: nn.Module,
    density: float,
    seed: int = 0,
    *,
    scope: str = "global",
    include: str | Iterable[str] = "weight",
) -> Mask:
    """A uniformly random subset of the eligible entries: the baseline every criterion must beat."""
    check_density(density)
    return top_k(model, criteria.random(model, seed, include), density, scope)


def magnitude(
    model: nn.Module,
    density: float,
    *,
    scope: str = "global",
    include: str | Iterable[str] = "weight",
) -> Mask:
    """The largest-magnitude entries: the classic pruning criterion used as a selector."""
    return top_k(model, criteria.magnitude(model, include), density, scope)


def lift(
    model: nn.Module,
    density: float,
    rank: int,
    *,
    scope: str = "per_tensor",
    include: str | Iterable[str] = "weight",
    method: str = "svd",
) -> Mask:
    """LIFT principal weights (Liu et al. 2025): top entries of each matrix's rank-r approximation."""
    check_density(density)
    return top_k(model, criteria.lift(model, rank, include, method), density, scope)


def layers(model: nn.Module, names_or_patterns: str | Iterable[str]) -> Mask:
    """Whole tensors: every parameter matched by a name, a module prefix or a glob pattern."""
    chosen = set(match_parameters(model, names_or_patterns))
    mask = _empty_mask(model)
    for name in chosen:
        mask[name].fill_(True)
    return mask


def from_update(
    model: nn.Module,
    reference: dict[str, torch.Tensor],
    tol: float = 1e-5,
    *,
    include: str | Iterable[str] = "all",
) -> Mask:
    """Entries whose change from ``reference`` exceeds ``tol`` (abs(delta) > tol).

    The mask of an observed update, e.g. the subnetwork an RL run actually moved
    (Mukherjee et al. 2025 use tol = 1e-5) or the one an L1-to-init run kept.
    """
    tol = check_nonnegative(tol, "tol")
    mask = _empty_mask(model)
    for name, delta in criteria.update(model, reference, include).items():
        mask[name] = delta > tol
    return mask


def validate(model: nn.Module, mask: object) -> Mask:
    """Check a mask against a model (known keys, shapes, devices, bool dtype) and return it."""
    return check_mask(named_params(model), mask)


def density(mask: Mask) -> float:
    """Share of True entries over all tensors of the mask."""
    total = sum(m.numel() for m in mask.values())
    if total == 0:
        raise ValueError("mask is empty")
    return sum(int(m.sum()) for m in mask.values()) / total
