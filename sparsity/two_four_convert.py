"""Whole models in 2:4: convert the chosen linears, fine-tune only the kept weights, and put the
result in its fast inference form.

2:4 pruning costs accuracy; fine-tuning the kept weights with the pattern held fixed wins
it back (Mishra et al. 2021's recipe: prune to 2:4, then retrain with the mask fixed).
:func:`sparsify_24` scores the entries by any criterion of ``sparsity.registry``, keeps the
2 best of every 4 inputs and swaps each chosen ``nn.Linear`` for a
:class:`~sparsity.two_four_linear.SemiStructuredLinear` (parameters shared, names
unchanged); :func:`densify` turns them back. :func:`keep_mask`, :func:`optimizer` and
:func:`finetune_24` train only the kept weights with ``MaskedAdamW`` or ``CompactAdamW``
(the pattern survives exactly, :func:`check_pattern` says so); :func:`to_inference_` puts a
fine-tuned model in its fast inference form.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from sparsity import masks, prune, registry
from sparsity.compact import CompactAdamW
from sparsity.optim import MaskedAdamW
from sparsity.registry import Criterion, CriterionInputs, Scores, Selection
from sparsity.two_four import GROUP, KEPT
from sparsity.two_four_linear import SemiStructuredLinear, to_semi_structured
from sparsity.validate import Mask, check_module

Score = str | Criterion | Mapping[str, torch.Tensor]
"""What decides the kept 2 of every 4: a registered criterion's name, a criterion function
``(model, inputs) -> scores``, or the scores themselves (higher = keep)."""


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    head, _, leaf = name.rpartition(".")
    return (model.get_submodule(head) if head else model), leaf


def _chosen_linears(model: nn.Module, modules: str | Iterable[str] | None) -> list[str]:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, SemiStructuredLinear)]
    if modules is None:
        chosen = linears
    else:
        patterns = [modules] if isinstance(modules, str) else list(modules)
        if not patterns or not all(isinstance(p, str) for p in patterns):
            raise ValueError(f"modules must be None or module names / glob patterns, got {modules!r}")
        chosen = []
        for pattern in patterns:
            hits = [n for n in linears if n == pattern or fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise ValueError(f"modules pattern '{pattern}' matches no nn.Linear (linears: {', '.join(linears)})")
            chosen += [h for h in hits if h not in chosen]
    if not chosen:
        raise ValueError("the model has no nn.Linear left to convert to 2:4")
    odd = [f"{n} ({model.get_submodule(n).in_features} inputs)" for n in chosen
           if model.get_submodule(n).in_features % GROUP]
    if odd:
        raise ValueError(f"2:4 needs in_features divisible by {GROUP}; not so for {odd}: leave them out with modules=")
    return chosen


def _scores(model: nn.Module, criterion: Score, names: list[str], inputs: CriterionInputs | None) -> Scores:
    """The scores of the weights ``names``: given, or from a criterion run through the registry."""
    if isinstance(criterion, Mapping):
        scores = criterion
    elif isinstance(criterion, str) or callable(criterion):
        scores = registry.score(criterion, model, inputs)
        if isinstance(scores, Selection):
            raise ValueError(f"criterion {registry.get_criterion(criterion).name!r} names a set of entries (a "
                             "Selection), which cannot be cut into a 2:4 pattern: use a criterion that ranks entries")
    else:
        raise TypeError(f"criterion must be a registered name, a function (model, inputs) -> scores or a scores "
                        f"dict, got {type(criterion).__name__}")
    missing = [n for n in names if n not in scores]
    if missing:
        raise ValueError(f"the criterion gives no scores for {missing}")
    return {n: scores[n] for n in names}


def sparsify_24(model: nn.Module, criterion: Score = "magnitude", modules: str | Iterable[str] | None = None,
                *, inputs: CriterionInputs | None = None, backend: str = "auto", kernel: str = "auto") -> nn.Module:
    """Prune the chosen linears of ``model`` to 2:4 in place and make them SemiStructuredLinear.

    ``criterion`` scores the entries (higher = keep): any name of ``sparsity.registry``
    (``"magnitude"``, the default; ``"random"``; ``"fisher"`` with ``inputs`` holding
    ``loss_fn`` and ``batches``; ``"lift"`` with ``inputs.options["rank"]`` ...), a function
    ``(model, inputs) -> scores`` or a precomputed ``{parameter name: scores}`` dict; the 2
    best of every 4 inputs are kept (``masks.n_m``). ``modules``: names or glob patterns of
    the linears to convert (default: every ``nn.Linear``). Parameters are shared, names
    unchanged.
    """
    check_module(model)
    names = _chosen_linears(model, modules)
    weights = [f"{n}.weight" for n in names]
    keep = masks.n_m(model, _scores(model, criterion, weights, inputs), KEPT, GROUP)
    for name, weight_name in zip(names, weights):
        parent, leaf = _parent(model, name)
        layer = SemiStructuredLinear.from_linear(model.get_submodule(name), keep[weight_name],
                                                 backend=backend, kernel=kernel)
        setattr(parent, leaf, layer)
    return model


def densify(model: nn.Module) -> nn.Module:
    """Turn every SemiStructuredLinear back into an ``nn.Linear`` (same function, same parameters), in place."""
    check_module(model)
    names = [n for n, m in model.named_modules() if isinstance(m, SemiStructuredLinear)]
    if isinstance(model, SemiStructuredLinear):
        raise TypeError("model is itself a SemiStructuredLinear: call its to_linear()")
    for name in names:
        parent, leaf = _parent(model, name)
        setattr(parent, leaf, model.get_submodule(name).to_linear())
    return model


def two_four_layers(model: nn.Module) -> dict[str, SemiStructuredLinear]:
    """The SemiStructuredLinear modules of ``model`` by name."""
    return {n: m for n, m in check_module(model).named_modules() if isinstance(m, SemiStructuredLinear)}


def keep_mask(model: nn.Module) -> Mask:
    """The model's keep-mask: each 2:4 weight's mask, every other parameter all True.

    It is the mask of 2:4 sparse fine-tuning: ``MaskedAdamW(model.named_parameters(),
    mask=keep_mask(model))`` trains the kept weights and the rest, never a pruned entry.
    """
    layers = {f"{n}.weight": m.mask for n, m in two_four_layers(model).items()}
    if not layers:
        raise ValueError("the model has no SemiStructuredLinear: call sparsify_24 first")
    return {n: layers[n].clone() if n in layers else torch.ones_like(p, dtype=torch.bool)
            for n, p in model.named_parameters()}


def optimizer(model: nn.Module, kind: str = "masked", **hyper: Any) -> torch.optim.Optimizer:
    """AdamW on the kept entries: ``"masked"`` (MaskedAdamW, dense state) or ``"compact"`` (CompactAdamW)."""
    makers = {"masked": MaskedAdamW, "compact": CompactAdamW}
    if kind not in makers:
        raise ValueError(f"kind must be one of {sorted(makers)}, got {kind!r}")
    return makers[kind](model.named_parameters(), mask=keep_mask(model), **hyper)


def check_pattern(model: nn.Module) -> None:
    """Raise if a 2:4 layer's weight is nonzero where its mask prunes (the pattern was broken)."""
    for name, layer in two_four_layers(model).items():
        moved = int((layer.weight.detach()[~layer.mask] != 0).sum())
        if moved:
            raise RuntimeError(f"{name}: {moved} pruned weights are nonzero: train with optimizer(model) / keep_mask")


