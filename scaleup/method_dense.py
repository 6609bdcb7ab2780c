"""The two methods without a mask: full fine-tuning (the reference) and LoRA (the adapter baseline).

LoRA (Hu et al. 2021) trains rank-r adapters beside every block matrix: the lab's ``scaleup.lora``
on the lab's GPT, PEFT's on a Hugging Face model (``scaleup.hf_model``); either is merged into the
weights before the model is measured, so every method is evaluated as a plain model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from scaleup import hf_model, lora
from scaleup.method_base import FUSED, Budget, Method, lora_equal
from sparsity.compact import CompactAdamW
from sparsity.validate import Mask

if TYPE_CHECKING:
    from scaleup.bench_config import BenchConfig, Setup


class FullFineTuning(Method):
    """Every parameter trains: the bar every other method is measured against."""

    family = "full"
    reference = True
    lr_grid = "lrs_full"


class LoRA(Method):
    """Rank ``BenchConfig.lora_rank`` adapters (alpha ``lora_alpha``) on every block matrix, merged after training."""

    family = "adapter"
    lr_grid = "lrs_lora"

    def budgets(self, cfg: BenchConfig) -> list[Budget]:
        return [lora_equal(cfg.lora_rank)]

    def prepare(self, setup: Setup, model: nn.Module, seed: int) -> None:
        cfg = setup.cfg
        if isinstance(model, hf_model.CausalLM):
            hf_model.add_peft_lora(model, cfg.lora_rank, cfg.lora_alpha, seed=seed)
        else:
            lora.add_lora(model, lora.LoraConfig(r=cfg.lora_rank, alpha=cfg.lora_alpha), seed=seed)

    def optimizer(self, setup: Setup, model: nn.Module, mask: Mask | None, budget: Budget, lr: float,
                  seed: int) -> CompactAdamW:
        """AdamW without weight decay on the adapters (the rest is frozen)."""
        return CompactAdamW([(n, p) for n, p in model.named_parameters() if p.requires_grad], lr=lr, weight_decay=0.0,
                            fused=FUSED)

    def trainable(self, model: nn.Module, mask: Mask | None) -> int:
        return lora.trainable_count(model)

    def finish(self, model: nn.Module) -> None:
        if isinstance(model, hf_model.CausalLM):
            hf_model.merge_peft_lora(model)
        else:
            lora.merge_lora(model)
