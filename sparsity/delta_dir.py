"""A sparse delta as a folder a user can ship: what it applies to, and the change itself.

``sparsity.delta`` stores the change of a sparse fine-tune (flat indices and float64 values per
tensor, one safetensors file). Shipped on its own, such a file does not say which model it
belongs to; this folder adds that, the way a PEFT adapter folder pairs ``adapter_config.json``
with ``adapter_model.safetensors`` (Mangrulkar et al. 2022)::

    my-delta/
      sparse_delta.json     base model (id or path), model type, criterion, budget, and per
                            tensor its shape, dtype, input axis (Linear [out, in] or Conv1D
                            [in, out]) and number of changed entries
      delta.safetensors     the delta (``sparsity.delta.save_delta``)

:func:`merge` adds it into a model loaded fresh with ``from_pretrained`` and gives the
fine-tuned weights back bit for bit (float64 sum, rounded once: see ``sparsity.delta``);
:func:`unmerge` takes it out again, bit for bit too (``theta - (theta - theta_ref)`` is exact in
float64). Both check the whole delta against the model first and refuse, naming the tensor, a
model of another type, another shape, another dtype or another layout (a Conv1D weight where
the delta was taken on a Linear one has the transposed meaning even when square).

The folder also fingerprints the values at the delta's entries, before and after (a SHA-256
per tensor of the base's values there and of the fine-tuned ones, in the parameter's dtype,
plus one hash over all of them). So :func:`merge` refuses a model that is not the delta's base
(same shapes, other weights), or one the delta is already merged into (a second merge would add
it twice), and :func:`unmerge` one it is not merged into; ``force=True`` (``--force``) overrides.
Folders written before the fingerprint still load, with a warning that nothing can be checked.

Command line, merging into a saved model folder::

    python -m sparsity.delta_dir merge BASE_FOLDER DELTA_FOLDER OUT_FOLDER [--force]
    python -m sparsity.delta_dir unmerge MERGED_FOLDER DELTA_FOLDER OUT_FOLDER [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsity import delta as delta_lib
from sparsity.eligibility import input_axes
from sparsity.validate import check_module, named_params

FORMAT = "subnet-lab/sparse-delta-dir"
VERSION = "1"
CONFIG = "sparse_delta.json"
WEIGHTS = "delta.safetensors"


@dataclass(frozen=True)
class DeltaDir:
    """A loaded delta folder: its description (``sparse_delta.json``) and the delta."""

    info: dict[str, Any]
    delta: delta_lib.SparseDelta

    @property
    def base_model(self) -> str | None:
        """The model id or path the delta was taken from, as recorded."""
        return self.info.get("base_model")


def _model_info(model: nn.Module) -> tuple[str | None, str | None, list[str]]:
    """(name or path, model type, architectures) of a Hugging Face model; Nones for a plain module."""
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or None
    return name, getattr(config, "model_type", None), list(getattr(config, "architectures", None) or [])


def _entry_hash(values: torch.Tensor) -> str:
    """SHA-256 of a 1-D tensor's bytes (the bits of each value, in its dtype)."""
    data = values.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()


def _overall_hash(per_tensor: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(per_tensor, sort_keys=True).encode()).hexdigest()


def _at_entries(param: torch.Tensor, t: delta_lib.TensorDelta) -> torch.Tensor:
    return param.detach().reshape(-1)[t.indices.to(device=param.device, dtype=torch.long)]


def fingerprint(delta: delta_lib.SparseDelta, model: nn.Module) -> dict[str, Any]:
    """Hashes of the values at the delta's entries of the base and of the fine-tuned ``model`` the
    delta was taken on (the base's are ``theta - values``, exact in float64: ``sparsity.delta``)."""
    params = named_params(model)
    base, merged = {}, {}
    for n, t in delta.tensors.items():
        tuned = _at_entries(params[n], t)
        ref = (tuned.double() - t.values.to(tuned.device)).to(tuned.dtype)
        if not torch.equal((ref.double() + t.values.to(tuned.device)).to(tuned.dtype), tuned):
            raise ValueError(f"'{n}': the model is not the fine-tuned model the delta was taken on "
                             "(its values minus the delta's do not add back to them)")
        base[n], merged[n] = _entry_hash(ref), _entry_hash(tuned)
    return {"hash": "sha256 of the values at the delta's entries, in the parameter's dtype",
            "base": base, "merged": merged, "base_all": _overall_hash(base), "merged_all": _overall_hash(merged)}


