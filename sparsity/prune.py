"""Pruning: remove weights, then recover the accuracy with the sparsity pattern held fixed.

A pruning mask is a plain mask (``dict`` name -> bool tensor) read as a **keep-mask**:
True = the weight is kept, False = it is pruned (set to zero for good). Parameters a
budget does not touch (biases, norms, embeddings: see ``include``) come back all True,
and an absent parameter is kept (the coverage rule of ``sparsity.validate.Mask``).
The same mask then drives *sparse fine-tuning*: ``MaskedAdamW(model.named_parameters(),
mask=keep)`` trains exactly the kept entries, and a pruned entry, zeroed by
:func:`apply_mask_`, stays exactly 0.0 for any number of steps, weight decay and momentum
included (the masked optimizer writes back only where the mask is True).

The recipes (Han et al. 2015, "Learning both weights and connections"):

* **one-shot** (:func:`prune_`): train, remove the smallest weights at once, fine-tune
  the survivors (:func:`recover`);
* **iterative magnitude pruning** (:func:`iterative_magnitude_pruning`, IMP; Frankle &
  Carbin 2019, "The Lottery Ticket Hypothesis"): rounds of train, prune a fraction of the
  remaining weights, and either keep training from where the weights are (iterative
  pruning with fine-tuning) or *rewind* the survivors to their values at initialisation
  or at an early checkpoint (Frankle et al. 2020, "Linear Mode Connectivity and the
  Lottery Ticket Hypothesis": rewinding to an early step makes IMP work where rewinding
  to init fails) and retrain;
* **N:M** (``structure=(2, 4)``): in every group of 4 consecutive inputs keep the 2
  largest, the pattern sparse tensor cores accelerate (Mishra et al. 2021).

Training is the caller's: every function that trains takes ``train_fn(model, keep) ->
None``, which must train ``model`` with an optimizer built on the keep-mask (so it works
for any model, loss and data). :func:`recover` checks afterwards that it did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsity import criteria, masks
from sparsity.eligibility import eligible
from sparsity.validate import Mask, TensorDict, check_mask, check_positive_int, check_reference, named_params

TrainFn = Callable[[nn.Module, Mask], None]
"""Trains ``model`` in place, moving only the entries where the keep-mask is True."""

EvalFn = Callable[[nn.Module], float]
"""A score of the model (e.g. test accuracy), recorded after each IMP round."""

Include = str | Iterable[str]

__all__ = [
    "magnitude_prune", "apply_mask_", "prune_", "pruned_fraction", "recover",
    "iterative_magnitude_pruning", "ImpRound", "ImpResult",
]


def _check_sparsity(sparsity: object, arg: str = "sparsity") -> float:
    """A sparsity is the share of weights removed: a number in [0, 1) (1 would remove every weight)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"{arg} must be a number in [0, 1), got {type(sparsity).__name__}")
    if math.isnan(sparsity) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{arg} must be in [0, 1) (the share of weights removed), got {sparsity}")
    return float(sparsity)


def _check_structure(structure: object) -> tuple[int, int] | None:
    if structure is None:
        return None
    if (
        not isinstance(structure, tuple)
        or len(structure) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in structure)
    ):
        raise TypeError(f"structure must be None or a tuple (n, m) of ints, e.g. (2, 4), got {structure!r}")
    return structure


def pruned_fraction(model: nn.Module, keep: Mask, include: Include = "weight") -> float:
    """Share of the ``include`` entries that ``keep`` prunes (False); absent tensors count as kept."""
    params = named_params(model)
    keep = check_mask(params, keep, "keep")
    names = eligible(model, include)
    total = sum(params[n].numel() for n in names)
    pruned = sum(int((~keep[n]).sum()) for n in names if n in keep)
    return pruned / total


