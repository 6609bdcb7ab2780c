"""Values-only weight gradients: backward computes the gradient of the selected entries, never keeps a dense one.

A sparse fine-tune of a linear layer trains k of its ``out x in`` weights, yet autograd
computes the whole ``[out, in]`` weight gradient ``grad_out^T @ x``, keeps it until the
optimizer step, and the optimizer then reads k entries of it: the dense gradient costs full
fine-tuning's memory and matmul. SpIEL (Ansell et al. 2024) and RoSA (Nikdan et al. 2024)
compute only what is kept, the gradient *at* the selected positions:
``grad[j] = grad_out[:, row_j] . x[:, col_j]``, a sampled dense-dense matmul (SDDMM) with
``k * tokens`` multiply-adds instead of ``out * in * tokens``.

:func:`install` does that for every ``nn.Linear`` whose weight ``CompactAdamW`` trains
partly: the weight stops requiring a gradient (no dense gradient is kept), and a ``[k]``
leaf tensor per weight, the *anchor*, receives the selected entries' gradient from a custom
autograd function; the optimizer reads it (``CompactAdamW.values_grads``) instead of
gathering ``p.grad``. The layer's forward, its input gradient and its bias are unchanged.

How the ``[k]`` gradient is computed (:func:`selected_weight_grad`):

* ``"sampled"``: the SDDMM; on the CPU our kernel (``sparsity.kernels.sparse_cpu``: tokens in
  blocks, transposed once so that a block of one column is contiguous, then vectorised multiply-adds
  per selected entry and block), elsewhere a chunked gather;
* ``"dense"``: the dense product, then a gather: a transient ``[out, in]`` buffer for one
  layer at a time, freed at once (still no dense gradient kept across layers);
* ``"auto"``: per layer and call, the sampled product where :func:`sampled_pays` says it is
  faster (the crossover measured by ``benchmarks/values_grad_crossover.py``), else the dense one.

``SparseConfig(values_grad=None)`` (the default) installs ``"auto"`` on float32 CPU layers;
``True`` forces ``"sampled"`` on every layer, ``False`` leaves autograd's dense gradient.
Either way the result equals the dense gradient at the selected entries to rounding.
``install(..., rebuild_inputs=True)`` (what ``sparsify`` does unless ``SparseConfig(rebuild_inputs=False)``)
also drops the layer's copy of an input that is a GELU's, a LayerNorm's or an RMSNorm's output: backward rebuilds it bit
for bit from what those keep anyway (``sparsity.rebuilt_inputs``), before the input gradient is allocated,
so the two are never live at once; on the CPU kernel, after a GELU with erf or a LayerNorm over the last dimension,
it is rebuilt one block of tokens at a time inside the product (``rebuilt_inputs.RowStep``), never whole. After a
GELU the layer also runs the GELU's backward, in place on its input gradient, so the GELU's output and input gradients
are never live at once either.

The optimizer's step consumes the anchors' gradients (a post-step hook sets them to None), as if
it called its own ``zero_grad`` afterwards: loops that clear gradients through the model
(``model.zero_grad()``, as ``transformers.Trainer`` does) never reach the anchors, which are no
parameters of the model, and their gradient would otherwise pile up across steps (a run resumed
from a checkpoint, its anchors starting empty, then drifted from the uninterrupted one).
Gradient accumulation over several backward passes before one step is unchanged. What reads
``model.parameters()``' gradients does not see the anchors' ``[k]`` gradients: clip
``[*model.parameters(), *optimizer.values_grads.values()]`` with ``torch.nn.utils.clip_grad_norm_`` to count
them, and the norm is that of the trained entries' gradient (a dense gradient's norm also counts the untrained
entries of a partly trained weight; tested). ``SparseModel.trainer_optimizers`` gives dense gradients back
where Trainer's ``max_grad_norm`` clips, since Trainer clips ``model.parameters()`` alone.
Under autocast the layer computes in the autocast dtype, as ``F.linear`` would. The
selection is fixed while installed (``CompactAdamW.reselect`` refuses).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sparsity import rebuilt_inputs
from sparsity.compact import CompactAdamW
from sparsity.kernels import sparse_cpu

MODES = ("sampled", "dense", "auto")

CHUNK_ENTRIES = 1 << 22
"""Largest temporary (tokens x selected entries) of the fallback SDDMM, in elements."""

SAMPLED_MAX_DENSITY = ((64, 0.05), (512, 0.10), (2048, 0.20))
"""``"auto"`` takes the sampled product on the CPU kernel from ``tokens`` tokens (rows of ``x``) on, up to
``density`` of a layer's entries, for each ``(tokens, density)`` here; below 64 tokens, never. Measured
(``benchmarks/results/values_grad_crossover.md``, 2 threads, layers 512 x 128 to 2048 x 512, every shape): the
sampled product was faster at 5% from 64 tokens on (0.46x to 0.62x of dense), at 10% from 512 tokens on (0.38x
to 0.57x; at 64 tokens 0.70x to 1.11x), at 20% at 2,048 tokens (0.66x to 0.76x; at 512 tokens 0.81x to 0.90x in
that run and 0.94x to 1.01x in the one before it: no dependable gain), and at 40% nowhere. A boundary, not a
tuned optimum: near it the ratio moves between runs."""


def sampled_pays(k: int, n_out: int, n_in: int, tokens: int, kernel: bool) -> bool:
    """Whether the sampled product of ``k`` of ``n_out x n_in`` entries over ``tokens`` rows is the faster one: only
    on our CPU kernel (the gather fallback never is), where :data:`SAMPLED_MAX_DENSITY` measured it faster."""
    density = k / (n_out * n_in)
    return kernel and any(tokens >= at_least and density <= most for at_least, most in SAMPLED_MAX_DENSITY)


STEP_CODES = {"gelu": 1, "layer_norm": 2}
"""The kernel's codes for the :class:`rebuilt_inputs.RowStep` kinds."""