def describe_delta(delta: delta_lib.SparseDelta, model: nn.Module, *, base_model: str | None = None,
                   criterion: str | None = None, budget: str | None = None) -> dict[str, Any]:
    """The ``sparse_delta.json`` content for ``delta`` taken on ``model`` (the fine-tuned model)."""
    params = named_params(model)
    axes = input_axes(model)
    missing = [n for n in delta.tensors if n not in params]
    if missing:
        raise ValueError(f"delta has tensors the model does not have: {', '.join(missing)}")
    name, model_type, architectures = _model_info(model)
    dtypes = sorted({str(params[n].dtype).removeprefix("torch.") for n in delta.tensors})
    return {
        "format": FORMAT,
        "version": VERSION,
        "base_model": base_model if base_model is not None else name,
        "model_type": model_type,
        "architectures": architectures,
        "criterion": criterion,
        "budget": budget,
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "entries": sum(t.indices.numel() for t in delta.tensors.values()),
        "parameters": sum(p.numel() for p in params.values()),
        "tensors": {
            n: {"shape": list(t.shape), "dtype": str(params[n].dtype).removeprefix("torch."),
                "input_axis": axes.get(n), "entries": t.indices.numel()}
            for n, t in delta.tensors.items()
        },
        "fingerprint": fingerprint(delta, model),
    }


def save(path: str | os.PathLike[str], delta: delta_lib.SparseDelta, model: nn.Module, *,
         base_model: str | None = None, criterion: str | None = None, budget: str | None = None) -> Path:
    """Write ``delta`` (taken on ``model``, the fine-tuned model) as a delta folder; returns the folder.

    ``base_model`` defaults to the model's ``config._name_or_path`` (the id or folder it was
    loaded from). An existing folder is written into only if it is empty or already a delta folder.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"path: {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / CONFIG).is_file():
        raise FileExistsError(f"path: {folder} is a non-empty folder that is not a delta folder; pick another")
    info = describe_delta(delta, check_module(model), base_model=base_model, criterion=criterion, budget=budget)
    folder.mkdir(parents=True, exist_ok=True)
    delta_lib.save_delta(delta, folder / WEIGHTS)
    (folder / CONFIG).write_text(json.dumps(info, indent=2) + "\n")
    return folder


def save_run(run: Any, path: str | os.PathLike[str], *, base_model: str | None = None) -> Path:
    """Write the delta of a ``sparsity.wrap.SparseModel`` (what ``sparsify`` returned) with its
    criterion and budget recorded."""
    from sparsity.registry import get_criterion
    from sparsity.wrap import SparseModel

    if not isinstance(run, SparseModel):
        raise TypeError(f"run must be the SparseModel sparsify returned, got {type(run).__name__}")
    return save(path, run.delta(), run.model, base_model=base_model,
                criterion=get_criterion(run.config.criterion).name, budget=run.config.budget)


def load(path: str | os.PathLike[str]) -> DeltaDir:
    """Read a delta folder written by :func:`save`; the description and the tensors must agree."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"path: {folder} is not a folder" if folder.exists() else f"path: {folder} does not exist")
    for file in (CONFIG, WEIGHTS):
        if not (folder / file).is_file():
            raise FileNotFoundError(f"path: {folder} has no {file}: not a sparse delta folder")
    try:
        info = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / CONFIG} is not valid JSON ({err})") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG} has no format '{FORMAT}': not a sparse delta folder")
    if info.get("version") != VERSION:
        raise ValueError(f"{folder / CONFIG} is version {info.get('version')!r}; this code reads '{VERSION}'")
    _check_description(folder / CONFIG, info)
    delta = delta_lib.load_delta(folder / WEIGHTS)
    described = info["tensors"]
    if set(described) != set(delta.tensors):
        odd = sorted(set(described) ^ set(delta.tensors))
        raise ValueError(f"{folder}: {CONFIG} and {WEIGHTS} name different tensors ({', '.join(odd[:5])})")
    for n, t in delta.tensors.items():
        if list(t.shape) != described[n]["shape"]:
            raise ValueError(f"{folder}: '{n}' has shape {list(t.shape)} in {WEIGHTS}, {described[n]['shape']} in {CONFIG}")
    if "fingerprint" not in info:
        warnings.warn(f"{folder / CONFIG} has no fingerprint of its base (written by an older version): merge and "
                      "unmerge cannot check that a model is the delta's base or not merged twice", UserWarning,
                      stacklevel=2)
    else:
        _check_fingerprint_entry(folder / CONFIG, info["fingerprint"], set(described))
    return DeltaDir(info, delta)


