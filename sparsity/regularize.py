"""Penalties that pull a model toward a reference (usually its own initialisation).

Two ways to apply each penalty:

* as a loss term, ``loss = task + lam * l1_to_init(model, ref)``: simple, but with
  Adam the penalty's gradient is normalised like any other, so entries the task does
  not need keep jittering around the reference at about the learning rate instead
  of sitting on it (Liu 2026 calls this an artifact of Adam);
* as a proximal step after each optimizer step, ``prox_l1_to_init_(model, ref, lr * lam)``:
  soft-thresholding the change toward the reference puts exact zeros where the task
  does not push hard enough (proximal gradient, ISTA).

L1 favours sparse updates (few entries change); the nuclear norm favours low-rank
updates (few directions change), the alternative Liu 2026 suggests.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsity.validate import TensorDict, check_finite_nonnegative, check_reference, named_params


def snapshot(model: nn.Module) -> TensorDict:
    """A detached copy of every parameter: the reference the update is measured from."""
    return {name: p.detach().clone() for name, p in named_params(model).items()}


def _deltas(model: nn.Module, reference: TensorDict) -> dict[str, torch.Tensor]:
    params = named_params(model)
    reference = check_reference(params, reference)
    if not reference:
        raise ValueError("reference is empty: snapshot(model) gives one with every parameter")
    return {name: params[name] - ref for name, ref in reference.items()}


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def l1_to_init(model: nn.Module, reference: TensorDict) -> torch.Tensor:
    """sum |theta - theta_ref| over the reference's tensors (differentiable): favours sparse updates."""
    deltas = _deltas(model, reference)
    return sum(d.abs().sum() for d in deltas.values())  # type: ignore[return-value]


def nuclear_to_init(model: nn.Module, reference: TensorDict) -> torch.Tensor:
    """Sum of the nuclear norms of each matrix's change: favours low-rank updates.

    Tensors with more than two dimensions are flattened to (out, rest); vectors
    (biases, norms) have no rank and are left out.
    """
    deltas = _deltas(model, reference)
    terms = [torch.linalg.matrix_norm(_as_matrix(d), ord="nuc") for d in deltas.values() if d.ndim >= 2]
    if not terms:
        raise ValueError("reference holds no matrix: the nuclear norm needs 2-D parameters")
    return torch.stack(terms).sum()


def _per_tensor_thresholds(
    reference: TensorDict, threshold: float | TensorDict
) -> dict[str, float | torch.Tensor]:
    if isinstance(threshold, dict):
        check_reference(reference, threshold, "threshold")
        for name, t in threshold.items():
            if (t < 0).any():
                raise ValueError(f"threshold['{name}'] has negative entries")
        return dict(threshold)
    value = check_finite_nonnegative(threshold, "threshold")
    return {name: value for name in reference}


@torch.no_grad()
def prox_l1_to_init_(model: nn.Module, reference: TensorDict, threshold: float | TensorDict) -> None:
    """Soft-threshold every change toward the reference by ``threshold`` (in place).

    The proximal operator of ``threshold * |theta - ref|_1``: changes smaller than the
    threshold become exactly zero, larger ones shrink by it. After SGD use ``lr * lam``;
    after Adam a per-entry threshold ``lam * lr / (sqrt(v_hat) + eps)`` (a dict of
    tensors, see ``MaskedAdamW.adaptive_lr``), since Adam rescales every step. Tensors
    absent from a threshold dict are left alone.
    """
    params = named_params(model)
    deltas = _deltas(model, reference)
    for name, t in _per_tensor_thresholds(reference, threshold).items():
        delta = deltas[name]
        shrunk = delta.sign() * (delta.abs() - t).clamp_min(0)
        params[name].copy_(reference[name] + shrunk)


@torch.no_grad()
def prox_nuclear_to_init_(model: nn.Module, reference: TensorDict, threshold: float) -> None:
    """Soft-threshold the singular values of each matrix's change by ``threshold`` (in place)."""
    threshold = check_finite_nonnegative(threshold, "threshold")
    params = named_params(model)
    for name, delta in _deltas(model, reference).items():
        if delta.ndim < 2:
            continue
        u, s, vh = torch.linalg.svd(_as_matrix(delta), full_matrices=False)
        low_rank = (u * (s - threshold).clamp_min(0)) @ vh
        params[name].copy_(reference[name] + low_rank.reshape(delta.shape))