def magnitude_prune(
    model: nn.Module,
    sparsity: float | None = None,
    *,
    scope: str = "global",
    include: Include = "weight",
    structure: tuple[int, int] | None = None,
    keep: Mask | None = None,
) -> Mask:
    """The keep-mask of magnitude pruning: remove the ``sparsity`` share of smallest abs(w).

    ``scope="global"`` ranks all ``include`` tensors together (a layer with small weights
    may lose more than its share; Frankle & Carbin prune convnets globally),
    ``"per_tensor"`` removes the same share from every tensor. ``structure=(n, m)`` keeps
    the n largest of every m consecutive inputs instead (N:M, sparsity 1 - n/m; pass
    ``sparsity=None`` or that value). ``keep``: an existing keep-mask whose pruned entries
    stay pruned (the next round of iterative pruning); ``sparsity`` is then the new total,
    which cannot be below the mask's own. Only selects: :func:`apply_mask_` zeros.
    """
    params = named_params(model)
    structure = _check_structure(structure)
    scores = criteria.magnitude(model, include)
    if structure is not None:
        if keep is not None:
            raise ValueError("structure=(n, m) cannot be combined with keep=: N:M prunes a dense model")
        n, m = structure
        selected = masks.n_m(model, scores, n, m)  # checks n, m and the divisibility of the input dimension
        if sparsity is not None and not math.isclose(_check_sparsity(sparsity), 1 - n / m):
            raise ValueError(
                f"structure={structure} fixes the sparsity at 1 - n/m = {1 - n / m:g}; got sparsity={sparsity}"
            )
    else:
        if sparsity is None:
            raise ValueError("sparsity is required for unstructured pruning (a number in [0, 1))")
        sparsity = _check_sparsity(sparsity)
        if keep is not None:
            keep = check_mask(params, keep, "keep")
            # Pruned entries score below every kept one (abs(w) >= 0): selected last, if at all.
            scores = {n: torch.where(keep[n], s, -1.0) if n in keep else s for n, s in scores.items()}
        selected = masks.top_k(model, scores, 1.0 - sparsity, scope)
        if keep is not None and any(bool((selected[n] & ~keep[n]).any()) for n in scores if n in keep):
            raise ValueError(
                f"sparsity={sparsity} with scope={scope!r} would revive weights keep has pruned (keep's sparsity "
                f"is {pruned_fraction(model, keep, include):.4f}): pruning never revives weights"
            )
    previous = keep or {}
    return {
        n: selected[n] if n in scores else previous.get(n, torch.ones_like(p, dtype=torch.bool))
        for n, p in params.items()
    }


@torch.no_grad()
def apply_mask_(model: nn.Module, keep: Mask, allow_empty: bool = False) -> nn.Module:
    """Set every pruned entry (False in ``keep``) to exactly +0.0, in place; returns the model.

    A keep-mask that prunes a whole tensor is refused unless ``allow_empty``: that is what a
    *training* mask from ``sparsity.masks`` looks like (frozen tensors all False), and read as
    a keep-mask it would zero every bias and norm (see the coverage rule, ``sparsity.validate.Mask``).
    """
    params = named_params(model)
    keep = check_mask(params, keep, "keep")
    if not allow_empty:
        empty = [n for n, k in keep.items() if k.numel() and not k.any()]
        if empty:
            raise ValueError(
                f"keep prunes every entry of {empty}: is this a training mask (frozen tensors all False) "
                "passed as a keep-mask? Keep-masks mark untouched tensors True (or leave them out); "
                "pass allow_empty=True to zero whole tensors on purpose"
            )
    for name, k in keep.items():
        params[name].masked_fill_(~k, 0.0)
    return model


def prune_(
    model: nn.Module,
    sparsity: float | None = None,
    *,
    scope: str = "global",
    include: Include = "weight",
    structure: tuple[int, int] | None = None,
) -> Mask:
    """One-shot magnitude pruning in place: select with :func:`magnitude_prune`, zero, return the keep-mask."""
    keep = magnitude_prune(model, sparsity, scope=scope, include=include, structure=structure)
    apply_mask_(model, keep)
    return keep


