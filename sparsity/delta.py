"""The sparse delta of a fine-tuning run, as a checkpoint format.

A sparse fine-tune changes k entries of a model; storing the whole model again wastes
the rest. The delta stores, per selected tensor, its shape, the flat positions of the
selected entries (``torch.int32``, sorted, unique) and ``values = theta - theta_ref``
at those positions, the way composable sparse fine-tunes are shipped (Ansell et al.
2022; PEFT's adapters for LoRA). ``merge_delta`` adds it onto the reference.

Why the values are float64: in the parameter's own dtype the difference is not
reversible. ``ref + (theta - ref)`` often misses ``theta`` when an entry leaves
``[ref / 2, 2 * ref]`` (it shrinks by more than half, doubles or crosses zero; inside,
the difference is exact by Sterbenz's lemma): a sixth to a third of the selected
entries of a short float32 fine-tune of a small MLP. The difference of two float32
numbers is exact in float64 unless the fine-tuned one is some 2**29 times smaller than
the reference (or subnormal), so ``merge_delta`` (add in float64, round once) gives the
fine-tuned model back bit for bit, and ``extract_delta`` checks that it does.

On disk: safetensors, tensors ``"{name}::indices"`` and ``"{name}::values"``, shapes
as JSON in the metadata.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from sparsity.validate import Mask, TensorDict, check_mask, check_reference, named_params

FORMAT = "subnet-lab/sparse-delta"
VERSION = "1"
SEP = "::"


@dataclass(frozen=True)
class TensorDelta:
    """The change of one tensor: ``theta.flatten()[indices] - theta_ref.flatten()[indices] = values``."""

    shape: tuple[int, ...]
    indices: torch.Tensor
    values: torch.Tensor


def _check_tensor_delta(name: str, t: object) -> None:
    arg = f"delta['{name}']"
    if not isinstance(t, TensorDelta):
        raise TypeError(f"{arg} must be a TensorDelta, got {type(t).__name__}")
    if not isinstance(t.shape, tuple) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in t.shape
    ):
        raise ValueError(f"{arg}.shape must be a tuple of non-negative ints, got {t.shape!r}")
    idx, values = t.indices, t.values
    if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int32 or idx.ndim != 1:
        got = idx.dtype if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise TypeError(f"{arg}.indices must be a 1-D torch.int32 tensor, got {got}")
    if not isinstance(values, torch.Tensor) or not values.is_floating_point() or values.shape != idx.shape:
        raise TypeError(f"{arg}.values must be a floating tensor of shape {tuple(idx.shape)} (one per index)")
    numel = 1
    for s in t.shape:
        numel *= s
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel):
        raise ValueError(f"{arg}.indices has positions outside [0, {numel}) for shape {t.shape}")
    steps = idx[1:] - idx[:-1]
    if (steps == 0).any():
        raise ValueError(f"{arg}.indices has duplicate positions")
    if (steps < 0).any():
        raise ValueError(f"{arg}.indices is not sorted")
    if torch.isnan(values).any():
        raise ValueError(f"{arg}.values contains NaN")
    if torch.isinf(values).any():
        raise ValueError(f"{arg}.values contains inf")


@dataclass(frozen=True)
class SparseDelta:
    """Parameter name -> :class:`TensorDelta`, checked on construction (a loaded file too)."""

    tensors: dict[str, TensorDelta]

    def __post_init__(self) -> None:
        if not isinstance(self.tensors, dict):
            raise TypeError(f"tensors must be a dict, got {type(self.tensors).__name__}")
        for name, t in self.tensors.items():
            if not isinstance(name, str) or SEP in name:
                raise ValueError(f"delta name {name!r} must be a string without '{SEP}'")
            _check_tensor_delta(name, t)


@torch.no_grad()
def extract_delta(model: nn.Module, reference: TensorDict, mask: Mask) -> SparseDelta:
    """The change of the selected entries, ``theta - theta_ref``, exactly (float64).

    The coverage rule of ``sparsity.validate.Mask``: a parameter absent from ``mask`` is
    stored whole, one whose mask is all False is left out. Entries outside the mask are not
    stored even if they changed, so this also sparsifies a dense fine-tune.
    """
    params = named_params(model)
    reference = check_reference(params, reference)
    mask = check_mask(params, mask)
    tensors = {}
    for name, p in params.items():
        m = mask.get(name)
        if m is not None and not m.any():
            continue
        if name not in reference:
            raise ValueError(f"reference has no entry for parameter '{name}'")
        if p.numel() > torch.iinfo(torch.int32).max:
            raise ValueError(f"parameter '{name}' has {p.numel()} entries, too many for int32 indices")
        idx = torch.arange(p.numel(), device=p.device) if m is None else m.reshape(-1).nonzero().squeeze(1)
        theta = p.detach().reshape(-1)[idx]
        if torch.isnan(theta).any():
            raise ValueError(f"parameter '{name}' contains NaN at selected entries")
        ref = reference[name].reshape(-1)[idx].double()
        values = theta.double() - ref
        lost = (ref + values).to(p.dtype) != theta
        if lost.any():
            i = int(lost.nonzero()[0])
            raise ValueError(
                f"the change of '{name}' is not exact in float64 at {int(lost.sum())} entries "
                f"(e.g. flat index {int(idx[i])}: reference {ref[i].item()!r}, fine-tuned {theta[i].item()!r}); "
                "a float64 difference is exact for float32 or narrower parameters unless an entry shrinks ~2**29-fold"
            )
        tensors[name] = TensorDelta(tuple(p.shape), idx.to(torch.int32).cpu(), values.cpu())
    return SparseDelta(tensors)


def save_delta(delta: SparseDelta, path: str | os.PathLike[str]) -> None:
    """Write a delta as safetensors: ``{name}::indices``, ``{name}::values``, shapes in the metadata."""
    if not isinstance(delta, SparseDelta):
        raise TypeError(f"delta must be a SparseDelta, got {type(delta).__name__}")
    tensors = {}
    for name, t in delta.tensors.items():
        tensors[f"{name}{SEP}indices"] = t.indices.contiguous()
        tensors[f"{name}{SEP}values"] = t.values.contiguous()
    shapes = json.dumps({name: list(t.shape) for name, t in delta.tensors.items()})
    save_file(tensors, os.fspath(path), metadata={"format": FORMAT, "version": VERSION, "shapes": shapes})


def _read_shapes(path: str, metadata: dict[str, str]) -> dict[str, list[int]]:
    """The ``shapes`` metadata entry: a JSON object from tensor name to a list of ints."""
    if "shapes" not in metadata:
        raise ValueError(f"{path}: the sparse delta's metadata has no 'shapes' entry")
    try:
        shapes = json.loads(metadata["shapes"])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the metadata entry 'shapes' is not JSON ({e})") from None
    if not isinstance(shapes, dict) or not all(isinstance(v, list) for v in shapes.values()):
        raise ValueError(f"{path}: the metadata entry 'shapes' must map each tensor name to a list of ints")
    return shapes


def load_delta(path: str | os.PathLike[str]) -> SparseDelta:
    """Read a delta written by :func:`save_delta`; every tensor is checked (dtype, order, range, NaN).

    Any problem, from a file that is not safetensors at all to a bad shape entry, raises a
    ``ValueError`` that starts with the file's path.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sparse delta file {path} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a sparse delta: its metadata has no format '{FORMAT}'")
    if metadata.get("version") != VERSION:
        raise ValueError(f"{path} has sparse delta version {metadata.get('version')!r}, this code reads '{VERSION}'")
    shapes = _read_shapes(path, metadata)
    expected = {f"{n}{SEP}{part}" for n in shapes for part in ("indices", "values")}
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)
        raise ValueError(f"{path}: tensors and shapes disagree (unmatched: {', '.join(odd)})")
    try:
        return SparseDelta(
            {
                name: TensorDelta(tuple(shape), tensors[f"{name}{SEP}indices"], tensors[f"{name}{SEP}values"])
                for name, shape in shapes.items()
            }
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


@torch.no_grad()
def merge_delta(model: nn.Module, delta: SparseDelta) -> None:
    """Add a delta into ``model`` in place: ``theta[indices] = round(theta[indices] + values)``.

    The sum is taken in float64 and rounded once to the parameter's dtype, so merging
    ``extract_delta(finetuned, ref, mask)`` into a copy of ``ref`` gives ``finetuned``
    bit for bit. Every name and shape is checked, and every sum computed, before any
    parameter is touched: a delta whose sum overflows the parameter's dtype (a value of
    1e300 is finite in float64, inf in float32) is refused, not merged as inf.
    """
    if not isinstance(delta, SparseDelta):
        raise TypeError(f"delta must be a SparseDelta, got {type(delta).__name__}")
    params = named_params(model)
    for name, t in delta.tensors.items():
        if name not in params:
            raise ValueError(f"delta has parameter '{name}', which the model does not have")
        if tuple(params[name].shape) != t.shape:
            shape = tuple(params[name].shape)
            raise ValueError(f"delta['{name}'] is for shape {t.shape}, but the model's parameter has shape {shape}")
    merged = {}
    for name, t in delta.tensors.items():
        p = params[name]
        idx = t.indices.to(device=p.device, dtype=torch.long)
        before = p.take(idx)
        new = (before.double() + t.values.to(p.device, torch.float64)).to(p.dtype)
        overflow = ~torch.isfinite(new) & torch.isfinite(before)
        if overflow.any():
            i = int(overflow.nonzero()[0])
            raise ValueError(
                f"delta['{name}'] overflows {p.dtype} at {int(overflow.sum())} entries "
                f"(e.g. flat index {int(idx[i])}: value {t.values[i].item()!r}); nothing was merged"
            )
        merged[name] = (idx, new)
    for name, (idx, new) in merged.items():
        params[name].put_(idx, new)
