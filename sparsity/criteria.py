"""Criteria: a score for every entry, saying how much it deserves to be fine-tuned.

A criterion is a plain function ``(model, ...) -> {name: scores}`` over the eligible
parameters (higher = more deserving). It only scores; turning scores into a mask is a
selection policy's job (``sparsity.masks``), so a new criterion plugs in as one function.

Criteria that need gradients take ``loss_fn(model, batch) -> scalar loss`` and an
iterable of ``batches``; they read gradients with ``torch.autograd.grad`` and leave the
model's ``.grad`` untouched. They score the eligible tensors that require a gradient: a tensor
the user froze (``requires_grad=False``, e.g. by an earlier ``sparsify``) gets no score, so no
budget; a model with every eligible tensor frozen is refused, naming one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from sparsity.eligibility import eligible, match_parameters
from sparsity.validate import TensorDict, check_reference, named_params

Scores = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Any], torch.Tensor]
Include = str | Iterable[str]


def random(model: nn.Module, seed: int = 0, include: Include = "weight") -> Scores:
    """Uniform random scores: the baseline every criterion must beat."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    gen = torch.Generator().manual_seed(seed)
    params = named_params(model)
    return {n: torch.rand(params[n].shape, generator=gen).to(params[n].device) for n in eligible(model, include)}


def magnitude(model: nn.Module, include: Include = "weight") -> Scores:
    """abs(w): the classic pruning score (Han et al. 2015), used here to pick what to train."""
    params = named_params(model)
    return {n: params[n].detach().abs() for n in eligible(model, include)}


def _batch_gradients(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any] | None, names: list[str]):
    """Yield, batch by batch, the gradient of the loss for each named parameter."""
    if batches is None:
        raise ValueError("this criterion needs gradients: pass loss_fn and batches (an iterable of batches)")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}")
    params = named_params(model)
    tensors = [params[n] for n in names]
    seen = 0
    for batch in batches:
        loss = loss_fn(model, batch)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise ValueError("loss_fn must return a scalar tensor")
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        seen += 1
        yield {n: torch.zeros_like(t) if g is None else g.detach() for n, t, g in zip(names, tensors, grads)}
    if seen == 0:
        raise ValueError("batches is empty: this criterion needs at least one batch of data")


def _trainable(model: nn.Module, include: Include) -> list[str]:
    """The eligible parameters that require a gradient (the ones a gradient criterion can score)."""
    params = named_params(model)
    names = eligible(model, include)
    trainable = [n for n in names if params[n].requires_grad]
    if names and not trainable:
        raise ValueError(f"a gradient criterion needs parameters that require gradients, but every eligible one is "
                         f"frozen (e.g. '{names[0]}' has requires_grad=False): unfreeze the tensors to score")
    return trainable


def _accumulated_gradient(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any] | None, names: list[str]) -> Scores:
    total: Scores = {}
    for grads in _batch_gradients(model, loss_fn, batches, names):
        for n, g in grads.items():
            total[n] = total[n] + g if n in total else g.clone()
    return total


def gradient(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any] | None, include: Include = "weight") -> Scores:
    """abs(sum of gradients over the batches): where the loss wants change first."""
    return {n: g.abs() for n, g in _accumulated_gradient(model, loss_fn, batches, _trainable(model, include)).items()}


def snip(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any] | None, include: Include = "weight") -> Scores:
    """abs(w * g): first-order effect on the loss of removing the entry (SNIP, Lee et al. 2019)."""
    params = named_params(model)
    grads = _accumulated_gradient(model, loss_fn, batches, _trainable(model, include))
    return {n: (params[n].detach() * g).abs() for n, g in grads.items()}


def fisher(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any] | None, include: Include = "weight") -> Scores:
    """Empirical Fisher diagonal: the sum over batches of squared batch gradients (FISH mask, Sung et al. 2021)."""
    total: Scores = {}
    for grads in _batch_gradients(model, loss_fn, batches, _trainable(model, include)):
        for n, g in grads.items():
            total[n] = total[n] + g.square() if n in total else g.square()
    return total