def finetune_24(model: nn.Module, train_fn: prune.TrainFn, criterion: Score = "magnitude",
                modules: str | Iterable[str] | None = None, *, inputs: CriterionInputs | None = None) -> nn.Module:
    """2:4 sparse fine-tuning: prune the chosen linears to 2:4, then train only the kept weights.

    ``criterion``, ``modules`` and ``inputs`` are :func:`sparsify_24`'s. ``train_fn(model,
    keep)`` trains with an optimizer built on ``keep`` (e.g. ``MaskedAdamW(model.named_parameters(),
    mask=keep)`` or ``CompactAdamW``); ``prune.recover`` checks afterwards that no pruned
    entry moved.
    """
    sparsify_24(model, criterion, modules, inputs=inputs)
    prune.recover(model, keep_mask(model), train_fn)
    check_pattern(model)
    return model


def to_inference_(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, str]:
    """Put a (fine-tuned) 2:4 model in its inference form: eval mode, no gradients, optional
    dtype (e.g. ``torch.bfloat16``), weights compressed now. Returns each 2:4 layer's route."""
    check_pattern(model)
    if dtype is not None:
        model.to(dtype)
    model.eval().requires_grad_(False)
    report = {}
    for name, layer in two_four_layers(model).items():
        route, reason = layer.route()
        if route == "torch":
            layer._cached("torch", lambda w, b=layer.backend: to_semi_structured(w, b))
        elif route == "triton":
            layer._compressed_meta()
        report[name] = route if reason is None else f"{route}: {reason}"
    return report