def _is_dtype(name: object) -> bool:
    return isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype)


def _check_description(file: Path, info: dict[str, Any]) -> None:
    """``sparse_delta.json``'s per-tensor entries and dtype, or a ValueError naming the file and field."""
    tensors = info.get("tensors")
    if not isinstance(tensors, dict):
        raise ValueError(f"{file}: 'tensors' must map each tensor name to its description, got "
                         f"{type(tensors).__name__}")
    for n, t in tensors.items():
        if not isinstance(t, dict):
            raise ValueError(f"{file}: tensors['{n}'] must be an object, got {type(t).__name__}")
        shape = t.get("shape")
        if not isinstance(shape, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in shape):
            raise ValueError(f"{file}: tensors['{n}'].shape must be a list of ints, got {shape!r}")
        if not _is_dtype(t.get("dtype")):
            raise ValueError(f"{file}: tensors['{n}'].dtype must name a torch dtype (e.g. 'float32'), "
                             f"got {t.get('dtype')!r}")
        axis = t.get("input_axis")
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
            raise ValueError(f"{file}: tensors['{n}'].input_axis must be an int or null, got {axis!r}")
    dtype = info.get("dtype")
    if not (_is_dtype(dtype) or (isinstance(dtype, list) and all(_is_dtype(d) for d in dtype))):
        raise ValueError(f"{file}: 'dtype' must name a torch dtype or list them, got {dtype!r}")


def _check_fingerprint_entry(file: Path, fp: object, names: set[str]) -> None:
    if not isinstance(fp, dict) or not all(
        isinstance(fp.get(side), dict) and set(fp[side]) == names and all(isinstance(h, str) for h in fp[side].values())
        for side in ("base", "merged")
    ):
        raise ValueError(f"{file}: 'fingerprint' must hold 'base' and 'merged' hashes for every tensor of the delta")


def check_base(model: nn.Module, loaded: DeltaDir, action: str) -> None:
    """Refuse to ``merge`` into a model that is not the delta's base (or already holds the delta), or
    to ``unmerge`` from one that does not hold it, by the fingerprint of the values at the delta's
    entries; nothing to check for a folder written without one."""
    fp = loaded.info.get("fingerprint")
    if fp is None:
        return
    params = named_params(model)
    want, other = ("base", "merged") if action == "merge" else ("merged", "base")
    off, other_side = [], []
    for n, t in loaded.delta.tensors.items():
        h = _entry_hash(_at_entries(params[n], t))
        if h != fp[want][n]:
            off.append(n)
            if h == fp[other][n]:
                other_side.append(n)
    if not off:
        return
    base = loaded.base_model or "its base model"
    override = "force=True (--force) overrides this check"
    if len(other_side) == len(off) and action == "merge":
        raise ValueError(f"the delta is already merged into this model ({len(off)} of {len(fp[want])} tensors hold "
                         f"the merged values, e.g. '{off[0]}'): a second merge would add it twice; {override}")
    if len(other_side) == len(off):
        raise ValueError(f"the delta is not merged into this model ({len(off)} of {len(fp[want])} tensors hold "
                         f"the base values, e.g. '{off[0]}'): nothing to unmerge; {override}")
    what = "the delta's base" if action == "merge" else "the delta's base with the delta merged"
    raise ValueError(f"this model is not {what} ({base}): '{off[0]}' holds other values at the delta's entries "
                     f"({len(off)} of {len(fp[want])} tensors differ); {override}")