def recover(model: nn.Module, keep: Mask, train_fn: TrainFn) -> None:
    """Sparse fine-tuning with the pattern held fixed: zero the pruned entries, train, check.

    ``train_fn(model, keep)`` must build its optimizer on the keep-mask, e.g.
    ``MaskedAdamW(model.named_parameters(), mask=keep, ...)`` or ``MaskedSGD``: then the
    pruned entries stay exactly 0.0 whatever the weight decay or momentum. A plain
    ``torch.optim.AdamW`` would regrow them (their gradients are not zero); that is caught
    here (RuntimeError) instead of silently reporting a dense model as a sparse one.
    """
    if not callable(train_fn):
        raise TypeError(f"train_fn must be callable as train_fn(model, keep), got {type(train_fn).__name__}")
    params = named_params(model)
    keep = check_mask(params, keep, "keep")
    apply_mask_(model, keep)
    train_fn(model, keep)
    regrown = [n for n, k in keep.items() if bool((params[n].detach()[~k] != 0).any())]
    if regrown:
        raise RuntimeError(
            f"train_fn moved pruned entries of {regrown}: build its optimizer on the keep-mask, "
            "e.g. MaskedAdamW(model.named_parameters(), mask=keep)"
        )


@dataclass(frozen=True)
class ImpRound:
    """One IMP round: the sparsity it trained at, the kept weights, the score after training."""

    round: int
    sparsity: float
    kept: int
    score: float | None


@dataclass
class ImpResult:
    """The final keep-mask (the "ticket") and one record per round (round 0, with train_first: dense)."""

    keep: Mask
    rounds: list[ImpRound]


@torch.no_grad()
def _rewind_(model: nn.Module, rewind_to: TensorDict) -> None:
    params = named_params(model)
    for name, value in rewind_to.items():
        params[name].copy_(value)


def iterative_magnitude_pruning(
    model: nn.Module,
    train_fn: TrainFn,
    *,
    rounds: int,
    rate: float = 0.2,
    rewind_to: TensorDict | None = None,
    train_first: bool = True,
    evaluate: EvalFn | None = None,
    scope: str = "global",
    include: Include = "weight",
    progress: bool = True,
) -> ImpResult:
    """IMP (Frankle & Carbin 2019): ``rounds`` times, prune ``rate`` of the remaining weights and retrain.

    Round r trains at sparsity ``1 - (1 - rate)**r``. Before each retraining the survivors
    are either *rewound* to ``rewind_to`` (a snapshot: ``snapshot(model)`` taken at init
    for the lottery-ticket recipe, or at an early step of the dense run for Frankle et
    al. 2020's rewinding; parameters absent from it are not rewound) or, with
    ``rewind_to=None``, left where training put them (iterative pruning with fine-tuning,
    Han et al. 2015). ``train_first=False`` skips the dense training of round 0 when
    ``model`` comes already trained. ``evaluate(model)``, if given, is recorded after
    every training. The model ends trained at the final sparsity, pruned entries zero.
    """
    params = named_params(model)
    if not callable(train_fn):
        raise TypeError(f"train_fn must be callable as train_fn(model, keep), got {type(train_fn).__name__}")
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate must be None or callable as evaluate(model), got {type(evaluate).__name__}")
    check_positive_int(rounds, "rounds")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1) (the share of remaining weights pruned per round), got {rate!r}")
    if rewind_to is not None:
        rewind_to = {n: t.detach().clone() for n, t in check_reference(params, rewind_to, "rewind_to").items()}
    eligible(model, include)  # fail on a bad include before any training

    def record(r: int, keep: Mask) -> ImpRound:
        kept = sum(int(keep[n].sum()) for n in eligible(model, include))
        score = None if evaluate is None else float(evaluate(model))
        return ImpRound(r, pruned_fraction(model, keep, include), kept, score)

    keep = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    history = []
    if train_first:
        recover(model, keep, train_fn)
        history.append(record(0, keep))
    for r in tqdm(range(1, rounds + 1), desc="IMP rounds", disable=not progress, leave=False):
        keep = magnitude_prune(model, 1.0 - (1.0 - rate) ** r, scope=scope, include=include, keep=keep)
        if rewind_to is not None:
            _rewind_(model, rewind_to)
        recover(model, keep, train_fn)
        history.append(record(r, keep))
    return ImpResult(keep, history)
