"""``sparsify``: one call that makes any ``nn.Module`` sparse-trainable, PEFT-style.

The steps a user would otherwise hand-assemble (criterion -> selection -> frozen tensors ->
masked optimizer) in one place, with the result in a :class:`SparseModel` that knows its
mask, its optimizer, its starting point and how to hand back the sparse update::

    from sparsity import SparseConfig, sparsify, fit, cosine
    run = sparsify(model, SparseConfig(criterion="lift", density=0.05, options={"rank": 8}))
    fit(model, run.optimizer, loss_of_batch, 1000, batches=batch_at, schedule=cosine(1e-3, 1000), hooks=run.hooks())

The mask-coverage rule of the lab (``sparsity.masks``) holds: the mask names every
parameter, False for the frozen ones.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sparsity import delta as delta_lib
from sparsity import values_grad
from sparsity.compact import CompactAdamW
from sparsity.dynamic import reselect_top
from sparsity.config import SparseConfig, select_mask
from sparsity.optim import MaskedAdamW
from sparsity.registry import CriterionInputs, Scores, Selection, get_criterion, score
from sparsity.regularize import snapshot
from sparsity.train import Reselect
from sparsity.validate import Mask, TensorDict, check_module


def build_optimizer(model: nn.Module, mask: Mask, config: SparseConfig) -> torch.optim.Optimizer:
    """The optimizer of ``config.storage`` on ``mask``; tensors with no selected entry are frozen
    (``requires_grad=False``: no gradient is even computed for them)."""
    for n, p in model.named_parameters():
        p.requires_grad_(bool(mask[n].any()))
    hyper = dict(lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
    if config.storage == "compact":
        return CompactAdamW(model.named_parameters(), mask=mask, fused=config.fused is not False, **hyper)
    return MaskedAdamW(model.named_parameters(), mask=mask, **hyper)


class SparseModel:
    """A model made sparse-trainable by :func:`sparsify`: the model (trained in place), its config,
    mask, optimizer and the snapshot it started from."""

    def __init__(self, model: nn.Module, config: SparseConfig, mask: Mask, optimizer: torch.optim.Optimizer,
                 reference: TensorDict, inputs: CriterionInputs, select_seconds: float,
                 requires_grad: dict[str, bool]) -> None:
        self.model, self.config, self.optimizer, self.reference = model, config, optimizer, reference
        self._mask, self._inputs, self.select_seconds = mask, inputs, select_seconds
        self._requires_grad = requires_grad
        """Each parameter's ``requires_grad`` before sparsify; the very dict sparsify left on the model
        (:data:`BEFORE_SPARSIFY`), by which ``merge_and_unload`` knows the model is still this run's."""

    @property
    def mask(self) -> Mask:
        """The current mask (after any re-selection): parameter name -> bool tensor, every parameter."""
        return self._mask

    def trainable_parameters(self) -> tuple[int, int]:
        """(selected entries, all entries of the model)."""
        total = sum(p.numel() for p in self.model.parameters())
        return sum(int(m.sum()) for m in self._mask.values()), total

    def print_trainable_parameters(self) -> None:
        """One line, as PEFT prints it: trainable entries, all entries, the share."""
        trainable, total = self.trainable_parameters()
        name = get_criterion(self.config.criterion).name
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
              f" || criterion: {name}, {self.config.budget}, {self.config.storage} storage")

    def rescore(self) -> Mask:
        """Score the *current* model with the config's criterion and keep each tensor's count
        (``sparsity.dynamic.reselect_top``), as periodic re-selection needs."""
        out = score(self.config.criterion, self.model, self._inputs)
        if isinstance(out, Selection):
            out = {n: torch.where(out.support[n], s.float(), -torch.inf) for n, s in out.scores.items()}
        return reselect_top(self._mask, out)

    def hooks(self) -> list[Any]:
        """The training hooks the config asks for (periodic re-selection), for ``sparsity.train.fit``."""
        if self.config.reselect_every is None:
            return []

        def select(model: nn.Module, step: int) -> Mask:
            self._mask = self.rescore()
            return self._mask

        return [Reselect(self.config.reselect_every, select)]

    def trainer_optimizers(self, args: Any) -> tuple[torch.optim.Optimizer, None]:
        """``Trainer(..., optimizers=run.trainer_optimizers(args))``: this run's optimizer for Hugging Face's
        ``Trainer``, checked against ``args`` (its ``TrainingArguments``).

        Trainer trains with an optimizer it is given as it is: ``args.learning_rate``, ``weight_decay``,
        ``adam_beta1`` / ``adam_beta2`` and ``adam_epsilon`` never reach it (its scheduler only warms up and
        decays the optimizer's own learning rate, ``SparseConfig.lr``). A value that differs is a warning
        naming both, so a learning rate set in ``args`` is not silently ignored. The scheduler slot is None
        (Trainer builds its own from ``args``).

        Trainer clips ``model.parameters()``' gradients to ``args.max_grad_norm`` (1.0 by default): a layer
        with a values-only gradient (``sparsity.values_grad``) has none there, so its gradient would be left out
        of the norm and of the clip, a silently different run. Where ``args`` clip, the default
        (``SparseConfig(values_grad=None)``) gives those layers back their dense gradients, with a warning
        (``max_grad_norm=0`` keeps the values-only ones); ``values_grad=True`` is an error.
        """
        settings = {"learning_rate": "lr", "weight_decay": "weight_decay", "adam_epsilon": "eps"}
        missing = [a for a in (*settings, "adam_beta1", "adam_beta2", "max_grad_norm") if not hasattr(args, a)]
        if missing:
            raise TypeError(f"args must be the transformers.TrainingArguments given to Trainer; "
                            f"{type(args).__name__} has no {missing[0]}")
        group = self.optimizer.param_groups[0]
        ours = {a: group[key] for a, key in settings.items()}
        ours["adam_beta1"], ours["adam_beta2"] = group["betas"]
        differ = [f"{a}={getattr(args, a)!r} (the optimizer's: {v!r})" for a, v in ours.items()
                  if float(getattr(args, a)) != float(v)]
        if differ:
            warnings.warn(f"TrainingArguments {', '.join(differ)}: Trainer trains with the optimizer sparsify built "
                          "and ignores these arguments; set them equal, or set SparseConfig(lr=..., weight_decay=..., "
                          "betas=..., eps=...) to the values you want", UserWarning, stacklevel=2)
        self._clip_with_dense_gradients(args.max_grad_norm)
        return self.optimizer, None

    def _clip_with_dense_gradients(self, max_grad_norm: float | None) -> None:
        """Take the values-only gradients off where Trainer clips (see :meth:`trainer_optimizers`)."""
        installed = sorted(getattr(self.optimizer, "values_grads", {}))
        if not installed or not max_grad_norm or max_grad_norm <= 0:
            return
        if self.config.values_grad:
            raise ValueError(f"TrainingArguments max_grad_norm={max_grad_norm!r} with SparseConfig(values_grad=True)"
                             f": Trainer clips model.parameters()' gradients, and {installed[0]} (one of "
                             f"{len(installed)} weights with a values-only gradient) has none there; set "
                             "max_grad_norm=0 or values_grad=None")
        values_grad.remove(self.model, self.optimizer)
        warnings.warn(f"TrainingArguments max_grad_norm={max_grad_norm!r}: Trainer clips model.parameters()' "
                      f"gradients, so {len(installed)} weights ({installed[0]}, ...) get their dense gradients back, "
                      "which the clip covers, instead of values-only ones, which it would miss (more memory and time); "
                      "max_grad_norm=0 keeps the values-only gradients", UserWarning, stacklevel=3)

    def delta(self) -> delta_lib.SparseDelta:
        """The exact change of the selected entries since sparsify (``theta - theta_0``, float64)."""
        return delta_lib.extract_delta(self.model, self.reference, self._mask)

    def save_delta(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`delta` to ``path`` (safetensors indices and values)."""
        delta_lib.save_delta(self.delta(), path)

    def merge_and_unload(self) -> nn.Module:
        """The plain fine-tuned model, with everything ``sparsify`` installed taken off (PEFT's name,
        Mangrulkar et al. 2022): the values-only gradient forwards and anchors (``values_grad=True``)
        are removed and every parameter gets back the ``requires_grad`` it had before ``sparsify``
        (all of them, for a model the user had not frozen), so ordinary autograd trains it whole.
        Nothing is folded in: the sparse update already is in the weights, unlike LoRA's adapters.
        ``run.optimizer`` belongs to the sparse run; build a new optimizer for further training. Merging again
        changes nothing; merging a run whose model a later ``sparsify`` took over is an error."""
        current = self.model.__dict__.get(BEFORE_SPARSIFY)
        if current is None:  # merged already (this run or the one that replaced it): nothing is installed
            return self.model
        if current is not self._requires_grad:
            raise ValueError("merge_and_unload: this run's model was sparsified again since (the later sparsify took "
                             "this run's installs off): merge the later run instead")
        if isinstance(self.optimizer, CompactAdamW):
            values_grad.remove(self.model, self.optimizer)
        _restore_requires_grad(self.model, self._requires_grad)
        self.model.__dict__.pop(BEFORE_SPARSIFY, None)
        return self.model

    merge = merge_and_unload
    """An alias of :meth:`merge_and_unload`."""


BEFORE_SPARSIFY = "_requires_grad_before_sparsify"
"""The model attribute where the first :func:`sparsify` keeps each parameter's ``requires_grad`` from before it,
until ``merge_and_unload``."""


def _requires_grad_before_sparsify(model: nn.Module) -> dict[str, bool]:
    """Each parameter's ``requires_grad`` from before sparsify touched ``model``. On a model an earlier sparsify
    left unmerged (a notebook cell run again), its installs are taken off first, with a warning: it froze the
    unselected tensors and turned off the weight gradients of values-only layers, so reading ``requires_grad``
    now would score and later restore the earlier run's state, not the user's."""
    before = model.__dict__.get(BEFORE_SPARSIFY)
    if before is None:
        return {n: p.requires_grad for n, p in model.named_parameters()}
    layers = values_grad.remove_from_model(model)
    _restore_requires_grad(model, before)
    warnings.warn("this model was made sparse-trainable by an earlier sparsify and not merged: its frozen tensors"
                  + (f" and the values-only gradients of {len(layers)} layers" if layers else "")
                  + " are taken off first; step the new run's optimizer only (run.merge_and_unload() before "
                  "sparsifying again avoids this warning)", UserWarning, stacklevel=3)
    return before


def _restore_requires_grad(model: nn.Module, before: dict[str, bool]) -> None:
    """Give every parameter the ``requires_grad`` it had before sparsify (True for one added since)."""
    for n, p in model.named_parameters():
        p.requires_grad_(before.get(n, True))


def sparsify(
    model: nn.Module,
    config: SparseConfig,
    *,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    batches: list[Any] | None = None,
    train: Callable[[nn.Module, torch.optim.Optimizer, list[Any]], None] | None = None,
    scores: Scores | Selection | None = None,
) -> SparseModel:
    """Select ``config``'s mask on ``model``, freeze what is not selected, build the optimizer.

    ``loss_fn(model, batch)`` and ``batches`` feed the gradient criteria (gradient, Fisher, SNIP,
    movement); ``train(model, optimizer, hooks)`` runs the target's training loop for criteria
    that learn their set (l1_discovered); ``scores`` skips scoring (precomputed or cached).
    """
    check_module(model)
    if not isinstance(config, SparseConfig):
        raise TypeError(f"config must be a SparseConfig, got {type(config).__name__}")
    entry = get_criterion(config.criterion)
    entry.check_options(config.options)
    inputs = CriterionInputs(loss_fn=loss_fn, batches=batches, include=config.include, seed=config.seed,
                             options=config.options, train=train, reference=snapshot(model))
    if entry.needs_data and scores is None and (loss_fn is None or batches is None) and train is None:
        raise ValueError(f"criterion {entry.name!r} needs data: pass loss_fn and batches (or train)")
    requires_grad = dict(_requires_grad_before_sparsify(model))  # this run's own: merge_and_unload knows it by it
    start = time.perf_counter()
    out = score(config.criterion, model, inputs) if scores is None else scores
    mask = select_mask(model, out, config)
    seconds = time.perf_counter() - start
    model.__dict__[BEFORE_SPARSIFY] = requires_grad  # before anything below freezes a tensor
    optimizer = build_optimizer(model, mask, config)
    rebuild = config.rebuild_inputs is not False
    if config.values_grad:
        values_grad.install(model, optimizer, "sampled", rebuild)  # type: ignore[arg-type]
    elif config.values_grad is None and config.storage == "compact" and config.reselect_every is None:
        values_grad.install(model, optimizer, "auto", rebuild)  # type: ignore[arg-type]
    return SparseModel(model, config, mask, optimizer, inputs.reference, inputs, seconds, requires_grad)
