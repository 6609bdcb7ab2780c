"""A layer's input, rebuilt in backward from what autograd already keeps instead of kept twice.

A linear layer's weight gradient needs its input ``x``, so backward keeps ``x`` until it gets
there. In a transformer that input is often the output of a cheap elementwise step whose own
backward keeps *its* input: ``proj(gelu(u))`` keeps both ``u`` (for GELU's backward) and
``gelu(u)`` (for ``proj``'s), four times the model width per token each; ``qkv(layer_norm(h))``
keeps both ``h`` and the normalised ``h``. Recomputing the cheap step in backward instead of
keeping its output is the trade of activation recomputation (Chen et al. 2016), made selective:
only elementwise steps, never a matmul (Korthikanti et al. 2022 recompute the attention core by
the same reasoning). It costs one GELU or norm per layer in backward. Where the step computes each token's row
alone (a GELU with erf, a LayerNorm over the last dimension: :class:`RowStep`), the CPU kernel of the sampled
product rebuilds it one block of tokens at a time, just before it reads the block: the whole output is then never
written out and read back (``sparsity.kernels.sparse_cpu``). (The attention's
output, its heads side by side, needs nothing: on the CPU the fused attention lays its output out
so that this is a view of what its backward keeps, not a copy.)

How: forward hooks on the model's GELU modules (:data:`GELUS`), ``nn.LayerNorm`` modules and RMSNorms
(``torch.nn.RMSNorm`` and LLaMA-style models' own; :func:`tag_steps`) put on each output the function
and the inputs that give it back, bit for bit (the same operations on the same inputs), and the
output's version. A layer whose input carries such a tag, unchanged
since (:func:`recipe`), keeps those inputs instead: the same tensors the step's own backward
keeps, so no bytes are added, and autograd's version counters refuse any of them changed in
place before backward. Under activation checkpointing they are recomputed with the block like
every other saved tensor. Anything else (an untagged input, one changed in place, a functional
``F.gelu``, what a forward hook returned instead of the step's output) is kept as before. A tagged
output holds its step's inputs while it lives: where the output outlives them (a model that
returns it, e.g. Hugging Face's ``output_hidden_states``), those stay too. ``sparsity.values_grad``
uses this for its layers unless ``SparseConfig(rebuild_inputs=False)``.

The GELU's backward, too, moves into the layer that reads its output. Left to autograd, the GELU's
node gets the layer's input gradient (four times the width per token) and allocates its own
gradient of the same size while that one and ``u`` are live: at the end of a small GPT's last
block, the step's highest point. Where the output comes straight from ``aten.gelu``, the layer
differentiates ``u`` itself and runs the very kernel that node would run (``aten.gelu_backward``,
so the same bits) into its input gradient in place (:func:`gelu_backward_`). The GELU's node is
then off the loss's path and gets no gradient: where the output's own gradient is asked for when
the layer runs (``retain_grad``, a tensor hook, a module's full backward hook) the GELU keeps its
backward; a hook put on the output after the forward would not be called.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.module import _global_forward_hooks
from torch.utils.hooks import RemovableHandle

GELUS = ("GELU", "GELUActivation", "NewGELUActivation")
"""Activation modules rebuilt by running their ``forward`` again on their input: ``torch.nn.GELU`` and Hugging
Face's GELUs (``transformers.activations``, matched by class and module name, nothing imported; Pythia's and
Phi's MLPs use them). Each is a function of its one input, and its backward keeps that input, so keeping the
input instead of the output adds nothing."""

TAG = "_rebuild_from"
"""The attribute :func:`tag_steps` sets on a step's output: ``(recipe, version)``."""


class RowStep(NamedTuple):
    """A step whose output the CPU kernel of ``sparsity.values_grad`` rebuilds one block of token rows at a time: a GELU
    with erf (``aten.gelu``) or a LayerNorm over the last dimension. Each computes a row the same way whatever the other
    rows (tested bit for bit), so the layer's whole input is never rebuilt at once, only a block of it, read while in
    cache. Called, it gives the whole output (for the products that need it whole)."""

    kind: str
    """``"gelu"`` or ``"layer_norm"``."""
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    eps: float = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gelu":
            return F.gelu(x)
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class Recipe(NamedTuple):
    """How a tagged output is had again, and, for a GELU, how its backward is done in the next layer's."""

    rebuild: Callable[..., torch.Tensor]
    """``rebuild(*sources)`` equals the tagged output bit for bit."""
    sources: tuple[torch.Tensor | None, ...]
    """Detached: the step's input first (then a norm's weight, and a LayerNorm's bias)."""
    step_input: torch.Tensor | None = None
    """A GELU computed by ``aten.gelu`` (its output's node is ``GeluBackward0``): its input as autograd has it."""
    step_backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    """``step_backward(grad, step_input)``: that GELU's backward, into ``grad`` itself (see :func:`gelu_backward_`)."""
    row_step: RowStep | None = None
    """Where the step is a :class:`RowStep` of ``sources[0]``: the same step, for the kernel to apply block by block."""


