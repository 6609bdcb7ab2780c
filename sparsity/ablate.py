"""Ablation: knock a subnetwork out, measure what breaks, put it back exactly.

If a network solves a compositional task with separate subnetworks, removing the
subnetwork found for function i should break function i and leave the others alone
(Csordás et al. 2021, "Are Neural Nets Modular? Inspecting Functional Modularity
Through Differentiable Weight Masks"; Lepori et al. 2023, "Break It Down"). The tools:

* :func:`ablate`, a context manager that overwrites the entries of a mask (with zero, a
  reference such as the initialisation, or the tensor's mean) and restores them bit for
  bit on exit, also when the body raises, so an experiment never leaks a damaged model;
* :func:`ablation_matrix`, the table score(task j | subnetwork i ablated);
* :meth:`AblationMatrix.modularity`, one number for the table: the mean normalised damage
  on the diagonal minus the mean off the diagonal (1 = each ablation breaks exactly its
  own task, 0 = ablations do not discriminate between tasks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from sparsity.validate import Mask, TensorDict, check_mask, check_reference, named_params

MODES = ("zero", "mean", "reference")
"""What an ablated entry becomes: 0, the mean of its tensor, or the reference's value (e.g. the init)."""


@contextmanager
def ablate(
    model: nn.Module,
    mask: Mask,
    mode: str = "zero",
    reference: TensorDict | None = None,
) -> Iterator[nn.Module]:
    """Overwrite the entries where ``mask`` is True for the duration of the block.

    ``mode="zero"`` sets them to 0 (the weight is removed); ``"mean"`` to the mean of all
    entries of their tensor (removes the entry's specific value but keeps the tensor's
    typical level, like mean-ablation of activations); ``"reference"`` to the value in
    ``reference`` (e.g. ``snapshot(model)`` taken at initialisation: undo what training
    wrote there). On exit the ablated entries get back their exact original bits, whatever
    happened in the block; entries outside the mask are not touched on exit.
    """
    params = named_params(model)
    mask = check_mask(params, mask)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "reference":
        if reference is None:
            raise ValueError("mode='reference' needs reference= (e.g. a snapshot of the initial weights)")
        reference = check_reference(params, reference)
        missing = [n for n, m in mask.items() if m.any() and n not in reference]
        if missing:
            raise ValueError(f"reference has no entry for masked parameter(s) {missing}")
    elif reference is not None:
        raise ValueError(f"reference is only used with mode='reference', got mode={mode!r}")
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, m in mask.items():
                if not m.any():
                    continue
                p = params[name]
                saved[name] = p[m].clone()
                if mode == "zero":
                    p[m] = 0.0
                elif mode == "mean":
                    p[m] = p.mean()
                else:
                    p[m] = reference[name][m].to(p.dtype)  # type: ignore[index]
        yield model
    finally:
        with torch.no_grad():
            for name, values in saved.items():
                params[name][mask[name]] = values


def complement(mask: Mask, within: Sequence[str]) -> Mask:
    """The entries of the tensors ``within`` that ``mask`` does *not* select (others all False).

    ``ablate(model, complement(mask, names))`` keeps only the subnetwork inside the searched
    tensors: the test of whether a subnetwork is *sufficient* for its task.
    """
    unknown = [n for n in within if n not in mask]
    if unknown:
        raise ValueError(f"within names tensors the mask does not cover: {unknown}")
    return {n: (~m if n in within else torch.zeros_like(m)) for n, m in mask.items()}


@dataclass(frozen=True)
class AblationMatrix:
    """``scores[i][j]`` = score of task j with subnetwork i ablated; ``baseline[j]`` without ablation."""

    subnetworks: tuple[str, ...]
    tasks: tuple[str, ...]
    scores: tuple[tuple[float, ...], ...]
    baseline: tuple[float, ...]

    def retained(self) -> list[list[float]]:
        """Each score as a share of the task's unablated score (1 = untouched)."""
        return [[s / b if b else 0.0 for s, b in zip(row, self.baseline)] for row in self.scores]

    def damage(self, chance: float | Sequence[float]) -> list[list[float]]:
        """Normalised damage in [0, 1]: 0 = score unchanged, 1 = down to chance (or below)."""
        levels = _chance_levels(chance, len(self.tasks))
        out = []
        for row in self.scores:
            out.append(
                [
                    min(1.0, max(0.0, (b - s) / (b - c))) if b > c else 0.0
                    for s, b, c in zip(row, self.baseline, levels)
                ]
            )
        return out

    def modularity(self, chance: float | Sequence[float]) -> float:
        """Mean damage of each subnetwork to its own task minus mean damage to the others.

        Needs one subnetwork per task with the same names. 1: every ablation takes its own
        task to chance and leaves the rest intact; 0: no specialisation; < 0: anti-modular.
        """
        if self.subnetworks != self.tasks:
            raise ValueError(
                f"modularity needs one subnetwork per task, same names and order: {self.subnetworks} vs {self.tasks}"
            )
        if len(self.tasks) < 2:
            raise ValueError("modularity needs at least two tasks")
        d = self.damage(chance)
        n = len(self.tasks)
        diagonal = sum(d[i][i] for i in range(n)) / n
        off = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return diagonal - off

    def format(self) -> str:
        """A plain-text table: one row per ablated subnetwork, one column per task."""
        width = max(8, *(len(t) + 2 for t in self.tasks))
        head = f"{'ablated':<12}" + "".join(f"{t:>{width}}" for t in self.tasks)
        lines = [head, f"{'(none)':<12}" + "".join(f"{b:>{width}.3f}" for b in self.baseline)]
        for name, row in zip(self.subnetworks, self.scores):
            lines.append(f"{name:<12}" + "".join(f"{s:>{width}.3f}" for s in row))
        return "\n".join(lines)


def _chance_levels(chance: float | Sequence[float], n: int) -> list[float]:
    if isinstance(chance, (int, float)) and not isinstance(chance, bool):
        return [float(chance)] * n
    if isinstance(chance, Sequence) and len(chance) == n and all(isinstance(c, (int, float)) for c in chance):
        return [float(c) for c in chance]
    raise ValueError(f"chance must be a number or one number per task ({n}), got {chance!r}")


def ablation_matrix(
    model: nn.Module,
    masks: Mapping[str, Mask],
    evaluators: Mapping[str, Callable[[nn.Module], float]],
    mode: str = "zero",
    reference: TensorDict | None = None,
) -> AblationMatrix:
    """Score every task (``evaluators``: name -> function of the model) with each subnetwork ablated.

    Rows follow the order of ``masks``, columns the order of ``evaluators``. The model is
    back to its exact original state when this returns.
    """
    if not isinstance(masks, Mapping) or not masks:
        raise ValueError("masks must be a non-empty mapping from subnetwork name to mask")
    if not isinstance(evaluators, Mapping) or not evaluators:
        raise ValueError("evaluators must be a non-empty mapping from task name to a function model -> score")
    for name, fn in evaluators.items():
        if not callable(fn):
            raise TypeError(f"evaluators['{name}'] must be callable, got {type(fn).__name__}")
    params = named_params(model)
    for name, mask in masks.items():
        check_mask(params, mask, f"masks['{name}']")

    def score_all() -> tuple[float, ...]:
        with torch.no_grad():
            return tuple(float(fn(model)) for fn in evaluators.values())

    baseline = score_all()
    rows = []
    for mask in masks.values():
        with ablate(model, mask, mode, reference):
            rows.append(score_all())
    return AblationMatrix(tuple(masks), tuple(evaluators), tuple(rows), baseline)
