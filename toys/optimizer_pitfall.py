"""Does "training only the mask" leave the other entries alone? The masked-optimizer pitfall, measured.

The obvious way to train a subnetwork is a standard optimizer with the gradient zeroed
outside the mask, or no masking at all after pruning. With AdamW both are wrong: decoupled
weight decay (Loshchilov & Hutter 2019) shrinks *every* entry by ``lr * weight_decay`` per
step whatever its gradient, so frozen entries drift toward zero, and a pruned entry with a
gradient regrows. ``MaskedAdamW`` computes the usual step and writes it back only where
the mask is True, so the frozen entries stay bit-identical. :func:`frozen_drift` trains
copies of one model several ways and counts the frozen entries that moved anyway; the
teacher-student version (:func:`masked_optimizer_pitfall`) is lesson 3's, the pruned
classification student's (``toys.prune_study.regrowth``) lesson 4's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsity.optim import MaskedAdamW
from sparsity.sweep import markdown_table
from sparsity.train import FitState, LossOfBatch, fit
from sparsity.validate import Mask, check_mask, check_positive_int, named_params
from toys import teacher_student as ts
from toys.figures import panels
from toys.teacher_student_criteria import default_config

Way = Callable[[nn.Module], "tuple[torch.optim.Optimizer, list[Any]]"]
"""One way to "train only the mask": model -> (its optimizer, the fit hooks it needs)."""


@dataclass(frozen=True)
class PitfallRow:
    """How one way of "training only the mask" treated the entries outside it, and the model's
    score after training (``evaluate``: the test MSE on the teacher-student toy)."""

    method: str
    frozen: int
    moved: int
    max_abs_delta: float
    score: float


class GradientZeroedOutside:
    """The naive masking, as a ``fit`` hook: zero the gradient outside the mask before the step."""

    def __init__(self, mask: Mask) -> None:
        self.mask = mask

    def before_step(self, state: FitState) -> None:
        for n, p in state.model.named_parameters():
            p.grad.mul_(self.mask[n])


def frozen_drift(
    start: nn.Module,
    mask: Mask,
    ways: Mapping[str, Way],
    loss_of_batch: LossOfBatch,
    steps: int,
    *,
    evaluate: Callable[[nn.Module], float],
    progress: bool = False,
) -> list[PitfallRow]:
    """Train a copy of ``start`` each way for ``steps`` full-batch steps (``loss_of_batch(model, None)``,
    the optimizer's own constant learning rate) and count the entries outside ``mask`` that moved."""
    check_positive_int(steps, "steps")
    mask = check_mask(named_params(start), mask)
    mask = {n: mask.get(n, torch.ones_like(p, dtype=torch.bool)) for n, p in start.named_parameters()}
    rows = []
    for method, way in ways.items():
        model = copy.deepcopy(start)
        optimizer, hooks = way(model)
        fit(model, optimizer, loss_of_batch, steps, hooks=hooks, progress=progress, desc=method)
        with torch.no_grad():
            deltas = torch.cat([(p - start.get_parameter(n))[~mask[n]].flatten() for n, p in model.named_parameters()])
            score = evaluate(model)
        rows.append(PitfallRow(method=method, frozen=deltas.numel(), moved=int((deltas != 0).sum()),
                               max_abs_delta=deltas.abs().max().item() if deltas.numel() else 0.0, score=score))
    return rows


def masked_optimizer_pitfall(
    mask: Mask,
    cfg: ts.Config | None = None,
    *,
    weight_decay: float = 0.01,
    progress: bool = True,
) -> list[PitfallRow]:
    """Train the same mask two ways on the teacher-student toy and count the frozen entries that moved.

    1. the naive way: ``torch.optim.AdamW(weight_decay > 0)`` with the gradient zeroed
       outside the mask: every frozen nonzero entry drifts toward zero;
    2. ``MaskedAdamW`` with the same mask: the frozen entries stay bit-identical.

    Both run ``cfg.steps`` full-batch steps at ``cfg.learning_rate`` (constant) on the
    toy's MSE, from the same student; the score is the test MSE.
    """
    cfg = default_config() if cfg is None else cfg
    if not isinstance(cfg, ts.Config):
        raise TypeError(f"cfg must be a toys.teacher_student.Config, got {type(cfg).__name__}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay > 0:
        raise ValueError(f"weight_decay must be > 0 (the pitfall is weight decay), got {weight_decay!r}")
    teacher, start = ts.make_teacher_student(cfg)
    mask = check_mask(named_params(start), mask)
    full = {n: mask.get(n, torch.ones_like(p, dtype=torch.bool)) for n, p in start.named_parameters()}
    x, y, x_test, y_test = ts.make_data(cfg, teacher)
    lr = cfg.learning_rate
    ways: dict[str, Way] = {
        "AdamW, gradient zeroed": lambda m: (
            torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=weight_decay, foreach=False),
            [GradientZeroedOutside(full)]),
        "MaskedAdamW": lambda m: (MaskedAdamW(m.named_parameters(), mask=full, lr=lr, weight_decay=weight_decay), []),
    }
    return frozen_drift(start, full, ways, lambda m, _: nn.functional.mse_loss(m(x), y), cfg.steps,
                        evaluate=lambda m: nn.functional.mse_loss(m(x_test), y_test).item(), progress=progress)


def format_pitfall(rows: Sequence[PitfallRow], score: str = "test MSE", fmt: str = ".2e") -> str:
    """The pitfall's rows as a markdown table (``score`` names the last column, ``fmt`` formats it)."""
    return markdown_table(["method", "frozen entries", "of them moved", "max abs delta", score],
                          [[r.method, r.frozen, r.moved, f"{r.max_abs_delta:.2e}", format(r.score, fmt)] for r in rows])


def plot_pitfall(rows: Sequence[PitfallRow], fig: object = None) -> object:
    """The share of frozen entries each way moved: did the frozen weights stay frozen?"""
    fig, ax = panels(fig, (6, 3.5))
    ax.bar([r.method for r in rows], [r.moved / max(r.frozen, 1) for r in rows],
           color=["tab:green" if r.moved == 0 else "tab:red" for r in rows])
    ax.set(ylabel="share of frozen entries that moved", ylim=(0, 1.05), title="Did the frozen weights stay frozen?")
    fig.tight_layout()
    return fig

