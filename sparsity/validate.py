"""Input checks shared by every public function of the core.

A mask, a reference snapshot or a density that is wrong should fail loudly at the
call that received it, with a message naming the argument and the problem, never
turn into a silently wrong experiment later on.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

Mask = dict[str, torch.Tensor]
"""A mask: parameter name -> bool tensor of the parameter's shape (True = trainable, or kept).

**The coverage rule, the one rule for every consumer of a mask in the lab.** A parameter
*absent* from a mask is not constrained by it: the optimizers train it densely, a pruning
keep-mask keeps it, a sparse delta stores it whole, a re-selection keeps its count. Only an
explicit False constrains: frozen for a training mask, pruned (zeroed) for a keep-mask.
Every selector of ``sparsity.masks`` names *every* parameter of the model (the tensors its
budget may not spend on come back all False), so a selected mask never relies on absence.

The one place the two readings of an explicit all-False tensor part ways is pruning: as a
training mask it means "frozen", as a keep-mask "zero it all". ``sparsity.prune.apply_mask_``
therefore refuses a keep-mask that would zero a whole tensor (the sign of a training mask
passed as a keep-mask) unless told ``allow_empty=True``.
"""

TensorDict = dict[str, torch.Tensor]
"""Parameter name -> tensor, e.g. a reference snapshot of the weights."""


def check_module(model: object, arg: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{arg} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_density(density: object, arg: str = "density") -> float:
    """A density is the share of entries selected: a real number in (0, 1]."""
    if isinstance(density, bool) or not isinstance(density, (int, float)):
        raise TypeError(f"{arg} must be a number in (0, 1], got {type(density).__name__}")
    if math.isnan(density) or not 0.0 < density <= 1.0:
        raise ValueError(f"{arg} must be in (0, 1], got {density}")
    return float(density)


def check_positive_int(value: object, arg: str) -> int:
    """A count (steps, a rank, a batch size, an interval): an int >= 1, and not a bool.

    A wrong type is a ValueError too (not TypeError), as for every count of the lab, so a
    caller catches one exception class for "not a usable count".
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{arg} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{arg} must be a positive int, got {value}")
    return value


def check_nonnegative_int(value: object, arg: str) -> int:
    """An index or an offset (a warm-up length, a seed, a start step): an int >= 0, and not a bool."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{arg} must be a non-negative int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{arg} must be a non-negative int, got {value}")
    return value


def check_nonnegative(value: object, arg: str = "tol") -> float:
    """A tolerance, a penalty strength or a learning rate: a real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{arg} must be a non-negative number, got {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{arg} must be >= 0, got {value}")
    return float(value)


def check_finite_nonnegative(value: object, arg: str) -> float:
    """A learning rate, a penalty strength, a weight decay: a finite real number >= 0.

    ``inf`` passes ``check_nonnegative`` but turns the first step into NaN, so every
    hyperparameter that multiplies an update goes through this check instead.
    """
    value = check_nonnegative(value, arg)
    if math.isinf(value):
        raise ValueError(f"{arg} must be finite, got {value}")
    return value


def _check_tensor_dict(
    params: Mapping[str, torch.Tensor],
    tensors: object,
    arg: str,
    *,
    want_bool: bool,
) -> None:
    if not isinstance(tensors, Mapping):
        raise TypeError(f"{arg} must be a mapping from parameter name to tensor, got {type(tensors).__name__}")
    for name, t in tensors.items():
        if name not in params:
            known = ", ".join(list(params)[:8])
            raise ValueError(f"{arg} key '{name}' is not a parameter of the model (known: {known}, ...)")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{arg}['{name}'] must be a tensor, got {type(t).__name__}")
        p = params[name]
        if t.shape != p.shape:
            raise ValueError(f"{arg}['{name}'] has shape {tuple(t.shape)}, but the parameter has shape {tuple(p.shape)}")
        if t.device != p.device:
            raise ValueError(f"{arg}['{name}'] is on {t.device}, but the parameter is on {p.device}")
        if want_bool and t.dtype != torch.bool:
            raise TypeError(f"{arg}['{name}'] must have dtype torch.bool, got {t.dtype}")
        if not want_bool and t.is_floating_point() and torch.isnan(t).any():
            raise ValueError(f"{arg}['{name}'] contains NaN")


def check_mask(params: Mapping[str, torch.Tensor], mask: object, arg: str = "mask") -> Mask:
    """Validate a mask against named parameters: known keys, same shape and device, bool dtype."""
    _check_tensor_dict(params, mask, arg, want_bool=True)
    return dict(mask)  # type: ignore[arg-type]


def check_reference(params: Mapping[str, torch.Tensor], reference: object, arg: str = "reference") -> TensorDict:
    """Validate a reference snapshot: known keys, same shape and device, no NaN."""
    _check_tensor_dict(params, reference, arg, want_bool=False)
    return dict(reference)  # type: ignore[arg-type]


def named_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(check_module(model).named_parameters())


def read_json_object(file: str | os.PathLike[str], arg: str | None = None) -> dict[str, Any]:
    """The JSON object a file holds, or a ValueError naming the file (and ``arg``, the argument or
    checkpoint it belongs to) for text that is not JSON, not UTF-8, or JSON that is not an object."""
    file = Path(file)
    where = f"{arg}: {file}" if arg else str(file)
    try:
        value = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{where} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where} must hold a JSON object, got a {type(value).__name__}")
    return value
