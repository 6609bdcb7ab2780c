"""LIFT's principal weights, and the methods whose mask changes during training (as training hooks).

``lift`` selects the principal weights once (Liu et al. 2025). ``lift_reselect`` runs LIFT as its
authors do: principal weights re-selected every ``LiftSettings.reselect_every`` steps, AdamW betas
``betas`` and, with ``eps``, their epsilon placement (added before the bias correction). RigL (Evci
et al. 2020): a random mask at the budget, then every ``RigLSettings.every`` steps the ``fraction`` of
entries that moved least are dropped and as many with the largest gradient grown (``sparsity.train.RigL``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from scaleup.method_base import INCLUDE
from scaleup.method_mask import CriterionMask
from sparsity import registry
from sparsity.dynamic import reselect_top
from sparsity.train import EpsBeforeBiasCorrection, Reselect, RigL
from sparsity.validate import check_finite_nonnegative, check_positive_int

if TYPE_CHECKING:
    from scaleup.bench_config import BenchConfig, Setup

LIFT_CLAIM = "LIFT's abstract claims up to +20%"


@dataclass(frozen=True)
class LiftSettings:
    """LIFT's settings in the benchmark (``BenchConfig.lift``): the rank of the low-rank approximation;
    for ``lift_reselect`` the reselection period, AdamW betas and ``eps``, the Adam epsilon added before
    the bias correction as LIFT's optimizer does (1e-6 in its configs; ``sparsity.train.EpsBeforeBiasCorrection``;
    None keeps PyTorch's AdamW, eps 1e-8 after it). A results folder's config.json holds them as
    ``lift_rank``, ``lift_reselect_every``, ``lift_betas`` and ``lift_eps`` (left out when None)."""

    rank: int = 4
    reselect_every: int = 50
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float | None = None

    def __post_init__(self) -> None:
        check_positive_int(self.rank, "LiftSettings.rank")
        check_positive_int(self.reselect_every, "LiftSettings.reselect_every")
        if self.eps is not None:
            check_finite_nonnegative(self.eps, "LiftSettings.eps")
            if self.eps == 0:
                raise ValueError("LiftSettings.eps must be > 0 (or None for PyTorch's placement), got 0")


@dataclass(frozen=True)
class RigLSettings:
    """RigL's settings in the benchmark (``BenchConfig.rigl``; config.json: ``rigl_every``, ``rigl_fraction``):
    drop and grow every ``every`` steps, a ``fraction`` of the selected entries each time."""

    every: int = 50
    fraction: float = 0.3

    def __post_init__(self) -> None:
        check_positive_int(self.every, "RigLSettings.every")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"RigLSettings.fraction must be in (0, 1], got {self.fraction!r}")


def lift_options(cfg: BenchConfig) -> dict[str, Any]:
    """LIFT's registry options in the benchmark: the rank of the low-rank approximation."""
    return {"rank": cfg.lift.rank}


class Lift(CriterionMask):
    """LIFT's principal weights at rank ``LiftSettings.rank``, selected once; checked against LIFT's
    retention claim in the frontier verdict."""

    retention_claim = LIFT_CLAIM

    def __init__(self, name: str = "lift", label: str = "LIFT", color: str | None = None) -> None:
        super().__init__("lift", name=name, label=label, color=color, options=lift_options)


class LiftReselect(Lift):
    """LIFT's principal weights, re-selected every ``LiftSettings.reselect_every`` steps, each tensor keeping its
    count."""

    def __init__(self, name: str = "lift_reselect", label: str = "LIFT (reselected)", color: str | None = None) -> None:
        super().__init__(name=name, label=label, color=color)

    def sparse_settings(self, cfg: BenchConfig) -> dict[str, Any]:
        return {"reselect_every": cfg.lift.reselect_every, "betas": cfg.lift.betas}

    def hooks(self, setup: Setup, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Any]:
        cfg = setup.cfg

        @torch.no_grad()
        def principal(current: nn.Module, step: int) -> dict[str, torch.Tensor]:
            scores = registry.score(self.criterion, current, registry.CriterionInputs(include=INCLUDE,
                                                                                      options=lift_options(cfg)))
            return reselect_top(optimizer.mask, scores)  # type: ignore[arg-type]

        hooks: list[Any] = [Reselect(cfg.lift.reselect_every, principal)]
        if cfg.lift.eps is not None:
            hooks.append(EpsBeforeBiasCorrection(cfg.lift.eps))
        return hooks


class RigLMethod(CriterionMask):
    """A random mask at the budget, then RigL's drop (smallest moves) and grow (largest gradients)."""

    def __init__(self, name: str = "rigl", label: str = "RigL", color: str | None = None) -> None:
        super().__init__("random", name=name, label=label, color=color)

    def hooks(self, setup: Setup, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Any]:
        cfg = setup.cfg
        return [RigL(cfg.rigl.every, cfg.steps, setup.reference, cfg.rigl.fraction)]
