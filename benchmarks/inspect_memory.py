"""Peak memory of the update-sparsity inspector (``python -m sparsity.inspect``) on a ~1 GB pair.

The inspector streams a checkpoint pair tensor by tensor in row chunks, so its memory should be
set by the largest tensor, not by the files: the target is a peak under 2x the largest tensor.
This writes a synthetic pair of safetensors files (float32 matrices, 512 MiB each, largest
tensor 128 MiB; AFTER changes a planted 10% of every matrix's entries), runs the inspector in a
fresh process per mode and reads that process's peak resident set (``VmHWM``, reset with
``/proc/self/clear_refs`` after the imports, so the peak is the inspection's own), and checks
the reported sparsity against the planted count::

    PYTHONPATH=. python -m benchmarks.inspect_memory --out benchmarks/results/inspect_memory.md

Modes: ``no-rank`` (sparsity only), ``rank-rows`` (update ranks on 256 sampled rows) and
``full-rank`` (the whole update of each matrix in float32, then its SVD: more memory, said so).
``LAB_FAST=1`` shrinks the pair 64-fold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from sparsity.fastmode import fast_mode

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
MODES = {"no-rank": ["--no-rank"], "rank-rows": ["--rank-rows", "256"], "full-rank": []}
CHILD = """
import json, sys, time
import torch
from sparsity import inspect as inspector
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = status('VmRSS:')
open('/proc/self/clear_refs', 'w').write('5')
start = time.perf_counter()
report = inspector.inspect(sys.argv[1], sys.argv[2], tol=float(sys.argv[3]), **json.loads(sys.argv[4]))
seconds = time.perf_counter() - start
print(json.dumps({'base': base, 'peak': status('VmHWM:'), 'seconds': seconds,
                  'unchanged': sum(t.unchanged for t in report.tensors), 'overall': report.overall}))
"""


def write_pair(folder: Path, scale: int) -> dict[str, int]:
    """BEFORE/AFTER safetensors files; returns sizes and the planted count of unchanged entries."""
    g = torch.Generator().manual_seed(0)
    d = 4096 // scale
    shapes = {"embed.weight": (2 * d, d)}
    shapes |= {f"layers.{i}.{m}.weight": (d, d) for i in range(3) for m in ("attn", "mlp")}
    shapes |= {f"layers.{i}.norm.weight": (d,) for i in range(3)}
    before = {n: torch.randn(s, generator=g) * 0.02 for n, s in shapes.items()}
    after = {}
    for n, w in before.items():
        if w.ndim == 2:
            planted = torch.rand(w.shape, generator=g) < 0.1
            after[n] = torch.where(planted, w + torch.randn(w.shape, generator=g) * 1e-3, w)
        else:
            after[n] = w.clone()
    unchanged = sum(int(((after[n] - before[n]).abs() <= TOL).sum()) for n in before)
    save_file(before, folder / "before.safetensors")
    save_file(after, folder / "after.safetensors")
    largest = max(w.nbytes for w in before.values())
    total = sum(w.nbytes for w in before.values())
    return {"largest": largest, "file": total, "unchanged": unchanged, "entries": sum(w.numel() for w in before.values())}


def measure(folder: Path, mode: str) -> dict[str, float]:
    """Run the inspector in a fresh process in ``mode``; its peak memory above its post-import baseline."""
    kwargs = {"no-rank": {"rank": False}, "rank-rows": {"rank_rows": 256}, "full-rank": {}}[mode]
    cmd = [sys.executable, "-c", CHILD, str(folder / "before.safetensors"), str(folder / "after.safetensors"),
           str(TOL), json.dumps(kwargs)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, env={"PYTHONPATH": str(ROOT)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="write the markdown report here")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, among {', '.join(MODES)} (default: all)")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"--modes: unknown {unknown}; pick among {list(MODES)}")
    scale = 64 if fast_mode() else 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sizes = write_pair(folder, scale)
        rows = {m: measure(folder, m) for m in modes}
    mib = 1 << 20
    lines = [
        "# Update-sparsity inspector: peak memory on a checkpoint pair",
        "",
        f"- torch {torch.__version__}; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- command: `PYTHONPATH=. python -m benchmarks.inspect_memory{' --out ' + args.out if args.out else ''}`"
        + (" (LAB_FAST=1: 64x smaller)" if scale > 1 else ""),
        f"- pair: two float32 safetensors files of {sizes['file'] / mib:,.1f} MiB each "
        f"({2 * sizes['file'] / mib:,.1f} MiB together), largest tensor {sizes['largest'] / mib:,.1f} MiB; "
        f"AFTER changes a planted 10% of each matrix; tol {TOL:g}",
        "- peak: the inspecting process's VmHWM, reset after the imports, minus its resident set then",
        "",
        "| mode | seconds | peak above baseline MiB | peak / largest tensor | under 2x | sparsity matches planted |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for mode, r in rows.items():
        extra = r["peak"] - r["base"]
        ratio = extra / sizes['largest']
        lines.append(f"| {mode} | {r['seconds']:.1f} | {extra / mib:,.1f} | {ratio:.2f} | {'yes' if ratio < 2 else 'no'} "
                     f"| {'yes' if r['unchanged'] == sizes['unchanged'] else 'NO'} |")
    lines += ["", f"Planted: {sizes['unchanged']:,} of {sizes['entries']:,} entries unchanged "
              f"(update sparsity {sizes['unchanged'] / sizes['entries']:.4f})."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0 if all(r["unchanged"] == sizes["unchanged"] for r in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