def selected_weight_grad(grad_out: torch.Tensor, x: torch.Tensor, flat: torch.Tensor,
                         how: str = "sampled", step: rebuilt_inputs.RowStep | None = None) -> torch.Tensor:
    """``(grad_out^T @ x).view(-1)[flat]`` for ``grad_out [B, out]``, ``x [B, in]`` and sorted int32 flat
    positions ``flat``, computed ``how`` (one of :data:`MODES`). With a ``step``, ``x`` is the step's input and the
    layer's input is ``step(x)``: the CPU kernel rebuilds it one block of tokens at a time, the other products whole."""
    if how not in MODES:
        raise ValueError(f"how must be one of {MODES}, got {how!r}")
    if flat.dtype != torch.int32:
        raise TypeError(f"flat must hold int32 positions, as CompactAdamW.indices does, got {flat.dtype}")
    if step is not None and step.kind not in STEP_CODES:
        raise ValueError(f"step.kind must be one of {tuple(STEP_CODES)}, got {step.kind!r}")
    n_in = x.shape[1]
    kernel = sparse_cpu.load() if sparse_cpu.usable(grad_out) and sparse_cpu.usable(x) else None
    if how == "auto":
        how = "sampled" if sampled_pays(flat.numel(), grad_out.shape[1], n_in, x.shape[0], kernel is not None) \
            else "dense"
    if step is not None and (how == "dense" or kernel is None):
        x = step(x)
    if how == "dense":
        return (grad_out.t() @ x).view(-1).index_select(0, flat)
    if kernel is not None:
        if step is None:
            return kernel.selected_weight_grad(grad_out, x, flat)
        return kernel.weight_grad_of_step(grad_out, x, flat, STEP_CODES[step.kind], step.weight, step.bias, step.eps)
    out = torch.empty(flat.numel(), dtype=grad_out.dtype, device=grad_out.device)
    chunk = max(1, CHUNK_ENTRIES // max(1, x.shape[0]))
    for start in range(0, flat.numel(), chunk):
        part = flat[start:start + chunk]
        out[start:start + chunk] = (grad_out[:, part // n_in] * x[:, part % n_in]).sum(0)
    return out


class _SelectedGradLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` whose backward gives the anchor the weight's gradient at ``flat``.

    With a recipe, ``x`` is not kept: backward rebuilds it from tensors its step keeps anyway. With a ``step_input``
    too (``x`` came from ``aten.gelu``), ``x`` comes in detached and backward differentiates the GELU's input
    directly: the GELU's backward runs here, in place on the input gradient (``rebuilt_inputs.gelu_backward_``),
    and the GELU's own node, no longer on the loss's path, gets nothing: never two ``x``-sized gradients at once.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, anchor: torch.Tensor,
                flat: torch.Tensor, how: str, recipe: rebuilt_inputs.Recipe | None,
                step_input: torch.Tensor | None) -> torch.Tensor:
        ctx.rebuild = None if recipe is None else recipe.rebuild
        ctx.row_step = None if recipe is None else recipe.row_step
        ctx.step_backward = None if step_input is None else recipe.step_backward
        ctx.save_for_backward(weight, *((x,) if recipe is None else recipe.sources))
        ctx.flat, ctx.how, ctx.has_bias = flat, how, bias is not None  # flat is the optimizer's, not an activation
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, *kept = ctx.saved_tensors
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_bias = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_values = None
        if ctx.needs_input_grad[3]:
            step = None
            if ctx.rebuild is None:
                x = kept[0]
            elif ctx.row_step is not None and kept[0].is_contiguous():  # (as in the forward: the same bits)
                x, step = kept[0], ctx.row_step  # the step's input: the product rebuilds the layer's
            else:
                with torch.no_grad():
                    x = ctx.rebuild(*kept)
            x2 = x.reshape(-1, x.shape[-1]).contiguous()
            del x  # a rebuilt input is freed before the input gradient is allocated: never both at once
            grad_values = selected_weight_grad(g2.contiguous(), x2, ctx.flat, ctx.how, step).float()
            del x2
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] or ctx.needs_input_grad[7] else None
        grad_step = None
        if ctx.step_backward is not None and grad_x is not None:
            grad_step, grad_x = ctx.step_backward(grad_x, kept[0]), None
        return grad_x, None, grad_bias, grad_values, None, None, None, grad_step


class _Installed:
    """What :func:`install` changed on one layer, to undo it."""

    def __init__(self, module: nn.Linear, anchor: torch.Tensor, flat: torch.Tensor, how: str, rebuild: bool) -> None:
        self.module, self.anchor, self.flat, self.how, self.rebuild = module, anchor, flat, how, rebuild

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if m.weight.requires_grad:  # trainable again (SparseModel.merge): a plain layer with a dense gradient
            return F.linear(x, m.weight, m.bias)
        weight, bias = m.weight, m.bias
        device = x.device.type
        if torch.is_autocast_enabled(device):  # compute in the autocast dtype, as F.linear would
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
            with torch.autocast(device, enabled=False):
                return _SelectedGradLinear.apply(x, weight, bias, self.anchor, self.flat, self.how, None, None)
        recipe = rebuilt_inputs.recipe(x) if self.rebuild else None
        if recipe is not None and recipe.step_input is not None:  # the GELU's backward is done in this layer's
            return _SelectedGradLinear.apply(x.detach(), weight, bias, self.anchor, self.flat, self.how, recipe,
                                             recipe.step_input)
        return _SelectedGradLinear.apply(x, weight, bias, self.anchor, self.flat, self.how, recipe, None)


def install(model: nn.Module, optimizer: CompactAdamW, mode: str = "sampled",
            rebuild_inputs: bool = False) -> list[str]:
    """Give every partly selected ``nn.Linear`` weight of ``optimizer`` a values-only gradient; return their names.

    ``mode`` picks the product (see the module docstring). ``"sampled"`` and ``"dense"`` take every
    such layer and refuse a weight that is not float32 or that another module holds too (a tied weight: its
    gradient sums over every use, and only this layer's would reach the anchor); ``"auto"`` takes the float32 CPU
    layers that hold their weight alone and leaves the others to autograd. Each taken weight stops requiring a
    gradient (so backward keeps no dense one) and gets a ``[k]`` anchor in ``optimizer.values_grads``.
    ``rebuild_inputs``: the model's GELU, ``nn.LayerNorm`` and RMSNorm modules tag their outputs
    (``sparsity.rebuilt_inputs.tag_steps``) and the layers keep no copy of a tagged input. Undo with :func:`remove`.
    """
    if not isinstance(optimizer, CompactAdamW):
        raise TypeError(f"values-only gradients need a CompactAdamW, got {type(optimizer).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    params = dict(model.named_parameters())
    holders = _holders(model)
    done = []
    for mod_name, module in model.named_modules():
        if type(module) is not nn.Linear:
            continue
        name = f"{mod_name}.weight" if mod_name else "weight"
        idx = optimizer.indices.get(name)
        if idx is None or idx.numel() == 0 or params.get(name) is not module.weight:
            continue
        others = [h for h in holders[id(module.weight)] if h != name]  # a tied weight's other holders
        if mode == "auto" and (not sparse_cpu.usable(module.weight) or others):
            continue
        if others:
            raise ValueError(f"'{name}' is tied to {', '.join(others)}: "
                             "a values-only gradient would carry this layer's share of its gradient only; leave it to "
                             "autograd (mode='auto' does) or untie it")
        if module.weight.dtype != torch.float32:
            raise TypeError(f"values-only gradients need float32 weights; '{name}' is {module.weight.dtype}")
        anchor = torch.zeros(idx.numel(), device=idx.device, requires_grad=True)
        installed = _Installed(module, anchor, idx, mode, rebuild_inputs)
        module.weight.requires_grad_(False)
        module.forward = installed.forward  # type: ignore[method-assign]
        module._values_grad = installed  # type: ignore[assignment]
        optimizer.values_grads[name] = anchor
        done.append(name)
    if done and rebuild_inputs and "_values_grad_tags" not in model.__dict__:
        model._values_grad_tags = rebuilt_inputs.tag_steps(model)  # type: ignore[assignment]
    if done and "_values_grad_consumed" not in optimizer.__dict__:
        optimizer._values_grad_consumed = optimizer.register_step_post_hook(_consume)  # type: ignore[attr-defined]
    return done


def _holders(model: nn.Module) -> dict[int, list[str]]:
    """Parameter id -> its names in the modules that hold it directly: two modules holding one tensor is a tied
    weight (a head sharing its embedding's matrix, Press & Wolf 2017), whose gradient sums over both modules' uses.
    One module reused in two places is listed once: every use runs its installed forward, so its anchor sums them."""
    holders: dict[int, list[str]] = {}
    for mod_name, module in model.named_modules():
        for name, p in module.named_parameters(prefix=mod_name, recurse=False):
            holders.setdefault(id(p), []).append(name)
    return holders


def _consume(optimizer: CompactAdamW, args: Any, kwargs: Any) -> None:
    """After a step, drop the anchors' gradients the step has read (see the module docstring)."""
    for anchor in optimizer.values_grads.values():
        anchor.grad = None


def remove(model: nn.Module, optimizer: CompactAdamW) -> None:
    """Undo :func:`install`: plain forwards, weights requiring gradients again, no anchors."""
    remove_from_model(model)
    optimizer.values_grads.clear()
    hook = optimizer.__dict__.pop("_values_grad_consumed", None)
    if hook is not None:
        hook.remove()


def remove_from_model(model: nn.Module) -> list[str]:
    """The model's half of :func:`remove`, for a model whose optimizer is gone: plain forwards, weights requiring
    gradients again, no output tags. Returns the names of the layers it restored."""
    restored = []
    for name, module in model.named_modules():
        installed = module.__dict__.pop("_values_grad", None)
        if installed is not None:
            del module.forward
            module.weight.requires_grad_(True)
            restored.append(name)
    for handle in model.__dict__.pop("_values_grad_tags", ()):
        handle.remove()
    return restored