def check_compatible(model: nn.Module, loaded: DeltaDir) -> None:
    """Refuse, before anything is written, a model the delta was not taken on: another model
    type, a missing tensor, another shape, dtype or input axis (Conv1D ``[in, out]`` vs Linear)."""
    params = named_params(model)
    axes = input_axes(model)
    _, model_type, _ = _model_info(model)
    want = loaded.info.get("model_type")
    base = loaded.base_model or "its base model"
    if want is not None and model_type is not None and want != model_type:
        raise ValueError(f"the delta is for a '{want}' model ({base}), this model is '{model_type}'")
    for n, t in loaded.info["tensors"].items():
        if n not in params:
            raise ValueError(f"the delta changes '{n}', which this model does not have: it is for {base}")
        p = params[n]
        if list(p.shape) != t["shape"]:
            raise ValueError(f"the delta's '{n}' has shape {tuple(t['shape'])}, this model's has {tuple(p.shape)}: "
                             f"it is for {base}")
        dtype = str(p.dtype).removeprefix("torch.")
        if dtype != t["dtype"]:
            raise ValueError(f"the delta's '{n}' was taken in {t['dtype']}, this model's is {dtype}: load the base "
                             f"model in {t['dtype']} (merging in another precision would not give the fine-tuned bits)")
        if axes.get(n) != t["input_axis"]:
            raise ValueError(f"the delta's '{n}' has its input along axis {t['input_axis']}, this model's along "
                             f"{axes.get(n)}: a Conv1D [in, out] / Linear [out, in] mismatch")


def _as_loaded(delta: DeltaDir | str | os.PathLike[str]) -> DeltaDir:
    return delta if isinstance(delta, DeltaDir) else load(delta)


@torch.no_grad()
def merge(model: nn.Module, delta: DeltaDir | str | os.PathLike[str], *, force: bool = False) -> nn.Module:
    """Add the delta (a folder or a loaded :class:`DeltaDir`) into ``model`` in place; returns it.
    ``model`` must be the delta's base (its fingerprint, :func:`check_base`) unless ``force``."""
    loaded = _as_loaded(delta)
    check_compatible(check_module(model), loaded)
    if not force:
        check_base(model, loaded, "merge")
    delta_lib.merge_delta(model, loaded.delta)
    return model


@torch.no_grad()
def unmerge(model: nn.Module, delta: DeltaDir | str | os.PathLike[str], *, force: bool = False) -> nn.Module:
    """Take the delta back out of a merged ``model`` in place (exactly: the float64 difference
    ``theta - values`` is the reference's value); returns it. ``model`` must hold the delta merged
    (its fingerprint, :func:`check_base`) unless ``force``."""
    loaded = _as_loaded(delta)
    check_compatible(check_module(model), loaded)
    if not force:
        check_base(model, loaded, "unmerge")
    negated = {n: delta_lib.TensorDelta(t.shape, t.indices, -t.values) for n, t in loaded.delta.tensors.items()}
    delta_lib.merge_delta(model, delta_lib.SparseDelta(negated))
    return model


def main(argv: list[str] | None = None) -> None:
    """``merge`` / ``unmerge`` a delta folder into a saved Hugging Face model folder, written to OUT."""
    parser = argparse.ArgumentParser(prog="python -m sparsity.delta_dir", description=main.__doc__)
    parser.add_argument("action", choices=("merge", "unmerge"), help="add the delta to the model, or take it off")
    parser.add_argument("model", help="a model folder saved with save_pretrained")
    parser.add_argument("delta", help="a sparse delta folder (sparsity.delta_dir.save)")
    parser.add_argument("out", help="where to save the result (save_pretrained); must not exist yet")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model whose code lives in its folder (config.json auto_map)")
    parser.add_argument("--force", action="store_true",
                        help="merge / unmerge even if the model's values at the delta's entries are not the "
                             "recorded base's (merge) or merged model's (unmerge)")
    args = parser.parse_args(argv)
    from sparsity.hf import load_causal_lm, model_folder

    model_folder(args.model, "model")
    if Path(args.out).exists():
        parser.error(f"out: {args.out} already exists; pick a new folder")
    loaded = load(args.delta)
    dtype = loaded.info.get("dtype")
    model = load_causal_lm(args.model, trust_remote_code=args.trust_remote_code,
                           dtype=getattr(torch, dtype) if isinstance(dtype, str) else None)
    (merge if args.action == "merge" else unmerge)(model, loaded, force=args.force)
    model.save_pretrained(args.out)
    print(f"{args.action}d {loaded.info['entries']:,} entries of {len(loaded.delta.tensors)} tensors "
          f"into {args.model} -> {args.out}")


if __name__ == "__main__":
    main()
