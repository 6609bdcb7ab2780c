"""Measuring an update: how big, how sparse, how low-rank, and how two subnetworks overlap.

The update of a fine-tuning run is ``delta = theta - theta_ref``. Its per-tensor norms
say *where* the change went (Liu 2026's "which layer needs fine-tuning" probe); its
sparsity at a tolerance says *how much* of the network moved (Mukherjee et al. 2025
measure abs(delta) <= 1e-5 in bf16); its rank says whether a sparse update is also a
low-rank one (it usually is not).
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import torch
from torch import nn

from sparsity.validate import Mask, TensorDict, check_nonnegative, check_reference, named_params


def _as_tensors(other: nn.Module | TensorDict) -> TensorDict:
    return named_params(other) if isinstance(other, nn.Module) else other


def distances(model: nn.Module, other: nn.Module | TensorDict, ord: float = 1) -> dict[str, float]:
    """Per-tensor ``||theta - theta_other||_ord`` (ord = 1, 2 or inf) to another model or a snapshot.

    Only tensors present in ``other`` are measured (a snapshot may cover a subset).
    """
    if isinstance(ord, bool) or ord not in (1, 2, float("inf")):
        raise ValueError(f"ord must be 1, 2 or inf, got {ord}")
    params = named_params(model)
    reference = check_reference(params, _as_tensors(other), "other")
    if not reference:
        return {}
    with torch.no_grad():
        norms = torch.stack([torch.linalg.vector_norm((params[n] - r).float(), ord) for n, r in reference.items()])
    return dict(zip(reference, norms.tolist()))


@dataclass(frozen=True)
class TensorUpdate:
    """Norms of one tensor's update and its share of the whole model's L1 update."""

    l1: float
    l2: float
    max: float
    share: float


def update_norms(model: nn.Module, reference: TensorDict) -> dict[str, TensorUpdate]:
    """L1, L2 and max norm of each tensor's update, and each tensor's share of the total L1.

    A share is 0 for every tensor when nothing moved.
    """
    l1 = distances(model, reference, 1)
    l2 = distances(model, reference, 2)
    mx = distances(model, reference, float("inf"))
    total = sum(l1.values())
    return {n: TensorUpdate(l1[n], l2[n], mx[n], l1[n] / total if total > 0 else 0.0) for n in l1}


@dataclass(frozen=True)
class UpdateSparsity:
    """Share of entries that did *not* move (abs(delta) <= tol), overall and per tensor."""

    overall: float
    per_tensor: dict[str, float]


def update_sparsity(
    model: nn.Module,
    reference: TensorDict,
    tol: float = 1e-5,
    dtype: torch.dtype | None = None,
) -> UpdateSparsity:
    """Update sparsity: the share of entries with abs(theta - theta_ref) <= tol.

    ``dtype=torch.bfloat16`` compares the two models as stored in bf16, the convention
    of Mukherjee et al. 2025 (differences below bf16 precision are not updates).
    """
    tol = check_nonnegative(tol, "tol")
    params = named_params(model)
    reference = check_reference(params, reference)
    if not reference:
        raise ValueError("reference is empty: nothing to measure")
    unchanged: dict[str, int] = {}
    with torch.no_grad():
        for n, r in reference.items():
            p = params[n]
            if dtype is not None:
                p, r = p.to(dtype), r.to(dtype)
            unchanged[n] = int(((p.float() - r.float()).abs() <= tol).sum())
    sizes = {n: r.numel() for n, r in reference.items()}
    return UpdateSparsity(
        overall=sum(unchanged.values()) / sum(sizes.values()),
        per_tensor={n: unchanged[n] / sizes[n] for n in reference},
    )


def update_rank(delta: torch.Tensor, rtol: float | None = None) -> int:
    """Numerical rank of a 2-D update (singular values above ``rtol * s_max``; torch's default rtol)."""
    if not isinstance(delta, torch.Tensor):
        raise TypeError(f"delta must be a tensor, got {type(delta).__name__}")
    if delta.ndim != 2:
        raise ValueError(f"delta must be 2-D, got shape {tuple(delta.shape)}")
    if torch.isnan(delta).any():
        raise ValueError("delta contains NaN")
    if rtol is not None:
        check_nonnegative(rtol, "rtol")
    return int(torch.linalg.matrix_rank(delta.detach().float(), rtol=rtol))


@dataclass(frozen=True)
class MaskOverlap:
    """How much two masks agree, with what independent random masks would give.

    ``a_in_b`` = |a & b| / |a| (share of a also in b); the ``chance_`` fields are the
    expected values for random masks of the same densities, so an overlap means
    something only well above its chance value.
    """

    jaccard: float
    a_in_b: float
    b_in_a: float
    density_a: float
    density_b: float
    chance_jaccard: float
    chance_a_in_b: float
    chance_b_in_a: float


def mask_overlap(a: Mask, b: Mask) -> MaskOverlap:
    """Jaccard and one-sided overlaps of two masks over the same tensors, plus chance levels."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        raise TypeError("a and b must be masks: dicts from parameter name to bool tensor")
    if set(a) != set(b):
        raise ValueError(f"masks cover different tensors: only in a {sorted(set(a) - set(b))}, only in b {sorted(set(b) - set(a))}")
    check_reference(a, b, "b")
    for name in a:
        if a[name].dtype != torch.bool or b[name].dtype != torch.bool:
            raise TypeError(f"mask entries must be bool tensors; '{name}' is {a[name].dtype} / {b[name].dtype}")
    n = sum(t.numel() for t in a.values())
    if n == 0:
        raise ValueError("masks are empty")
    na = sum(int(t.sum()) for t in a.values())
    nb = sum(int(t.sum()) for t in b.values())
    both = sum(int((a[k] & b[k]).sum()) for k in a)
    either = na + nb - both
    da, db = na / n, nb / n
    chance_union = da + db - da * db
    return MaskOverlap(
        jaccard=both / either if either else 0.0,
        a_in_b=both / na if na else 0.0,
        b_in_a=both / nb if nb else 0.0,
        density_a=da,
        density_b=db,
        chance_jaccard=da * db / chance_union if chance_union else 0.0,
        chance_a_in_b=db,
        chance_b_in_a=da,
    )


def changed_entries(model: nn.Module, reference: TensorDict, tol: float = 1e-5,
                    dtype: torch.dtype | None = None) -> Mask:
    """The entries that moved, ``abs(theta - theta_ref) > tol`` (compared in ``dtype`` if given):
    the complement of what :func:`update_sparsity` counts, as a mask per tensor."""
    tol = check_nonnegative(tol, "tol")
    params = named_params(model)
    reference = check_reference(params, reference)
    out = {}
    with torch.no_grad():
        for n, r in reference.items():
            p = params[n]
            if dtype is not None:
                p, r = p.to(dtype), r.to(dtype)
            out[n] = (p.float() - r.float()).abs() > tol
    return out


def half_ulp(values: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Half a unit in the last place of each value as stored in ``dtype`` (0 where the value is 0).

    An update smaller than this rounds back to the stored value: in bf16 (7 stored mantissa
    bits) a weight of 0.5 does not move for a step below 2**-9 (Mukherjee et al. 2025)."""
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    mantissa_bits = round(-math.log2(torch.finfo(dtype).eps))
    _, exponent = torch.frexp(values.detach().to(dtype).float())
    half = torch.ldexp(torch.ones_like(values, dtype=torch.float32), exponent - mantissa_bits - 2)
    return torch.where(values == 0, torch.zeros_like(half), half)


def below_half_ulp_share(reference: TensorDict, updated: TensorDict, dtype: torch.dtype = torch.bfloat16) -> float:
    """Share of entries whose total update ``abs(updated - reference)`` is below half a ``dtype`` ulp of
    the reference value: the update sparsity that rounding alone would produce (a predictor)."""
    if set(reference) != set(updated):
        raise ValueError("reference and updated must hold the same tensors")
    below = total = 0
    for n, r in reference.items():
        d = (updated[n].detach().float() - r.detach().float()).abs()
        below += int((d < half_ulp(r, dtype)).sum() + ((r == 0) & (d == 0)).sum())
        total += r.numel()
    return below / total


def changed_by_magnitude_decile(reference: TensorDict, changed: Mask) -> list[float]:
    """Share of entries that changed within each decile of ``abs(theta_ref)`` over all tensors (smallest first)."""
    if set(reference) != set(changed):
        raise ValueError("reference and changed must hold the same tensors")
    if sum(t.numel() for t in reference.values()) < 10:
        raise ValueError("deciles need at least 10 entries")
    magnitude = torch.cat([reference[n].detach().abs().flatten().float() for n in reference])
    moved = torch.cat([changed[n].flatten() for n in reference])
    order = magnitude.argsort()
    return [float(part.float().mean()) for part in moved[order].tensor_split(10)]
