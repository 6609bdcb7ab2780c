"""A layer's input, rebuilt in backward from what autograd already keeps instead of kept twice.

A linear layer's weight gradient needs its input ``x``, so backward keeps ``x`` until it gets
there. In a transformer that input is often the output of a cheap elementwise step whose own
backward keeps *its* input: ``proj(gelu(u))`` keeps both ``u`` (for GELU's backward) and
``gelu(u)`` (for ``proj``'s), four times the model width per token each; ``qkv(layer_norm(h))``
keeps both ``h`` and the normalised ``h``. Recomputing the cheap step in backward instead of
keeping its output is the trade of activation recomputation (Chen et al. 2016), made selective:
only elementwise steps, never a matmul (Korthikanti et al. 2022 recompute the attention core by
the same reasoning). It costs one GELU or LayerNorm per layer in backward. (The attention's
output, its heads side by side, needs nothing: on the CPU the fused attention lays its output out
so that this is a view of what its backward keeps, not a copy.)

How: forward hooks on the model's GELU modules (:data:`GELUS`) and ``nn.LayerNorm`` modules
(:func:`tag_steps`) put on each output the function and the inputs that give it back, bit for bit
(the same operations on the same inputs), and the output's version. A layer whose input carries such a tag, unchanged
since (:func:`recipe`), keeps those inputs instead: the same tensors the step's own backward
keeps, so no bytes are added, and autograd's version counters refuse any of them changed in
place before backward. Under activation checkpointing they are recomputed with the block like
every other saved tensor. Anything else (an untagged input, one changed in place, a functional
``F.gelu``) is kept as before. A tagged output holds its step's inputs while it lives: where the
output outlives them (a model that returns it, e.g. Hugging Face's ``output_hidden_states``),
those stay too. ``sparsity.values_grad`` uses this for its layers unless
``SparseConfig(rebuild_inputs=False)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

GELUS = ("GELU", "GELUActivation", "NewGELUActivation")
"""Activation modules rebuilt by running their ``forward`` again on their input: ``torch.nn.GELU`` and Hugging
Face's GELUs (``transformers.activations``, matched by class and module name, nothing imported; Pythia's and
Phi's MLPs use them). Each is a function of its one input, and its backward keeps that input, so keeping the
input instead of the output adds nothing."""

TAG = "_rebuild_from"
"""The attribute :func:`tag_steps` sets on a step's output: ``(rebuild, sources, version)``."""

Recipe = tuple[Callable[..., torch.Tensor], tuple[torch.Tensor | None, ...]]
"""``(rebuild, sources)``: ``rebuild(*sources)`` equals the tagged output bit for bit."""


def _is_gelu(module: nn.Module) -> bool:
    """Whether ``module`` is one of :data:`GELUS` (torch's or Hugging Face's class, not a look-alike of another)."""
    kind = type(module)
    return kind.__name__ in GELUS and kind.__module__.split(".")[0] in ("torch", "transformers")


def tag_steps(model: nn.Module) -> list[RemovableHandle]:
    """Forward hooks on every GELU (:data:`GELUS`) and ``nn.LayerNorm`` of ``model`` that tag their outputs
    (remove them to undo)."""
    return [m.register_forward_hook(_tag) for m in model.modules() if _is_gelu(m) or isinstance(m, nn.LayerNorm)]


def _tag(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
    if not isinstance(output, torch.Tensor) or not output.requires_grad or len(inputs) != 1:
        return  # no backward will need it, or called another way (by keyword): not tagged, kept as before
    (x,) = inputs
    if _is_gelu(module):
        made: Recipe = (module.forward, (x.detach(),))  # forward itself: no hook runs again
    else:
        made = (functools.partial(_layer_norm, shape=tuple(module.normalized_shape), eps=module.eps),
                (x.detach(), *(None if p is None else p.detach() for p in (module.weight, module.bias))))
    setattr(output, TAG, (*made, output._version))


def recipe(x: torch.Tensor) -> Recipe | None:
    """How to rebuild ``x`` from the tensors its step keeps anyway, or None (keep ``x`` itself): only for a
    tagged output (:func:`tag_steps`) not changed in place since."""
    tag = getattr(x, TAG, None)
    if tag is None or tag[2] != x._version:
        return None
    return tag[0], tag[1]


def _layer_norm(h: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, *,
                shape: tuple[int, ...], eps: float) -> torch.Tensor:
    """``F.layer_norm`` with the arguments in the order :func:`_tag` keeps them."""
    return F.layer_norm(h, shape, weight, bias, eps)
