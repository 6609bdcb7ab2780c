"""LoRA: low-rank adapters (Hu et al. 2021), minimal and readable, PEFT style.

A frozen linear layer ``y = x W^T`` gains a trainable low-rank correction::

    y = x W^T + (alpha / r) * x A^T B^T        A: [r, in], B: [out, r]

``A`` starts random and ``B`` at zero, so the adapted model starts as the pretrained one.
Only ``A`` and ``B`` train: ``r * (in + out)`` entries per matrix, the budget
``sparsity.masks.lora_equal`` gives a sparse method to compare at a matched count.

The PEFT pattern: a config object and one function that wraps a model,
``add_lora(model, LoraConfig(r=4))``. It replaces the chosen ``nn.Linear`` modules in place
by :class:`LoRALinear` (the base weight is kept as ``<module>.base.weight``, frozen) and
freezes every other parameter. :meth:`LoRALinear.merge` folds the correction into the base
weight and :meth:`LoRALinear.unmerge` takes it out again; :func:`merge_lora` merges every
adapter and puts plain ``nn.Linear`` modules back (PEFT's ``merge_and_unload``), so the
fine-tuned model has the original parameter names and can be compared entry by entry
with the pretrained one.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sparsity.validate import check_module, check_positive_int


@dataclass(frozen=True)
class LoraConfig:
    """Rank ``r``, scale ``alpha`` (the correction is multiplied by alpha / r) and target modules.

    ``targets``: glob patterns over module names (``"blocks.*.attn.qkv"``); the default
    ``("*",)`` adapts every ``nn.Linear``.
    """

    r: int = 4
    alpha: float = 8.0
    targets: tuple[str, ...] = ("*",)

    def __post_init__(self) -> None:
        check_positive_int(self.r, "LoraConfig.r")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ValueError(f"LoraConfig.alpha must be a positive number, got {self.alpha!r}")
        if isinstance(self.targets, str) or not self.targets or not all(isinstance(t, str) for t in self.targets):
            raise ValueError(f"LoraConfig.targets must be a non-empty tuple of patterns, got {self.targets!r}")

    @property
    def scale(self) -> float:
        return self.alpha / self.r


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus the trainable low-rank correction ``scale * B @ A``."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if r > min(base.in_features, base.out_features):
            raise ValueError(f"rank {r} exceeds min(in, out) = {min(base.in_features, base.out_features)}")
        self.base = base
        self.r = r
        self.scale = alpha / r
        self.merged = False
        for p in base.parameters():
            p.requires_grad_(False)
        w = base.weight
        # A as nn.Linear's own default init (Kaiming-uniform with a = sqrt(5)), B = 0: the product starts at zero.
        bound = 1 / math.sqrt(base.in_features)
        a = torch.empty(r, base.in_features).uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a.to(device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))

    def delta_weight(self) -> torch.Tensor:
        """The correction as a dense matrix, ``scale * B @ A`` (shape of the base weight)."""
        return self.scale * self.lora_B @ self.lora_A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + self.scale * ((x @ self.lora_A.T) @ self.lora_B.T)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the correction into the base weight (one matmul per forward instead of three)."""
        if self.merged:
            raise RuntimeError("this adapter is already merged")
        self.base.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the correction out of the base weight again (up to float rounding)."""
        if not self.merged:
            raise RuntimeError("this adapter is not merged")
        self.base.weight -= self.delta_weight()
        self.merged = False


def _targeted(model: nn.Module, targets: Sequence[str]) -> list[str]:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = []
    for pattern in targets:
        hits = [n for n in linears if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"LoRA target '{pattern}' matches no nn.Linear (linear modules: {', '.join(linears)})")
        chosen += [n for n in hits if n not in chosen]
    return [n for n in linears if n in chosen]


def add_lora(model: nn.Module, cfg: LoraConfig | None = None, seed: int = 0) -> nn.Module:
    """Wrap the target linears of ``model`` in :class:`LoRALinear` (in place) and freeze everything else.

    Returns the model. The adapters' ``A`` matrices are drawn from a generator seeded with ``seed``.
    """
    check_module(model)
    cfg = LoraConfig() if cfg is None else cfg
    if not isinstance(cfg, LoraConfig):
        raise TypeError(f"cfg must be a LoraConfig, got {type(cfg).__name__}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("model already has LoRA adapters")
    names = _targeted(model, cfg.targets)
    model._requires_grad_before_lora = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), cfg.r, cfg.alpha, gen))
    return model


def adapters(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRA adapter of the model by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weight and put the plain ``nn.Linear`` back (in place).

    Parameters get their original names and the ``requires_grad`` they had before
    :func:`add_lora` (a tensor the user had frozen stays frozen, as in PEFT's ``merge_and_unload``).
    """
    found = adapters(model)
    if not found:
        raise ValueError("model has no LoRA adapters to merge")
    for name, adapter in found.items():
        if not adapter.merged:
            adapter.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, adapter.base)
    before = model.__dict__.pop("_requires_grad_before_lora", {})
    for p in model.parameters():
        p.requires_grad_(before.get(id(p), True))
    return model


def trainable_count(model: nn.Module) -> int:
    """Number of entries with ``requires_grad``: for an adapted model, the adapters' ``r * (in + out)`` each."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
