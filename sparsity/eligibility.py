"""Which parameters a budget may spend on, and which tensors a name or pattern means.

Embedding tables and normalisation gains are usually left out of sparse fine-tuning
budgets (they are few entries, or indexed by token rather than multiplied with), so
every selector and criterion takes ``include``: the kinds of parameter it may touch.
A model's output embedding (a Hugging Face model's ``get_output_embeddings()``, its
``lm_head``) is an embedding too, tied to the input table or not, so a budget never
spends on it unless asked (``include`` with "embedding").

Which axis of a matrix is its input: ``nn.Linear`` stores ``[out, in]``, GPT-2's
``Conv1D`` (Radford et al. 2019) ``[in, out]``; :func:`input_axes` says so per tensor,
so structured selections (N:M groups along the input) follow the layout.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from torch import nn

from sparsity.validate import check_module

KINDS = ("weight", "bias", "norm", "embedding")
"""Parameter kinds a budget can be restricted to (see :func:`parameter_kinds`)."""


def parameter_kinds(model: nn.Module) -> dict[str, str]:
    """Classify each parameter as weight, bias, norm or embedding by its owning module."""
    kinds: dict[str, str] = {}
    output = _output_embedding(check_module(model))
    for module_name, module in model.named_modules():
        is_norm = "norm" in type(module).__name__.lower()
        for param_name, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, nn.Embedding) or (module is output and param_name == "weight"):
                kinds[full] = "embedding"
            elif is_norm:
                kinds[full] = "norm"
            elif p.ndim >= 2:
                kinds[full] = "weight"
            else:
                kinds[full] = "bias"
    return {name: kinds[name] for name, _ in model.named_parameters()}


def _output_embedding(model: nn.Module) -> nn.Module | None:
    """The module a Hugging Face-style model reports as its output embedding (None if it has none)."""
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` (transformers.pytorch_utils), recognised without importing transformers:
    a linear layer whose weight is stored ``[in, out]`` (``nx`` inputs, ``nf`` outputs)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def input_axes(model: nn.Module) -> dict[str, int]:
    """For every parameter of two or more dimensions, the axis that runs along the layer's input:
    the last one (``nn.Linear``'s ``[out, in]``, convolutions' ``[out, in, ...]``) except for a
    ``Conv1D`` weight, whose input axis is 0."""
    axes: dict[str, int] = {}
    for module_name, module in check_module(model).named_modules():
        for param_name, p in module.named_parameters(recurse=False):
            if p.ndim >= 2:
                full = f"{module_name}.{param_name}" if module_name else param_name
                axes[full] = 0 if is_conv1d(module) and param_name == "weight" else p.ndim - 1
    names = dict(model.named_parameters())
    return {n: a for n, a in axes.items() if n in names}


def eligible(model: nn.Module, include: str | Iterable[str] = "weight") -> list[str]:
    """Names of the parameters whose kind is in ``include`` ("all" for every parameter)."""
    if isinstance(include, str):
        include = KINDS if include == "all" else (include,)
    include = tuple(include)
    unknown = [k for k in include if k not in KINDS]
    if unknown or not include:
        raise ValueError(f"include must name kinds among {KINDS} or be 'all', got {include}")
    names = [n for n, kind in parameter_kinds(model).items() if kind in include]
    if not names:
        raise ValueError(f"include={include} selects no parameter of this model")
    return names


def match_parameters(model: nn.Module, names_or_patterns: str | Iterable[str]) -> list[str]:
    """Parameters matched by a name, a module prefix or a glob pattern, in model order.

    ``"fc2"`` matches ``fc2.weight`` and ``fc2.bias``; ``"*.weight"`` every weight;
    ``"blocks.1.*"`` one block. A pattern that matches nothing is an error (a typo would
    otherwise freeze the whole model without a word).
    """
    if isinstance(names_or_patterns, str):
        names_or_patterns = [names_or_patterns]
    patterns = list(names_or_patterns)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"names_or_patterns must be a non-empty list of strings, got {patterns!r}")
    names = [n for n, _ in check_module(model).named_parameters()]
    hits: set[str] = set()
    for pattern in patterns:
        found = {n for n in names if n == pattern or n.startswith(pattern + ".") or fnmatch.fnmatchcase(n, pattern)}
        if not found:
            raise ValueError(f"pattern '{pattern}' matches no parameter (parameters: {', '.join(names)})")
        hits |= found
    return [n for n in names if n in hits]