def _class_from_torch_or_transformers(module: nn.Module) -> str | None:
    """``module``'s class name where torch or Hugging Face defines the class, else None (a look-alike of another)."""
    kind = type(module)
    return kind.__name__ if kind.__module__.split(".")[0] in ("torch", "transformers") else None


def _is_rms_norm(module: nn.Module) -> bool:
    """Whether ``module`` is an RMSNorm (Zhang & Sennrich 2019): ``torch.nn.RMSNorm`` or a Hugging Face model's own
    (``LlamaRMSNorm``, ``Qwen2RMSNorm``, ...: every LLaMA-style model defines one, matched by the class name's end)."""
    return (_class_from_torch_or_transformers(module) or "").endswith("RMSNorm")


def _is_gelu(module: nn.Module) -> bool:
    """Whether ``module`` is one of :data:`GELUS` (torch's or Hugging Face's class)."""
    return _class_from_torch_or_transformers(module) in GELUS


def tag_steps(model: nn.Module) -> list[RemovableHandle]:
    """Forward hooks on every GELU (:data:`GELUS`), ``nn.LayerNorm`` and RMSNorm of ``model`` that tag their
    outputs (remove them to undo). Each runs before the module's other forward hooks (``prepend``), so it tags
    what ``forward`` returned: a hook that returns another tensor (activation steering, say) hands the next layer
    an untagged one, which it keeps, and one that changes the output in place changes its version."""
    return [m.register_forward_hook(_tag, prepend=True) for m in model.modules()
            if _is_gelu(m) or isinstance(m, nn.LayerNorm) or _is_rms_norm(m)]


def _tag(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
    if not isinstance(output, torch.Tensor) or not output.requires_grad or len(inputs) != 1:
        return  # no backward will need it, or called another way (by keyword): not tagged, kept as before
    if _global_forward_hooks:  # they run before every module's own hooks: the output may not be forward's
        return
    (x,) = inputs
    if _is_rms_norm(module):  # its weight goes along as a source only so that autograd checks it is unchanged
        weight = getattr(module, "weight", None)
        made = Recipe(functools.partial(_forward_of, module), (x.detach(), None if weight is None else weight.detach()))
    elif not _is_gelu(module):
        sources = (x.detach(), *(None if p is None else p.detach() for p in (module.weight, module.bias)))
        rows = RowStep("layer_norm", *sources[1:], module.eps) if len(module.normalized_shape) == 1 else None
        made = Recipe(functools.partial(_layer_norm, shape=tuple(module.normalized_shape), eps=module.eps), sources,
                      row_step=rows)
    elif output.grad_fn is not None and output.grad_fn.name() == "GeluBackward0":  # aten.gelu's own output
        approximate = output.grad_fn._saved_approximate
        made = Recipe(module.forward, (x.detach(),), x,  # forward itself: no hook runs again
                      functools.partial(gelu_backward_, approximate=approximate),
                      RowStep("gelu") if approximate == "none" else None)
    else:  # a GELU of several operations (NewGELUActivation) or a hooked one: rebuilt, its backward left to autograd
        made = Recipe(module.forward, (x.detach(),))
    setattr(output, TAG, (made, output._version))


def recipe(x: torch.Tensor) -> Recipe | None:
    """How to rebuild ``x`` from the tensors its step keeps anyway, or None (keep ``x`` itself): only for a
    tagged output (:func:`tag_steps`) not changed in place since. Its GELU's backward may be done by the next layer
    (``step_input``) unless ``x``'s own gradient is asked for when the layer runs (``retain_grad``, a tensor hook)."""
    tag = getattr(x, TAG, None)
    if tag is None or tag[1] != x._version:
        return None
    made: Recipe = tag[0]
    if made.step_input is not None and (x.retains_grad or x._backward_hooks):  # x's own gradient is asked for
        return made._replace(step_input=None, step_backward=None)
    return made


def gelu_backward_(grad: torch.Tensor, x: torch.Tensor, *, approximate: str) -> torch.Tensor:
    """GELU's backward at input ``x``: the kernel autograd's ``GeluBackward0`` runs (``aten.gelu_backward``), so the
    same bits, but written into ``grad`` (an elementwise kernel may overwrite its own input) instead of a new tensor
    of the same size. Out of place where ``grad`` is itself differentiated (``create_graph=True``)."""
    if grad.requires_grad:
        return torch.ops.aten.gelu_backward(grad, x, approximate=approximate)
    return torch.ops.aten.gelu_backward.grad_input(grad, x, approximate=approximate, grad_input=grad)


def _forward_of(module: nn.Module, x: torch.Tensor, *checked: torch.Tensor | None) -> torch.Tensor:
    """``module.forward(x)`` (no hooks); ``checked`` are the parameters it reads, kept so autograd checks them."""
    return module.forward(x)


def _layer_norm(h: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, *,
                shape: tuple[int, ...], eps: float) -> torch.Tensor:
    """``F.layer_norm`` with the arguments in the order :func:`_tag` keeps them."""
    return F.layer_norm(h, shape, weight, bias, eps)
