"""What one fine-tune changed: update sparsity (Mukherjee et al. 2025), per layer type, update rank, target score.

Shared by the single-run command line (``python -m scaleup.rl``), the update-sparsity study
(``scaleup.rl_study``) and its scale study (``scaleup.rl_scale``), so every one of them measures a
run the same way: the paper's tolerance, compared in bf16, with LayerNorm gains and biases apart.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from scaleup import tasks as tk
from scaleup.layers import layer_type
from sparsity import metrics
from sparsity.validate import TensorDict

TOL = 1e-5
"""The paper's tolerance: entries within 1e-5 (compared in bf16) did not change."""


def rl_layer_type(name: str) -> str:
    """``scaleup.layers.layer_type`` with LayerNorm gains and biases apart (the paper reports them apart)."""
    kind = layer_type(name)
    return f"norm.{name.rsplit('.', 1)[1]}" if kind == "norm" else kind


def snapshot(model: nn.Module) -> TensorDict:
    """A detached copy of every parameter, by name: the ``theta_0`` a run is compared against."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def measure(model: nn.Module, theta0: TensorDict, world: tk.World, task: str) -> dict[str, Any]:
    """Target score, update sparsity (overall, per layer type) and update rank of one run."""
    changed = metrics.changed_entries(model, theta0, TOL, torch.bfloat16)
    per_type: dict[str, list[int]] = {}
    for name, moved in changed.items():
        counts = per_type.setdefault(rl_layer_type(name), [0, 0])
        counts[0] += int((~moved).sum())
        counts[1] += moved.numel()
    params = dict(model.named_parameters())
    ranks = [metrics.update_rank(params[n].detach() - theta0[n]) / min(theta0[n].shape)
             for n in theta0 if n.startswith("blocks.") and theta0[n].ndim == 2]
    total = sum(c[1] for c in per_type.values())
    in_fp32 = metrics.update_sparsity(model, theta0, TOL).overall  # the same tolerance, compared in float32
    return dict(
        update_sparsity_fp32_compare=in_fp32,
        target=tk.accuracy(model, world, task, "test"),
        target_val=tk.accuracy(model, world, task, "val"),
        update_sparsity=sum(c[0] for c in per_type.values()) / total,
        per_layer_type={t: u / n for t, (u, n) in sorted(per_type.items())},
        relative_rank=sum(ranks) / len(ranks),
        changed_by_decile=metrics.changed_by_magnitude_decile(theta0, changed),
    )
