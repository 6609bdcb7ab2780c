"""Update-sparsity inspector: how much of a model a fine-tune moved, read from two checkpoints.

Mukherjee et al. 2025 (RL fine-tunes small subnetworks) measure *update sparsity*, the share
of entries with ``abs(after - before) <= 1e-5`` once both checkpoints are cast to bf16, and
find 70-95% of a model untouched by RL, layer norms not at all, and the updates nearly full
rank. This reads two Hugging Face folders (``model.safetensors`` or a sharded index) or two
safetensors files of the same model and reports overall and per-layer-type sparsity (layer
type: the tensor name with its layer numbers replaced by ``*``) and the rank of each matrix's
update, as a table or JSON::

    python -m sparsity.inspect BEFORE AFTER [--dtype bfloat16] [--tol 1e-5] [--json]
        [--rank-rows N | --no-rank] [--chunk-mb 16] [--params-only]

What is counted: by default every tensor of the files. ``--params-only`` counts what the
authors' ``check_sparsity`` counts, the model's ``named_parameters()``: buffers a checkpoint may
hold (an older Llama's ``rotary_emb.inv_freq``) and the second name of a tied weight are left
out (it needs two Hugging Face folders; the architecture is built from ``config.json`` on the
meta device, no weights). An entry equal in both files is unchanged, an infinity included; an
entry that is NaN in either file, or an infinity that changed, is *non-finite*: counted apart,
per tensor and overall, and left out of the sparsity (neither updated nor unchanged), and a
tensor holding one gets no rank.

Streaming: tensors are read one at a time and in row chunks of about ``--chunk-mb`` through
``safetensors.safe_open`` (opened per chunk, so no file stays mapped), so the pair can be far
larger than memory. What is held at once is two chunks, plus, for the rank of a matrix, its
update in float32 (or only ``--rank-rows`` sampled rows of it: a lower bound, and the memory
of those rows only). The numbers are those of ``sparsity.metrics.update_sparsity`` and
``update_rank`` on the same pair (the same cast, the same float32 difference).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from sparsity.metrics import update_rank
from sparsity.validate import check_nonnegative, check_positive_int, read_json_object

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


@dataclass(frozen=True)
class TensorReport:
    """One tensor: entries that did not move (``abs(delta) <= tol``) and, for a matrix, its update rank
    (``rank_rows``: how many rows it was computed on, all of them unless sampled)."""

    name: str
    layer_type: str
    shape: list[int]
    dtype: str
    entries: int
    unchanged: int
    rank: int | None
    rank_rows: int | None
    nonfinite: int = 0

    @property
    def sparsity(self) -> float | None:
        """Unchanged share of the finite entries (None when every entry is non-finite)."""
        return _share(self.unchanged, self.entries, self.nonfinite)


def _share(unchanged: int, entries: int, nonfinite: int) -> float | None:
    compared = entries - nonfinite
    if compared == 0:
        return None if entries else 1.0
    return unchanged / compared


@dataclass(frozen=True)
class Report:
    """The whole comparison: settings, every tensor, and overall / per-layer-type sparsity."""

    before: str
    after: str
    tol: float
    dtype: str | None
    tensors: list[TensorReport]

    params_only: bool = False

    @property
    def overall(self) -> float | None:
        """Share of all finite entries that did not move (None if none is finite)."""
        return _share(sum(t.unchanged for t in self.tensors), sum(t.entries for t in self.tensors), self.nonfinite)

    @property
    def nonfinite(self) -> int:
        """Entries NaN in either checkpoint, or an infinity that changed: left out of every sparsity."""
        return sum(t.nonfinite for t in self.tensors)

    def per_type(self) -> dict[str, dict[str, Any]]:
        """Layer type -> tensors, entries, non-finite entries, sparsity, and the update ranks of its matrices."""
        out: dict[str, dict[str, Any]] = {}
        for t in self.tensors:
            row = out.setdefault(t.layer_type, {"tensors": 0, "entries": 0, "unchanged": 0, "nonfinite": 0,
                                                "ranks": []})
            row["tensors"] += 1
            row["entries"] += t.entries
            row["unchanged"] += t.unchanged
            row["nonfinite"] += t.nonfinite
            if t.rank is not None:
                row["ranks"].append([t.rank, min(t.rank_rows or t.shape[0], t.shape[1])])
        for row in out.values():
            row["sparsity"] = _share(row["unchanged"], row["entries"], row["nonfinite"])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "tol": self.tol, "dtype": self.dtype,
                "params_only": self.params_only, "overall_sparsity": self.overall, "nonfinite": self.nonfinite,
                "per_type": self.per_type(), "tensors": [{**asdict(t), "sparsity": t.sparsity} for t in self.tensors]}

    def table(self) -> str:
        """Markdown table by layer type, then the overall line."""
        lines = ["| layer type | tensors | entries | update sparsity | update rank / full |",
                 "| --- | ---: | ---: | ---: | --- |"]
        for name, row in self.per_type().items():
            ranks = ", ".join(sorted({f"{r}/{full}" for r, full in row["ranks"]})) or "-"
            lines.append(f"| {name} | {row['tensors']} | {row['entries']:,} | {_fmt(row['sparsity'])} | {ranks} |")
        setting = f"abs(delta) <= {self.tol:g}" + (f" in {self.dtype}" if self.dtype else "")
        counted = "parameters" if self.params_only else "entries"
        lines.append(f"\noverall update sparsity ({setting}): {_fmt(self.overall)} over "
                     f"{sum(t.entries for t in self.tensors):,} {counted}")
        if self.nonfinite:
            where = ", ".join(f"{t.name} ({t.nonfinite:,})" for t in self.tensors if t.nonfinite)
            lines.append(f"non-finite entries (NaN in either checkpoint, or an infinity that changed), left out of "
                         f"the sparsity: {self.nonfinite:,}, in {where}")
        return "\n".join(lines)


def _fmt(share: float | None) -> str:
    return "-" if share is None else f"{share:.4f}"


def layer_type(name: str) -> str:
    """The name with layer numbers replaced by ``*``: ``model.layers.3.mlp.up_proj.weight`` ->
    ``model.layers.*.mlp.up_proj.weight``, so the same matrix of every block is one row."""
    return re.sub(r"(?<=\.)\d+(?=\.)", "*", name)


def checkpoint_files(path: str | os.PathLike[str], arg: str = "path") -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, for a file, a folder with ``model.safetensors``,
    or a sharded folder (``model.safetensors.index.json``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{arg}: {p} does not exist")
    if p.is_file():
        if p.suffix != ".safetensors":
            raise ValueError(f"{arg}: {p} is not a .safetensors file")
        return {k: p for k in _keys(p, arg)}
    index = p / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index, arg).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{arg}: {index} has no weight_map (tensor name -> shard file)")
        files = {k: p / v for k, v in weight_map.items()}
        missing = sorted({str(f) for f in files.values() if not f.is_file()})
        if missing:
            raise FileNotFoundError(f"{arg}: shards named in {index.name} are missing: {', '.join(missing)}")
        return files
    shards = sorted(p.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{arg}: {p} holds no .safetensors file (only safetensors checkpoints are read; "
                                "re-save the model with save_pretrained(safe_serialization=True))")
    files: dict[str, Path] = {}
    for shard in shards:
        files.update({k: shard for k in _keys(shard, arg)})
    return files


def _keys(file: Path, arg: str) -> list[str]:
    """The tensor names of a safetensors file, or a ValueError naming ``arg`` and the file."""
    try:
        with safe_open(file, framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{arg}: {file} is not a readable safetensors file ({err})") from None


def _model_type(path: Path, arg: str) -> str | None:
    config = path / "config.json"
    return read_json_object(config, arg).get("model_type") if path.is_dir() and config.is_file() else None


def _not_parameters(files: dict[str, Path], before: Path) -> set[str]:
    """The tensors of a checkpoint that ``named_parameters()`` would not count: the architecture's
    buffers, and the second name of a tied weight whose first name is in the files too."""
    from sparsity.hf import parameter_aliases

    if not before.is_dir():
        raise ValueError("--params-only needs two Hugging Face model folders (it reads the architecture from "
                         f"BEFORE's config.json); {before} is a file")
    buffers, aliases = parameter_aliases(before, "BEFORE")
    return {n for n in files if n in buffers or (n in aliases and aliases[n] in files)}


def _header(file: Path, key: str) -> tuple[list[int], str]:
    with safe_open(file, framework="pt") as f:
        sl = f.get_slice(key)
        return list(sl.get_shape()), sl.get_dtype()


def _chunks(file_a: Path, file_b: Path, key: str, shape: list[int], row_bytes: int,
            chunk_bytes: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(first row, rows of A, rows of B) in chunks along axis 0; each file is opened per chunk."""
    if not shape:
        with safe_open(file_a, framework="pt") as fa, safe_open(file_b, framework="pt") as fb:
            yield 0, fa.get_tensor(key).reshape(1), fb.get_tensor(key).reshape(1)
        return
    rows = max(1, chunk_bytes // max(1, row_bytes))
    for start in range(0, shape[0], rows):
        stop = min(shape[0], start + rows)
        with safe_open(file_a, framework="pt") as fa:
            a = fa.get_slice(key)[start:stop]
        with safe_open(file_b, framework="pt") as fb:
            b = fb.get_slice(key)[start:stop]
        yield start, a, b


def _sample_rows(name: str, n_rows: int, k: int) -> torch.Tensor:
    """``k`` sorted row indices out of ``n_rows``, seeded by the tensor's name (reproducible)."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randperm(n_rows, generator=g)[:k].sort().values


def compare_tensor(file_a: Path, file_b: Path, key: str, *, tol: float, dtype: torch.dtype | None, rank: bool,
                   rank_rows: int | None, chunk_bytes: int) -> TensorReport:
    """Stream one tensor of both files: count unchanged entries; for a matrix, its update rank."""
    shape, stored = _header(file_a, key)
    shape_b, stored_b = _header(file_b, key)
    if shape != shape_b:
        raise ValueError(f"tensor '{key}' has shape {shape} in BEFORE and {shape_b} in AFTER: not the same model")
    if stored != stored_b and dtype is None:
        raise ValueError(f"tensor '{key}' is {stored} in BEFORE and {stored_b} in AFTER: pass --dtype to compare "
                         "both in one precision")
    entries = 1
    for s in shape:
        entries *= s
    row_bytes = (entries // shape[0] if shape and shape[0] else 1) * 4
    matrix = rank and len(shape) == 2 and entries > 0 and DTYPES.get(stored, torch.bool).is_floating_point
    rows = None
    if matrix:
        rows = _sample_rows(key, shape[0], rank_rows) if rank_rows and rank_rows < shape[0] else None
        delta = torch.empty((shape[0] if rows is None else rows.numel(), shape[1]), dtype=torch.float32)
    unchanged = nonfinite = 0
    for start, a, b in _chunks(file_a, file_b, key, shape, row_bytes, chunk_bytes):
        if dtype is not None:
            a, b = a.to(dtype), b.to(dtype)
        diff = b.float() - a.float()
        finite = torch.isfinite(a) & torch.isfinite(b)
        same = (diff.abs() <= tol) | (a == b)
        unchanged += int(same.sum())
        nonfinite += int((~same & ~finite).sum())
        diff = torch.where(finite, diff, 0.0)
        if matrix and rows is None:
            delta[start:start + diff.shape[0]] = diff
        elif matrix:
            inside = (rows >= start) & (rows < start + diff.shape[0])
            delta[inside.nonzero().squeeze(1)] = diff[rows[inside] - start]
        del a, b, diff
    found = update_rank(delta) if matrix and not nonfinite else None
    return TensorReport(key, layer_type(key), shape, stored, entries, unchanged, found,
                        (delta.shape[0] if matrix and not nonfinite else None), nonfinite)


def inspect(before: str | os.PathLike[str], after: str | os.PathLike[str], *, tol: float = 1e-5,
            dtype: torch.dtype | None = None, rank: bool = True, rank_rows: int | None = None,
            chunk_bytes: int = 16 << 20, params_only: bool = False) -> Report:
    """Compare two checkpoints of the same model tensor by tensor (see the module doc);
    ``params_only`` counts only what ``named_parameters()`` counts."""
    tol = check_nonnegative(tol, "tol")
    check_positive_int(chunk_bytes, "chunk_bytes")
    if rank_rows is not None:
        check_positive_int(rank_rows, "rank_rows")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype (e.g. torch.bfloat16), got {dtype!r}")
    files_a, files_b = checkpoint_files(before, "BEFORE"), checkpoint_files(after, "AFTER")
    type_a, type_b = _model_type(Path(before), "BEFORE"), _model_type(Path(after), "AFTER")
    if type_a and type_b and type_a != type_b:
        raise ValueError(f"BEFORE is a '{type_a}' model and AFTER a '{type_b}' model: not the same architecture")
    if set(files_a) != set(files_b):
        only_a, only_b = sorted(set(files_a) - set(files_b)), sorted(set(files_b) - set(files_a))
        raise ValueError(f"BEFORE and AFTER hold different tensors (only in BEFORE: {only_a[:3]}, only in AFTER: "
                         f"{only_b[:3]}): not the same architecture")
    if params_only:
        if not Path(after).is_dir():
            raise ValueError(f"--params-only needs two Hugging Face model folders; AFTER {after} is a file")
        skip = _not_parameters(files_a, Path(before))
        files_a = {k: f for k, f in files_a.items() if k not in skip}
    reports = [compare_tensor(files_a[k], files_b[k], k, tol=tol, dtype=dtype, rank=rank, rank_rows=rank_rows,
                              chunk_bytes=chunk_bytes) for k in files_a]
    return Report(os.fspath(before), os.fspath(after), tol, None if dtype is None else str(dtype).removeprefix("torch."),
                  reports, params_only)


def main(argv: list[str] | None = None) -> None:
    """Print the update sparsity of AFTER against BEFORE (two HF folders or two safetensors files)."""
    parser = argparse.ArgumentParser(prog="python -m sparsity.inspect", description=main.__doc__)
    parser.add_argument("before", help="the checkpoint before fine-tuning (folder or .safetensors)")
    parser.add_argument("after", help="the checkpoint after fine-tuning, same model")
    parser.add_argument("--dtype", default=None, help="cast both to this dtype first (bfloat16: the RL paper's setting)")
    parser.add_argument("--tol", type=float, default=1e-5, help="abs(delta) <= tol counts as not updated (default: %(default)g)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--rank-rows", type=int, default=None, help="compute update ranks on N sampled rows")
    parser.add_argument("--no-rank", action="store_true", help="skip update ranks")
    parser.add_argument("--chunk-mb", type=int, default=16, help="rows are read in chunks of about this many MB (default: %(default)s)")
    parser.add_argument("--params-only", action="store_true",
                        help="count only what named_parameters() counts (no buffers, tied weights once), as the "
                             "RL-sparsity authors' check_sparsity does; needs two model folders")
    args = parser.parse_args(argv)
    dtype = None
    if args.dtype is not None:
        dtype = getattr(torch, args.dtype, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            parser.error(f"--dtype: {args.dtype!r} is not a floating torch dtype (e.g. bfloat16, float16, float32)")
    if args.rank_rows is not None and args.rank_rows < 1:
        parser.error(f"--rank-rows must be a positive int, got {args.rank_rows}")
    if args.chunk_mb < 1:
        parser.error(f"--chunk-mb must be a positive int, got {args.chunk_mb}")
    report = inspect(args.before, args.after, tol=args.tol, dtype=dtype, rank=not args.no_rank,
                     rank_rows=args.rank_rows, chunk_bytes=args.chunk_mb << 20, params_only=args.params_only)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())


if __name__ == "__main__":
    main()
