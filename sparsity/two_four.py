"""The 2:4 pattern and its compressed format (Mishra et al. 2021, "Accelerating Sparse Deep
Neural Networks"): at most 2 nonzeros in every group of 4 consecutive inputs of a row.

For a linear layer ``y = x @ W.T`` the groups run along the *input* dimension (the last
one of ``W``), as NVIDIA's sparse tensor cores read them. :func:`mask_24` picks the 2 best
of every 4 inputs by any score (``abs(w)`` by default) through ``masks.n_m``;
:func:`check_two_four` says where a weight breaks the pattern; :func:`compress` /
:func:`decompress` are the reference compressed format, an exact round trip on any device.

**Reference compressed format.** A weight ``[N, K]`` (K divisible by 4) becomes

* ``values``: ``[N, K // 2]``, same dtype: the two kept entries of every group, in
  input order (group g of row n is ``values[n, 2g]`` and ``values[n, 2g + 1]``);
* ``meta``: ``torch.uint8 [N, K // 4]``, one byte per group: ``i0 | i1 << 2`` with
  ``0 <= i0 < i1 <= 3`` the in-group positions of the two kept entries.

A group with fewer than two nonzeros still stores two entries (a zero value at the
lowest free position), so every row has exactly ``K // 2`` values, as on the hardware.
CUTLASS and cuSPARSELt pack the same 2-bit positions 8 to a 16-bit word in a tiled,
interleaved order; ours spends a byte per group so that a student can read it
(``values`` + ``meta`` = 62.5% of a dense fp16 matrix; the hardware format 56.25%).
"""

from __future__ import annotations

import torch
from torch import nn

from sparsity import masks

GROUP, KEPT = 4, 2
"""The pattern: KEPT nonzeros at most in every GROUP consecutive inputs."""


# --- the pattern ---------------------------------------------------------------------


def _check_matrix(t: object, arg: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{arg} must be a tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{arg} must be a 2-D matrix [out_features, in_features], got shape {tuple(t.shape)}")
    if t.shape[1] % GROUP or t.shape[1] == 0:
        raise ValueError(
            f"2:4 needs the input dimension (the last) divisible by {GROUP}; {arg} has shape {tuple(t.shape)}"
        )
    return t


def _nonzeros_per_group(t: torch.Tensor) -> torch.Tensor:
    return (t != 0).reshape(t.shape[0], -1, GROUP).sum(-1)


def check_two_four(weight: torch.Tensor, arg: str = "weight") -> torch.Tensor:
    """Raise a ValueError naming the first group of ``weight`` with more than 2 nonzeros; return it otherwise."""
    counts = _nonzeros_per_group(_check_matrix(weight, arg))
    bad = counts > KEPT
    if bad.any():
        row, group = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{arg} violates 2:4: row {row}, inputs {GROUP * group}..{GROUP * group + 3} hold {int(counts[row, group])} "
            f"nonzeros (at most {KEPT} allowed); {int(bad.sum())} of {bad.numel()} groups break the pattern"
        )
    return weight


def is_two_four(weight: torch.Tensor) -> bool:
    """True if every group of 4 consecutive inputs holds at most 2 nonzeros."""
    return bool((_nonzeros_per_group(_check_matrix(weight, "weight")) <= KEPT).all())


