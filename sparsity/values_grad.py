"""Values-only weight gradients: backward computes the gradient of the selected entries, never the dense one.

A sparse fine-tune of a linear layer trains k of its ``out x in`` weights, yet autograd
computes the whole ``[out, in]`` weight gradient ``grad_out^T @ x`` and the optimizer then
reads k entries of it: the dense gradient costs full fine-tuning's memory and matmul.
SpIEL (Ansell et al. 2024) and RoSA (Nikdan et al. 2024) compute only what is kept, the
gradient *at* the selected positions: ``grad[j] = grad_out[:, row_j] . x[:, col_j]``, a
sampled dense-dense matmul (SDDMM) with ``k * tokens`` multiply-adds instead of
``out * in * tokens``.

:func:`install` does that for every ``nn.Linear`` whose weight ``CompactAdamW`` trains
partly: the weight stops requiring a gradient (no dense gradient is allocated), and a
``[k]`` leaf tensor per weight, the *anchor*, receives the selected entries' gradient from a
custom autograd function; the optimizer reads it (``CompactAdamW.values_grads``) instead
of gathering ``p.grad``. The layer's forward, its input gradient and its bias are unchanged.
On the CPU the SDDMM is our kernel (``sparsity.kernels.sparse_cpu``, dot products of
contiguous rows of the transposed output gradient and input); elsewhere a chunked gather.

Whether it pays is measured (``benchmarks/scaleup_memory.py``), not assumed: it saves the
dense gradient's memory for sure, but a BLAS matmul is very fast, so at larger densities
the sampled one can be slower. It is off unless asked for (``SparseConfig(values_grad=True)``).
Float32 without autocast only; the selection is fixed while installed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sparsity.compact import CompactAdamW
from sparsity.kernels import sparse_cpu

CHUNK_ENTRIES = 1 << 22
"""Largest temporary (tokens x selected entries) of the fallback SDDMM, in elements."""


def selected_weight_grad(grad_out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``(grad_out^T @ x)[rows, cols]`` for ``grad_out [B, out]`` and ``x [B, in]``, without the dense product."""
    g_t, x_t = grad_out.t().contiguous(), x.t().contiguous()
    kernel = sparse_cpu.load() if sparse_cpu.usable(g_t) and sparse_cpu.usable(x_t) else None
    if kernel is not None:
        return kernel.selected_weight_grad(g_t, x_t, rows, cols)
    out = torch.empty(rows.numel(), dtype=grad_out.dtype, device=grad_out.device)
    step = max(1, CHUNK_ENTRIES // max(1, g_t.shape[1]))
    for start in range(0, rows.numel(), step):
        r, c = rows[start:start + step], cols[start:start + step]
        out[start:start + step] = (g_t[r] * x_t[c]).sum(1)
    return out


class _SelectedGradLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` whose backward gives the anchor the weight's gradient at (rows, cols)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, anchor: torch.Tensor,
                rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight, rows, cols)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, rows, cols = ctx.saved_tensors
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        g2, x2 = grad_out.reshape(-1, grad_out.shape[-1]), x.reshape(-1, x.shape[-1])
        grad_bias = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_values = selected_weight_grad(g2, x2, rows, cols) if ctx.needs_input_grad[3] else None
        return grad_x, None, grad_bias, grad_values, None, None


class _Installed:
    """What :func:`install` changed on one layer, to undo it."""

    def __init__(self, module: nn.Linear, anchor: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> None:
        self.module, self.anchor, self.rows, self.cols = module, anchor, rows, cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            raise RuntimeError("values-only gradients support float32 without autocast; remove them "
                               "(sparsity.values_grad.remove) to train under autocast")
        m = self.module
        return _SelectedGradLinear.apply(x, m.weight, m.bias, self.anchor, self.rows, self.cols)


def install(model: nn.Module, optimizer: CompactAdamW) -> list[str]:
    """Give every partly selected ``nn.Linear`` weight of ``optimizer`` a values-only gradient; return their names.

    Each such weight stops requiring a gradient (so backward allocates no dense one) and gets
    a ``[k]`` anchor in ``optimizer.values_grads``. Undo with :func:`remove`.
    """
    if not isinstance(optimizer, CompactAdamW):
        raise TypeError(f"values-only gradients need a CompactAdamW, got {type(optimizer).__name__}")
    params = dict(model.named_parameters())
    done = []
    for mod_name, module in model.named_modules():
        if type(module) is not nn.Linear:
            continue
        name = f"{mod_name}.weight" if mod_name else "weight"
        idx = optimizer.indices.get(name)
        if idx is None or idx.numel() == 0 or params.get(name) is not module.weight:
            continue
        if module.weight.dtype != torch.float32:
            raise TypeError(f"values-only gradients need float32 weights; '{name}' is {module.weight.dtype}")
        flat = idx.long()
        n_in = module.weight.shape[1]
        anchor = torch.zeros(idx.numel(), device=idx.device, requires_grad=True)
        installed = _Installed(module, anchor, flat // n_in, flat % n_in)
        module.weight.requires_grad_(False)
        module.forward = installed.forward  # type: ignore[method-assign]
        module._values_grad = installed  # type: ignore[assignment]
        optimizer.values_grads[name] = anchor
        done.append(name)
    return done


def remove(model: nn.Module, optimizer: CompactAdamW) -> None:
    """Undo :func:`install`: plain forwards, weights requiring gradients again, no anchors."""
    for module in model.modules():
        installed = module.__dict__.pop("_values_grad", None)
        if installed is not None:
            del module.forward
            module.weight.requires_grad_(True)
    optimizer.values_grads.clear()
