"""What a benchmark method is: how it selects, trains, counts its budget and labels itself.

The controlled benchmark (``scaleup.compare``) fine-tunes copies of one pretrained model with
several *methods*. Each is one :class:`Method` object, registered by name in
``scaleup.methods`` (the way PEFT maps a method's type to its class), and the harness only asks
it: which budgets it runs at, which registry criterion chooses its mask (if any) and with which
options, how its model is prepared (adapters added), which optimizer and training hooks it
trains with, how many entries it trains, how the model is finished (adapters merged), how a
figure labels and colours it, and what role it plays in the verdict (the reference, the adapter
baseline, a sparse criterion). Nothing in the harness compares a method's name.

A :class:`Budget` is one trainable-count rule a method runs at: its key (what a results row
stores, e.g. ``"d0.05"``), its words, its figure marker and the ``SparseConfig`` fields it sets.
The config lists a method's budgets (:meth:`Method.budgets`); a stored key is looked up among
them, never parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sparsity.compact import CompactAdamW
from sparsity.validate import Mask

if TYPE_CHECKING:
    from scaleup.bench_config import BenchConfig, Setup

INCLUDE = "weight"
"""Sparse budgets are spent on the block matrices (``parameter_kinds`` "weight")."""
FUSED = False
"""The benchmark's optimizers take ``CompactAdamW``'s bit-exact reference step (``fused=False``), not the
library's fast default: the committed results were computed with it, and a resumed folder must not mix two
roundings in one grid (the fast step equals it to rounding only)."""
LORA_EQUAL = "lora_equal"
"""The key of the LoRA-equal budget: the trainable count the comparison is matched at."""
FAMILIES = ("full", "adapter", "sparse", "structured", "adapter+sparse")
"""What a method trains: every parameter, adapters, a mask a criterion chooses, a fixed structured pattern,
or adapters and a mask together (RoSA)."""


@dataclass(frozen=True)
class Budget:
    """One trainable-count rule: ``key`` as stored in results rows, ``label`` in words, the figure
    ``marker``, and ``sparse``: the ``sparsity.SparseConfig`` fields it sets (density, lora_rank, n_m)."""

    key: str
    label: str
    marker: str
    sparse: Mapping[str, Any] = field(default_factory=dict)


ALL = Budget("all", "100%", "o")
"""Every parameter (full fine-tuning)."""
TWO_FOUR = Budget("2:4", "2:4 (50%)", "D", {"n_m": (2, 4)})
"""The N:M pattern sparse tensor cores accelerate: 2 of every 4 consecutive entries."""
_DENSITY_MARKERS = {0.01: "v", 0.05: "P", 0.2: "*"}


def lora_equal(rank: int) -> Budget:
    """LoRA's ``r * (m + n)`` entries per block matrix."""
    return Budget(LORA_EQUAL, f"LoRA-equal (r={rank})", "s", {"lora_rank": rank})


def density(share: float) -> Budget:
    """The same share of every block matrix; keyed ``d<share>`` (``d0.05``)."""
    return Budget(f"d{share:g}", f"{share:.0%}", _DENSITY_MARKERS.get(share, "^"), {"density": share})


class Method:
    """A benchmark method. Subclasses override what differs; the defaults train every parameter.

    Class attributes: ``family`` (one of :data:`FAMILIES`), ``reference`` (True for the method every
    other is measured against: full fine-tuning), ``lr_grid`` (the ``BenchConfig`` field holding
    its learning-rate grid), ``covers`` (a registry criterion this method stands for, so it is not
    run a second time under its own name), ``retention_claim`` (a published retention claim the
    frontier verdict checks this method against, in words).
    """

    family = "full"
    reference = False
    lr_grid = "lrs_sparse"
    covers: str | None = None
    retention_claim: str | None = None

    def __init__(self, name: str, label: str, color: str | None = None) -> None:
        self.name, self.label, self.color = name, label, color

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def budgets(self, cfg: BenchConfig) -> list[Budget]:
        """The budgets this method runs at under ``cfg``."""
        return [ALL]

    @property
    def criterion(self) -> str | None:
        """The ``sparsity.registry`` criterion that chooses this method's mask; None: no mask."""
        return None

    def criterion_options(self, setup: Setup) -> dict[str, Any]:
        """The registry options the criterion gets in this benchmark."""
        return {}

    def sparse_settings(self, cfg: BenchConfig) -> dict[str, Any]:
        """Extra ``SparseConfig`` fields of this method (reselection, betas, ...)."""
        return {}

    def prepare(self, setup: Setup, model: nn.Module, seed: int) -> None:
        """Change the fresh copy of the pretrained model before training (add adapters)."""

    def optimizer(self, setup: Setup, model: nn.Module, mask: Mask | None, budget: Budget, lr: float,
                  seed: int) -> CompactAdamW:
        """AdamW without weight decay on every parameter."""
        return CompactAdamW(model.named_parameters(), lr=lr, weight_decay=0.0, fused=FUSED)

    def trainable(self, model: nn.Module, mask: Mask | None) -> int:
        """The entries this method trains (its count against the budget)."""
        return sum(p.numel() for p in model.parameters())

    def hooks(self, setup: Setup, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Any]:
        """Training hooks this method adds to ``sparsity.train.fit`` (reselection, drop/grow, ...)."""
        return []

    def finish(self, model: nn.Module) -> None:
        """Turn the trained model back into a plain one of the pretrained architecture (merge adapters)."""