def mask_24(weight: torch.Tensor, score: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask with the 2 highest ``score`` entries (default ``abs(weight)``) of every 4 inputs.

    The selection is ``masks.n_m``'s (ties go to the earlier input), applied to one tensor.
    """
    weight = _check_matrix(weight, "weight")
    score = weight.detach().abs() if score is None else score
    if not isinstance(score, torch.Tensor) or score.shape != weight.shape:
        raise ValueError(f"score must be a tensor of the weight's shape {tuple(weight.shape)}")
    holder = nn.Module()
    holder.register_parameter("w", nn.Parameter(weight.detach(), requires_grad=False))
    return masks.n_m(holder, {"w": score.to(weight.device)}, KEPT, GROUP)["w"]


def check_keep(mask: object, weight: torch.Tensor, arg: str = "mask") -> torch.Tensor:
    """A 2:4 keep-mask: bool, the weight's shape and device, exactly 2 True in every group of 4."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{arg} must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != weight.shape or mask.device != weight.device:
        raise ValueError(
            f"{arg} has shape {tuple(mask.shape)} on {mask.device}; the weight has {tuple(weight.shape)} on {weight.device}"
        )
    counts = mask.reshape(mask.shape[0], -1, GROUP).sum(-1)
    if (counts != KEPT).any():
        row, group = (int(i) for i in (counts != KEPT).nonzero()[0])
        raise ValueError(
            f"{arg} is not a 2:4 keep-mask: row {row}, inputs {GROUP * group}..{GROUP * group + 3} keep "
            f"{int(counts[row, group])} entries (exactly {KEPT} required)"
        )
    return mask


# --- the compressed format -------------------------------------------------------------


def _positions(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[N * K/4, 2] ascending in-group positions of the stored entries."""
    if mask is None:
        # Nonzeros first, then the lowest free positions: a stable sort on "is nonzero".
        keyed = (weight != 0).reshape(-1, GROUP).to(torch.int8)
        chosen = torch.sort(keyed, dim=1, descending=True, stable=True).indices[:, :KEPT]
    else:
        chosen = mask.reshape(-1, GROUP).nonzero()[:, 1].reshape(-1, KEPT)
    return torch.sort(chosen, dim=1).values


def compress(weight: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, meta)`` of a 2:4 weight in the reference format (see the module docstring).

    ``mask``: the keep-mask saying which two positions of each group to store (needed
    when a kept weight happens to be zero, so the pattern stays the mask's). Without it
    the nonzeros are stored. A weight that breaks the pattern, or is nonzero where the
    mask prunes, is an error: compression would silently drop those entries.
    """
    weight = check_two_four(weight)
    if mask is not None:
        mask = check_keep(mask, weight)
        if (weight.detach()[~mask] != 0).any():
            raise ValueError("weight has nonzero entries where the mask prunes: apply the mask first")
    pos = _positions(weight.detach(), mask)
    values = weight.detach().reshape(-1, GROUP).gather(1, pos).reshape(weight.shape[0], -1)
    meta = (pos[:, 0] | (pos[:, 1] << 2)).to(torch.uint8).reshape(weight.shape[0], -1)
    return values, meta


def _check_meta(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or not isinstance(meta, torch.Tensor):
        raise TypeError("values and meta must be tensors (from compress)")
    if meta.dtype != torch.uint8:
        raise TypeError(f"meta must have dtype torch.uint8, got {meta.dtype}")
    if values.ndim != 2 or meta.ndim != 2 or values.shape != (meta.shape[0], KEPT * meta.shape[1]):
        raise ValueError(
            f"values {tuple(values.shape)} and meta {tuple(meta.shape)} do not match: need [N, K/2] and [N, K/4]"
        )
    m = meta.to(torch.int64).reshape(-1)
    i0, i1 = m & 3, (m >> 2) & 3
    if ((m >> 4) != 0).any() or (i0 >= i1).any():
        raise ValueError("meta holds invalid groups: each byte must be i0 | i1 << 2 with 0 <= i0 < i1 <= 3")
    return torch.stack([i0, i1], dim=1)


def decompress(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """The dense ``[N, K]`` weight of ``(values, meta)``: the exact inverse of :func:`compress`."""
    pos = _check_meta(values, meta).to(values.device)
    dense = torch.zeros(pos.shape[0], GROUP, dtype=values.dtype, device=values.device)
    dense.scatter_(1, pos, values.reshape(-1, KEPT))
    return dense.reshape(values.shape[0], -1)


def meta_to_mask(meta: torch.Tensor) -> torch.Tensor:
    """The bool keep-mask ``[N, K]`` that ``meta`` describes."""
    pos = _check_meta(torch.empty(meta.shape[0], KEPT * meta.shape[1], device=meta.device), meta)
    keep = torch.zeros(pos.shape[0], GROUP, dtype=torch.bool, device=meta.device)
    keep.scatter_(1, pos.to(meta.device), True)
    return keep.reshape(meta.shape[0], -1)
