"""Which parameters a budget may spend on, and which tensors a name or pattern means.

Embedding tables and normalisation gains are usually left out of sparse fine-tuning
budgets (they are few entries, or indexed by token rather than multiplied with), so
every selector and criterion takes ``include``: the kinds of parameter it may touch.
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
    for module_name, module in check_module(model).named_modules():
        is_norm = "norm" in type(module).__name__.lower()
        for param_name, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, nn.Embedding):
                kinds[full] = "embedding"
            elif is_norm:
                kinds[full] = "norm"
            elif p.ndim >= 2:
                kinds[full] = "weight"
            else:
                kinds[full] = "bias"
    return {name: kinds[name] for name, _ in model.named_parameters()}


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
