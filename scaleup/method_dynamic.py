"""LIFT's principal weights, and the methods whose mask changes during training (as training hooks).

``lift`` selects the principal weights once (Liu et al. 2025). LIFT as its authors run it (Liu et al. 2025): principal weights re-selected every
``BenchConfig.lift_reselect_every`` steps, AdamW betas ``lift_betas`` and, with ``lift_eps``, their
epsilon placement (added before the bias correction). RigL (Evci et al. 2020): a random mask at the
budget, then every ``rigl_every`` steps the ``rigl_fraction`` of entries that moved least are dropped
and as many with the largest gradient grown (``sparsity.train.RigL``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from scaleup.method_base import INCLUDE
from scaleup.method_mask import CriterionMask
from sparsity import registry
from sparsity.dynamic import reselect_top
from sparsity.train import EpsBeforeBiasCorrection, Reselect, RigL

if TYPE_CHECKING:
    from scaleup.bench_config import BenchConfig, Setup

LIFT_CLAIM = "LIFT's abstract claims up to +20%"


def lift_options(cfg: BenchConfig) -> dict[str, Any]:
    """LIFT's registry options in the benchmark: the rank of the low-rank approximation."""
    return {"rank": cfg.lift_rank}


class Lift(CriterionMask):
    """LIFT's principal weights at rank ``BenchConfig.lift_rank``, selected once; checked against LIFT's
    retention claim in the frontier verdict."""

    retention_claim = LIFT_CLAIM

    def __init__(self, name: str = "lift", label: str = "LIFT", color: str | None = None) -> None:
        super().__init__("lift", name=name, label=label, color=color, options=lift_options)


class LiftReselect(Lift):
    """LIFT's principal weights, re-selected every ``lift_reselect_every`` steps, each tensor keeping its count."""

    def __init__(self, name: str = "lift_reselect", label: str = "LIFT (reselected)", color: str | None = None) -> None:
        super().__init__(name=name, label=label, color=color)

    def sparse_settings(self, cfg: BenchConfig) -> dict[str, Any]:
        return {"reselect_every": cfg.lift_reselect_every, "betas": cfg.lift_betas}

    def hooks(self, setup: Setup, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Any]:
        cfg = setup.cfg

        @torch.no_grad()
        def principal(current: nn.Module, step: int) -> dict[str, torch.Tensor]:
            scores = registry.score(self.criterion, current, registry.CriterionInputs(include=INCLUDE,
                                                                                      options=lift_options(cfg)))
            return reselect_top(optimizer.mask, scores)  # type: ignore[arg-type]

        hooks: list[Any] = [Reselect(cfg.lift_reselect_every, principal)]
        if cfg.lift_eps is not None:
            hooks.append(EpsBeforeBiasCorrection(cfg.lift_eps))
        return hooks


class RigLMethod(CriterionMask):
    """A random mask at the budget, then RigL's drop (smallest moves) and grow (largest gradients)."""

    def __init__(self, name: str = "rigl", label: str = "RigL", color: str | None = None) -> None:
        super().__init__("random", name=name, label=label, color=color)

    def hooks(self, setup: Setup, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Any]:
        cfg = setup.cfg
        return [RigL(cfg.rigl_every, cfg.steps, setup.reference, cfg.rigl_fraction)]
