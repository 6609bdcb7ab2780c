"""Methods that train a mask a criterion chooses: any registry criterion, the middle blocks, 2:4.

A :class:`CriterionMask` runs one criterion of ``sparsity.registry`` at the benchmark's budgets
(the LoRA-equal count and each density, per block matrix) with compact AdamW state and no weight
decay; its display label is the registry's. :class:`MiddleBlocks` is the registry's ``layers``
criterion given the middle half of the model's blocks; :class:`TwoFour` keeps the 2:4 pattern
(Mishra et al. 2021) chosen by magnitude. Dynamic masks (LIFT's reselection, RigL) build on these
in ``scaleup.method_dynamic``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from scaleup.layers import middle_blocks
from scaleup.method_base import FUSED, INCLUDE, TWO_FOUR, Budget, Method, density, lora_equal
from sparsity import registry
from sparsity.config import SparseConfig
from sparsity.validate import Mask
from sparsity.wrap import build_optimizer

if TYPE_CHECKING:
    from scaleup.bench_config import BenchConfig, Setup


class CriterionMask(Method):
    """A mask chosen once by a registry criterion, per block matrix, at each of the config's budgets.

    ``options(cfg)`` gives the criterion's registry options from the benchmark config (LIFT's rank,
    the L1 run's settings); ``name`` defaults to the criterion's, ``label`` to the registry's label.
    """

    family = "sparse"

    def __init__(self, criterion: str, *, name: str | None = None, label: str | None = None,
                 color: str | None = None, options: Callable[[BenchConfig], dict[str, Any]] | None = None) -> None:
        self._criterion = criterion
        self._options = options
        super().__init__(name or criterion, label or registry.get_criterion(criterion).label, color)

    @property
    def criterion(self) -> str:
        return self._criterion

    def budgets(self, cfg: BenchConfig) -> list[Budget]:
        return ([lora_equal(cfg.lora_rank)] if cfg.lora_equal else []) + [density(d) for d in cfg.densities]

    def criterion_options(self, setup: Setup) -> dict[str, Any]:
        return {} if self._options is None else self._options(setup.cfg)

    def sparse_config(self, setup: Setup, budget: Budget, lr: float = 1e-3, seed: int = 0) -> SparseConfig:
        """The ``SparseConfig`` at a budget: the criterion and its options, the block matrices per
        tensor, compact AdamW state without weight decay."""
        return SparseConfig(criterion=self.criterion, include=INCLUDE, scope="per_tensor", storage="compact",
                            options=self.criterion_options(setup), lr=lr, weight_decay=0.0, seed=seed, fused=FUSED,
                            **self.sparse_settings(setup.cfg), **budget.sparse)

    def optimizer(self, setup: Setup, model: nn.Module, mask: Mask | None, budget: Budget, lr: float,
                  seed: int) -> torch.optim.Optimizer:
        """The compact masked optimizer on ``mask``; tensors with no selected entry get no gradient at all."""
        if mask is None:
            raise ValueError(f"method {self.name!r} trains a mask: got none")
        return build_optimizer(model, mask, self.sparse_config(setup, budget, lr, seed))

    def trainable(self, model: nn.Module, mask: Mask | None) -> int:
        return 0 if mask is None else sum(int(m.sum()) for m in mask.values())


@dataclass(frozen=True)
class L1Settings:
    """``l1_discovered``'s discovery run in the benchmark (``BenchConfig.l1``; config.json: ``l1_lam``,
    ``l1_lr``): the proximal L1 pull toward the start and the run's learning rate."""

    lam: float = 2e-3
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if not self.lam > 0 or not self.lr > 0:
            raise ValueError(f"L1Settings.lam and .lr must be > 0, got {self.lam!r} and {self.lr!r}")


def l1_options(cfg: BenchConfig) -> dict[str, Any]:
    """``l1_discovered``'s registry options in the benchmark: the L1 run's penalty and learning rate."""
    return {"lam": cfg.l1.lam, "lr": cfg.l1.lr}


class MiddleBlocks(CriterionMask):
    """Random entries of the middle half of the blocks (``scaleup.layers.middle_blocks``): the registry's
    ``layers`` criterion given those blocks, so it stands for ``layers`` in the benchmark."""

    covers = "layers"

    def __init__(self, name: str = "middle_blocks", label: str = "middle blocks", color: str | None = None) -> None:
        super().__init__("layers", name=name, label=label, color=color)

    def criterion_options(self, setup: Setup) -> dict[str, Any]:
        blocks = setup.bench.blocks()
        return {"layers": [blocks[i] for i in middle_blocks(len(blocks))]}


class TwoFour(CriterionMask):
    """The 2:4 pattern of every block matrix, kept entries chosen by magnitude."""

    family = "structured"

    def __init__(self, name: str = "2:4", label: str = "2:4 (magnitude)", color: str | None = None) -> None:
        super().__init__("magnitude", name=name, label=label, color=color)

    def budgets(self, cfg: BenchConfig) -> list[Budget]:
        return [TWO_FOUR]
