"""Mask selection: which entries of which tensors are allowed to train.

A mask is a plain ``dict`` from parameter name to a bool tensor of the parameter's
shape, True where the entry is trainable. Every selector here returns a mask that
covers *every* parameter of the model: tensors that are not eligible come back all
False (frozen), so the mask says explicitly what trains and what does not.

Budgets: ``density`` is the share of eligible entries selected, either over all
eligible entries at once (``scope="global"``: big or important tensors may take more
than their share) or tensor by tensor (``scope="per_tensor"``: every tensor gets the
same density). The number selected is ``round(density * n)``, at least one.
Ties in the score are broken by position (the earlier entry wins), so a selection is
deterministic.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
from torch import nn

from sparsity.validate import (
    Mask,
    check_density,
    check_mask,
    check_module,
    check_nonnegative,
    check_reference,
    named_params,
)

KINDS = ("weight", "bias", "norm", "embedding")
"""Parameter kinds a budget can be restricted to (see :func:`parameter_kinds`)."""

SCOPES = ("global", "per_tensor")


def parameter_kinds(model: nn.Module) -> dict[str, str]:
    """Classify each parameter as weight, bias, norm or embedding by its owning module.

    Embedding tables and normalisation gains are usually left out of sparse fine-tuning
    budgets (their entries are few, or indexed by token rather than computed with), so
    a budget names the kinds it spends on.
    """
    kinds: dict[str, str] = {}
    for module_name, module in check_module(model).named_modules():
        is_norm = "norm" in type(module).__name__.lower()
        for param_name, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, nn.Embedding):
                kinds[full] = "embedding"
            elif is_norm:
                kinds[full] = "norm"
            elif p.ndim >= 2:
                kinds[full] = "weight"
            else:
                kinds[full] = "bias"
    return {name: kinds[name] for name, _ in model.named_parameters()}


def eligible(model: nn.Module, include: str | Iterable[str] = "weight") -> list[str]:
    """Names of the parameters whose kind is in ``include`` ("all" for every parameter)."""
    if isinstance(include, str):
        include = KINDS if include == "all" else (include,)
    include = tuple(include)
    unknown = [k for k in include if k not in KINDS]
    if unknown or not include:
        raise ValueError(f"include must name kinds among {KINDS} or be 'all', got {include}")
    names = [n for n, kind in parameter_kinds(model).items() if kind in include]
    if not names:
        raise ValueError(f"include={include} selects no parameter of this model")
    return names


def _empty_mask(model: nn.Module) -> Mask:
    return {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}


def _count(density: float, n: int) -> int:
    return max(1, round(density * n))


def _top_entries(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool tensor marking the k largest scores; ties go to the earlier position."""
    order = torch.sort(scores.flatten(), descending=True, stable=True).indices[:k]
    chosen = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    chosen[order] = True
    return chosen.view(scores.shape)


def top_k(model: nn.Module, scores: dict[str, torch.Tensor], density: float, scope: str = "global") -> Mask:
    """Turn per-entry scores into a mask holding the top ``density`` share of entries.

    ``scores`` names the eligible tensors; every other parameter comes back frozen.
    """
    density = check_density(density)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    params = named_params(model)
    check_reference(params, scores, "scores")
    if not scores:
        raise ValueError("scores is empty: no parameter to select from")
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


def random(
    model: nn.Module,
    density: float,
    seed: int = 0,
    *,
    scope: str = "global",
    include: str | Iterable[str] = "weight",
) -> Mask:
    """A uniformly random subset of the eligible entries: the baseline every criterion must beat."""
    density = check_density(density)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    gen = torch.Generator().manual_seed(seed)
    params = named_params(model)
    scores = {n: torch.rand(params[n].shape, generator=gen).to(params[n].device) for n in eligible(model, include)}
    return top_k(model, scores, density, scope)


def magnitude(
    model: nn.Module,
    density: float,
    *,
    scope: str = "global",
    include: str | Iterable[str] = "weight",
) -> Mask:
    """The largest-magnitude entries: the classic pruning criterion used as a selector."""
    params = named_params(model)
    scores = {n: params[n].detach().abs() for n in eligible(model, include)}
    return top_k(model, scores, density, scope)


def layers(model: nn.Module, names_or_patterns: str | Iterable[str]) -> Mask:
    """Whole tensors: every parameter matched by a name, a module prefix or a glob pattern.

    ``"fc2"`` selects ``fc2.weight`` and ``fc2.bias``; ``"*.weight"`` every weight;
    ``"blocks.1.*"`` one block. A pattern that matches nothing is an error (a typo would
    otherwise freeze the whole model without a word).
    """
    if isinstance(names_or_patterns, str):
        names_or_patterns = [names_or_patterns]
    patterns = list(names_or_patterns)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"names_or_patterns must be a non-empty list of strings, got {patterns!r}")
    mask = _empty_mask(model)
    for pattern in patterns:
        hits = [n for n in mask if n == pattern or n.startswith(pattern + ".") or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"pattern '{pattern}' matches no parameter (parameters: {', '.join(mask)})")
        for n in hits:
            mask[n].fill_(True)
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
    params = named_params(model)
    reference = check_reference(params, reference)
    mask = _empty_mask(model)
    for name in eligible(model, include):
        if name not in reference:
            raise ValueError(f"reference has no entry for parameter '{name}'")
        mask[name] = (params[name].detach() - reference[name]).abs() > tol
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