def movement(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any] | None, include: Include = "weight") -> Scores:
    """-w * accumulated g: entries gradient descent would move away from zero (Sanh et al. 2020).

    Unlike the other scores it can be negative: an entry being pushed toward zero scores low.
    """
    params = named_params(model)
    grads = _accumulated_gradient(model, loss_fn, batches, _trainable(model, include))
    return {n: -params[n].detach() * g for n, g in grads.items()}


def low_rank_approximation(weight: torch.Tensor, rank: int, method: str = "svd", seed: int = 0) -> torch.Tensor:
    """The best rank-``rank`` approximation of a matrix (truncated SVD, Eckart-Young).

    ``method="lowrank"`` uses ``torch.svd_lowrank`` (randomised, seeded), much cheaper for big matrices.
    """
    if weight.ndim != 2:
        raise ValueError(f"low-rank approximation needs a 2-D weight, got shape {tuple(weight.shape)}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(weight.shape):
        raise ValueError(f"rank must be an int in [1, min(m, n)] = [1, {min(weight.shape)}], got {rank}")
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        raise ValueError(f"low-rank approximation needs a finite weight; this one of shape {tuple(w.shape)} "
                         "holds NaN or inf")
    if method == "svd":
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return (u[:, :rank] * s[:rank]) @ vh[:rank]
    if method == "lowrank":
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            u, s, v = torch.svd_lowrank(w, q=min(rank + 8, min(w.shape)), niter=4)
        finally:
            torch.random.set_rng_state(state)
        return (u[:, :rank] * s[:rank]) @ v[:, :rank].T
    raise ValueError(f"method must be 'svd' or 'lowrank', got {method!r}")


def lift(model: nn.Module, rank: int, include: Include = "weight", method: str = "svd") -> Scores:
    """LIFT principal weights (Liu et al. 2025): abs of each matrix's rank-r approximation.

    The low-rank step keeps the directions that carry the matrix's function; the largest
    entries *of that approximation* are the ones to fine-tune. Plain magnitude skips the
    low-rank step and, per LIFT, selects much worse. Only 2-D parameters can be scored.
    Scores stay float32 whatever the weight's dtype, as in the authors' code: cast back to
    bf16 they would tie by the dozen at the cut-off and the mask would depend on tie-breaking.
    """
    params = named_params(model)
    names = eligible(model, include)
    not_matrices = [n for n in names if params[n].ndim != 2]
    if not_matrices:
        raise ValueError(f"lift scores matrices only; not 2-D: {not_matrices} (use include='weight')")
    too_small = [f"'{n}' {tuple(params[n].shape)}" for n in names
                 if isinstance(rank, int) and not isinstance(rank, bool) and rank > min(params[n].shape)]
    if too_small:
        raise ValueError(f"lift rank {rank} exceeds the smaller side of {', '.join(too_small)}: pick a rank "
                         "at most min(m, n) of every scored matrix, or leave those matrices out")
    scores = {}
    for n in names:
        try:
            scores[n] = low_rank_approximation(params[n], rank, method).abs()
        except ValueError as e:
            raise ValueError(f"lift cannot score '{n}': {e}") from None
    return scores


def update(model: nn.Module, reference: TensorDict, include: Include = "all") -> Scores:
    """abs(theta - theta_ref): what an observed fine-tuning run actually changed."""
    params = named_params(model)
    reference = check_reference(params, reference)
    names = eligible(model, include)
    missing = [n for n in names if n not in reference]
    if missing:
        raise ValueError(f"reference has no entry for parameters {missing}")
    return {n: (params[n].detach() - reference[n]).abs() for n in names}


def layers(model: nn.Module, names_or_patterns: str | Iterable[str]) -> Scores:
    """1 for every entry of the matched tensors, 0 for every other parameter: whole layers."""
    chosen = set(match_parameters(model, names_or_patterns))
    return {n: torch.full_like(p, float(n in chosen)) for n, p in named_params(model).items()}
