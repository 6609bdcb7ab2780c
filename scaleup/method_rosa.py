"""RoSA as a benchmark row (Nikdan et al. 2024, "RoSA: Accurate Parameter-Efficient Fine-Tuning via Robust
Adaptation"): a low-rank adapter plus a sparse adapter, trained jointly, at LoRA's trainable count.

The split: the LoRA-equal budget of rank ``r`` (``BenchConfig.lora_rank``: ``r * (m + n)`` entries per block
matrix, what the ``lora`` row trains) is shared between a rank ``r_L = round(adapter_share * r)`` adapter and
``(r - r_L) * (m + n)`` sparse entries of the same matrix (the LoRA-equal budget of rank ``r - r_L``), so the
total is LoRA's. ``adapter_share = 0.5`` by default: half the budget in rank, half in sparse entries, as the
paper's configurations pair a LoRA rank with a density spending a comparable share (its code's example is
``r=8, d=0.006``); it needs ``r >= 2``. The adapter keeps the ``lora`` row's scale ``alpha / r``.

Followed from the paper: the sparse part's mask is chosen by the empirical diagonal Fisher, squared
gradients summed over calibration batches (the registry's ``fisher`` criterion over
``BenchConfig.score_batches`` batches of the target; RoSA's ``grad_acc_mode="mean_squared"``), per matrix;
both parts train together with one AdamW at one learning rate (the ``lora`` row's grid), the sparse part in
compact storage (``CompactAdamW``); for evaluation the adapter is merged into the weights like LoRA's (the
sparse part is already in them). Simplified: the mask is chosen on the pretrained model at the start (the
authors' ``default`` schedule), not after a LoRA-only warm-up (their recommended ``wl64``); no dropout.
The adapter is the lab's ``scaleup.lora`` on the lab's GPT and the toys, PEFT's on a Hugging Face model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from scaleup import hf_model, lora
from scaleup.method_base import FUSED, INCLUDE, Budget, lora_equal
from scaleup.method_mask import CriterionMask
from sparsity.config import SparseConfig
from sparsity.validate import Mask
from sparsity.wrap import build_optimizer

if TYPE_CHECKING:
    from scaleup.bench_config import BenchConfig, Setup

ORIGINAL_NAMES = "_rosa_original_names"
"""The attribute :meth:`RoSA.prepare` leaves on the adapted model: adapted parameter name -> its name before
the adapters were added (the sparse mask is selected on the plain model)."""


class RoSA(CriterionMask):
    """A rank ``r_L`` adapter plus ``(r - r_L) * (m + n)`` Fisher-chosen entries per block matrix, trained
    jointly and merged: at the LoRA-equal count of rank ``r`` (see the module docstring for the split)."""

    family = "adapter+sparse"
    lr_grid = "lrs_lora"

    def __init__(self, name: str = "rosa", label: str = "RoSA", color: str | None = "darkgoldenrod",
                 adapter_share: float = 0.5) -> None:
        super().__init__("fisher", name=name, label=label, color=color)
        if isinstance(adapter_share, bool) or not isinstance(adapter_share, (int, float)) \
                or not 0 < adapter_share < 1:
            raise ValueError(f"adapter_share must be a number in (0, 1), got {adapter_share!r}")
        self.adapter_share = float(adapter_share)

    def ranks(self, cfg: BenchConfig) -> tuple[int, int]:
        """(the adapter's rank, the rank whose LoRA-equal count the sparse part gets): they add up to ``lora_rank``."""
        if cfg.lora_rank < 2:
            raise ValueError(f"RoSA splits the LoRA-equal budget between an adapter and sparse entries: it needs "
                             f"BenchConfig.lora_rank >= 2, got {cfg.lora_rank}")
        adapter = min(cfg.lora_rank - 1, max(1, round(self.adapter_share * cfg.lora_rank)))
        return adapter, cfg.lora_rank - adapter

    def budgets(self, cfg: BenchConfig) -> list[Budget]:
        return [lora_equal(cfg.lora_rank)]

    def sparse_config(self, setup: Setup, budget: Budget, lr: float = 1e-3, seed: int = 0) -> SparseConfig:
        """The sparse part's ``SparseConfig``: Fisher at the LoRA-equal count of the sparse share's rank."""
        return SparseConfig(criterion=self.criterion, include=INCLUDE, scope="per_tensor", storage="compact",
                            lora_rank=self.ranks(setup.cfg)[1], lr=lr, weight_decay=0.0, seed=seed, fused=FUSED)

    def prepare(self, setup: Setup, model: nn.Module, seed: int) -> None:
        """Add the rank ``r_L`` adapters (scale ``alpha / r`` as the ``lora`` row) and remember the names before."""
        cfg = setup.cfg
        rank = self.ranks(cfg)[0]
        alpha = cfg.lora_alpha * rank / cfg.lora_rank
        before = {id(p): n for n, p in model.named_parameters()}
        if isinstance(model, hf_model.CausalLM):
            hf_model.add_peft_lora(model, rank, alpha, seed=seed)
        else:
            lora.add_lora(model, lora.LoraConfig(r=rank, alpha=alpha), seed=seed)
        setattr(model, ORIGINAL_NAMES, {n: before[id(p)] for n, p in model.named_parameters() if id(p) in before})

    def _adapted_mask(self, model: nn.Module, mask: Mask) -> Mask:
        """``mask`` (on the plain model's names) moved to the adapted model; every adapter entry is selected."""
        original = getattr(model, ORIGINAL_NAMES, None)
        if original is None:
            raise ValueError(f"method {self.name!r}: the model has no adapters (call prepare first)")
        return {n: mask[original[n]] if n in original else torch.ones_like(p, dtype=torch.bool)
                for n, p in model.named_parameters()}

    def optimizer(self, setup: Setup, model: nn.Module, mask: Mask | None, budget: Budget, lr: float,
                  seed: int) -> torch.optim.Optimizer:
        """One compact AdamW over the adapters (dense) and the sparse entries of the base matrices."""
        if mask is None:
            raise ValueError(f"method {self.name!r} trains a mask: got none")
        return build_optimizer(model, self._adapted_mask(model, mask), self.sparse_config(setup, budget, lr, seed))

    def trainable(self, model: nn.Module, mask: Mask | None) -> int:
        """The adapters' entries plus the sparse part's selected entries."""
        original = getattr(model, ORIGINAL_NAMES, {})
        adapters = sum(p.numel() for n, p in model.named_parameters() if n not in original)
        return adapters + super().trainable(model, mask)

    def finish(self, model: nn.Module) -> None:
        """Merge the adapters into the weights (which already hold the sparse part); the original names return."""
        if isinstance(model, hf_model.CausalLM):
            hf_model.merge_peft_lora(model)
        else:
            lora.merge_lora(model)
        delattr(model, ORIGINAL_NAMES)
