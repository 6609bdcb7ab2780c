"""SpIEL as a benchmark row (Ansell et al. 2024): sparse fine-tuning stored as values plus indices, with
SpIEL-AG's drop-and-grow.

Followed from the paper and its code: the selected entries are stored compactly (``storage="compact"``,
``CompactAdamW``: indices plus ``[k]`` values and moments); the first selection is the entries with the
largest accumulated gradient (the authors' first selection phase replaces every index by accumulated-gradient
candidates; here the registry's ``gradient`` criterion over ``BenchConfig.score_batches`` batches); then every
``BenchConfig.rigl.every`` steps (RigL's settings, ``scaleup.method_dynamic.RigLSettings``) the entries with
the smallest ``|theta - theta_0|`` are dropped back to the pretrained value and as many grown by the gradient
accumulated over the last ``accumulate`` steps, the share swapped decaying linearly from ``rigl.fraction``
(``sparsity.spiel.SpIELDropGrow``). SpIEL runs at RigL's interval, initial share and count rounding
(``rigl.rounding``: "floor", SpIEL's own ``int()``, in new folders; a folder written before that setting ran
with "round", as its config.json says by omission) so the two drop-and-grow rows differ only in what SpIEL
does differently. Simplifications are listed
in ``sparsity.spiel``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from scaleup.method_mask import CriterionMask
from sparsity.spiel import SpIELDropGrow
from sparsity.validate import check_positive_int

if TYPE_CHECKING:
    from scaleup.bench_config import Setup


class SpIEL(CriterionMask):
    """The top accumulated-gradient entries, then SpIEL-AG's drop (smallest delta, reset to the base) and grow
    (largest gradient summed over ``accumulate`` steps, at most ``rigl.every``) every ``rigl.every`` steps, at a
    constant count."""

    def __init__(self, name: str = "spiel", label: str = "SpIEL", color: str | None = "teal",
                 accumulate: int = 5) -> None:
        super().__init__("gradient", name=name, label=label, color=color)
        self.accumulate = check_positive_int(accumulate, "accumulate")

    def hooks(self, setup: Setup, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Any]:
        cfg = setup.cfg
        return [SpIELDropGrow(cfg.rigl.every, cfg.steps, setup.reference, cfg.rigl.fraction,
                              min(self.accumulate, cfg.rigl.every), cfg.rigl.rounding)]
