"""What does 2:4 buy on a GPU? Dense vs 2:4 linear layers, and a GPT's inference throughput.

Sparse tensor cores (compute capability >= 8.0) skip the zero half of a 2:4 weight: at
most 2x the dense matmul throughput, less where reading activations or launching the
kernel dominates. This script measures it instead of assuming it:

1. **Linear layers**: ``y = x @ W.T`` with ``W`` of shape ``[n, n]`` and ``[4n, n]`` (an MLP's
   up-projection), n from 1024 to 16384, ``tokens`` rows of ``x`` from 1 to 8192, in bf16
   and fp16. Dense ``F.linear`` against each 2:4 route of ``SemiStructuredLinear``:
   PyTorch's semi-structured tensors on cuSPARSELt and on CUTLASS (the backend choice is
   this measurement), and our Triton compressed-format kernel (up to 1024 tokens: it is
   the small-batch kernel). The forward plus backward of a training step is timed for the
   dense layer and the 2:4 layer on its default route.
2. **End-to-end GPT inference** (``scaleup.gpt``, preset ``mid`` in bf16): tokens/s of a
   forward pass, dense vs 2:4 MLPs vs 2:4 in every block matrix, at a prefill shape and
   at a many-sequences-one-token shape (the model has no KV cache).

Times are CUDA-event medians after warm-up; every ratio compares numbers from one run.
The training step reuses the compressed weight; a real step also recompresses it after
each optimizer update (``SemiStructuredLinear`` caches by the weight's version), which
this table does not include.
Results: ``benchmarks/results/semistructured-<device>.md`` and a ``.png`` of the speedups;
:func:`read_results` reads a results file back into rows (Lesson 8 draws them).

Without a CUDA GPU the script stops with a message. ``--dry-run`` runs the same code on
the CPU on tiny shapes through the dense masked reference (that checks the code path, not
the speed; the numbers it prints are not a GPU measurement and are never written to
benchmarks/results unless ``--out`` says so).

Run from the repository root::

    PYTHONPATH=. python -m benchmarks.semistructured [--quick] [--out PATH]
    PYTHONPATH=. python -m benchmarks.semistructured --dry-run
"""

from __future__ import annotations

import argparse
import copy
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sparsity import two_four_convert, two_four_linear
from sparsity import sweep as report
from sparsity.cli_args import output_file, positive_int

RESULTS = Path(__file__).resolve().parent / "results"

SIZES = (1024, 2048, 4096, 8192, 16384)
TOKENS = (1, 16, 128, 1024, 8192)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
ROUTES = ("cusparselt", "cutlass", "triton")
TRITON_MAX_TOKENS = 1024
"""Our Triton kernel is the small-batch route; larger batches belong to the tensor-core libraries."""

DRY_SIZES, DRY_TOKENS = (16, 64), (1, 8)
GPT_VOCAB, GPT_BLOCK = 8192, 512
GPT_SHAPES = {"prefill 8 x 512": (8, 512), "256 sequences x 1 token": (256, 1)}
DRY_GPT_SHAPES = {"prefill 2 x 16": (2, 16), "8 sequences x 1 token": (8, 1)}
DRY_RUN_NOTE = ("**Dry run on the CPU**: every 2:4 layer ran the dense masked reference. These numbers check "
                "that the script works; they are not a measurement of sparse tensor cores.")
GPT_VARIANTS = {"dense": None, "2:4 MLPs": ["blocks.*.mlp.*"], "2:4 everywhere": ["blocks.*"]}


@dataclass(frozen=True)
class LinearRow:
    dtype: str
    shape: tuple[int, int]
    tokens: int
    dense_ms: float
    sparse_ms: dict[str, float | None]
    dense_train_ms: float
    sparse_train_ms: float | None
    train_route: str


@dataclass(frozen=True)
class GptRow:
    shape: str
    variant: str
    tokens_per_s: float


def timer(device: torch.device, warmup: int, reps: int) -> Callable[[Callable[[], object]], float]:
    """Median milliseconds of ``fn()`` (CUDA events on a GPU, the wall clock on a CPU)."""

    def measure(fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)

    return measure


def _layer(n_out: int, n_in: int, dtype: torch.dtype, device: torch.device) -> two_four_linear.SemiStructuredLinear:
    """A bias-free 2:4 layer (magnitude mask of PyTorch's default init, seed 0)."""
    torch.manual_seed(0)
    return two_four_linear.SemiStructuredLinear.from_linear(nn.Linear(n_in, n_out, bias=False, device=device, dtype=dtype))


def bench_linear(dtype_name: str, shape: tuple[int, int], tokens: int, device: torch.device,
                 measure: Callable, routes: tuple[str, ...]) -> LinearRow:
    """Dense vs every available 2:4 route for one weight shape and batch, forward and training step."""
    dtype = DTYPES[dtype_name]
    n_out, n_in = shape
    x = torch.randn(tokens, n_in, device=device, dtype=dtype)
    base = _layer(n_out, n_in, dtype, device)  # the masked weight every route shares
    dense_w = (base.weight * base.mask).detach()
    with torch.no_grad():
        dense_ms = measure(lambda: F.linear(x, dense_w))
        sparse_ms: dict[str, float | None] = {}
        for route in routes:
            if route == "triton" and tokens > TRITON_MAX_TOKENS:
                sparse_ms[route] = None
                continue
            layer = copy.deepcopy(base)
            try:
                layer.set_kernel("triton" if route == "triton" else "torch", "auto" if route == "triton" else route)
                layer(x)
            except (ValueError, RuntimeError) as err:  # a backend this build or shape does not have
                print(f"  {dtype_name} {shape} x{tokens}: {route} unavailable ({err})", file=sys.stderr)
                sparse_ms[route] = None
                continue
            sparse_ms[route] = measure(lambda layer=layer: layer(x))
    # A training step: forward + backward to input and weight.
    w_dense = dense_w.clone().requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    grad = torch.randn(tokens, n_out, device=device, dtype=dtype)

    def dense_step() -> None:
        F.linear(xg, w_dense).backward(grad)

    train_layer = copy.deepcopy(base)
    train_route = train_layer.route(x)[0]

    def sparse_step() -> None:
        train_layer(xg).backward(grad)

    dense_train = measure(dense_step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", two_four_linear.FastPathNotice)
        sparse_train = measure(sparse_step)
    return LinearRow(dtype_name, shape, tokens, dense_ms, sparse_ms, dense_train, sparse_train, train_route)


def bench_gpt(device: torch.device, measure: Callable, preset: str, shapes: dict[str, tuple[int, int]],
              dtype: torch.dtype) -> list[GptRow]:
    """Forward tokens/s of a GPT preset, dense vs 2:4 MLPs vs 2:4 in every block matrix."""
    from scaleup import gpt

    rows = []
    base = gpt.build(preset, vocab_size=GPT_VOCAB, block_size=GPT_BLOCK, seed=0)
    for variant, modules in GPT_VARIANTS.items():
        model = copy.deepcopy(base)
        if modules is not None:
            two_four_convert.sparsify_24(model, modules=modules)
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        if modules is not None:
            two_four_convert.to_inference_(model)
        for label, (batch, t) in shapes.items():
            idx = torch.randint(0, GPT_VOCAB, (batch, t), device=device)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", two_four_linear.FastPathNotice)
                ms = measure(lambda model=model, idx=idx: model(idx))
            rows.append(GptRow(label, variant, batch * t / (ms / 1e3)))
    return rows


def _ratio(dense: float, sparse: float | None) -> str:
    return "" if sparse is None else f"{dense / sparse:.2f}x"


def format_linear(rows: list[LinearRow], routes: tuple[str, ...]) -> str:
    columns = ["dtype", "weight", "tokens", "dense ms"] + [f"{r} {c}" for r in routes for c in ("ms", "speedup")]
    columns += ["train dense ms", "train 2:4 ms", "train speedup", "train route"]
    cells = []
    for r in rows:
        line: list[object] = [r.dtype, f"{r.shape[0]}x{r.shape[1]}", r.tokens, f"{r.dense_ms:.4f}"]
        for route in routes:
            ms = r.sparse_ms.get(route)
            line += ["" if ms is None else f"{ms:.4f}", _ratio(r.dense_ms, ms)]
        line += [f"{r.dense_train_ms:.4f}", "" if r.sparse_train_ms is None else f"{r.sparse_train_ms:.4f}",
                 _ratio(r.dense_train_ms, r.sparse_train_ms), r.train_route]
        cells.append(line)
    return report.markdown_table(columns, cells, "ll" + "r" * (len(columns) - 3) + "l")


def format_gpt(rows: list[GptRow]) -> str:
    dense = {r.shape: r.tokens_per_s for r in rows if r.variant == "dense"}
    cells = [[r.shape, r.variant, f"{r.tokens_per_s:,.0f}", f"{r.tokens_per_s / dense[r.shape]:.2f}x"] for r in rows]
    return report.markdown_table(["shape", "variant", "tokens/s", "vs dense"], cells, "llrr")


def best_speedups(rows: list[LinearRow]) -> dict[str, float]:
    """Per route, the largest forward speedup over dense at the largest weight measured."""
    largest = max(r.shape[0] * r.shape[1] for r in rows)
    best: dict[str, float] = {}
    for r in rows:
        if r.shape[0] * r.shape[1] != largest:
            continue
        for route, ms in r.sparse_ms.items():
            if ms is not None:
                best[route] = max(best.get(route, 0.0), r.dense_ms / ms)
    return best


def speedup_figure(rows: list[LinearRow], routes: tuple[str, ...], title: str) -> Any:
    """Forward speedup over dense against tokens, one panel per dtype, one line per shape and route.

    A ``matplotlib.figure.Figure`` outside pyplot: the script saves it without a display, a
    notebook shows it with ``display(fig)``."""
    from matplotlib.figure import Figure

    dtypes = sorted({r.dtype for r in rows})
    fig = Figure(figsize=(6 * max(1, len(dtypes)), 4.5))
    axes = fig.subplots(1, max(1, len(dtypes)), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        for shape in sorted({r.shape for r in rows if r.dtype == dtype}):
            for route, style in zip(routes, ("-o", "--s", ":^")):
                pts = [(r.tokens, r.dense_ms / r.sparse_ms[route]) for r in rows
                       if r.dtype == dtype and r.shape == shape and r.sparse_ms.get(route)]
                if pts:
                    ax.plot(*zip(*pts), style, label=f"{shape[0]}x{shape[1]} {route}")
        ax.axhline(1.0, color="grey", linewidth=1)
        ax.axhline(2.0, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set(xlabel="tokens (rows of x)", ylabel="dense time / 2:4 time", title=f"{title}: {dtype} forward")
        ax.legend(fontsize="xx-small", ncol=2)
    fig.tight_layout()
    return fig


def weight_shapes(sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """Square weights [n, n], and MLP up-projections [4n, n] that stay within the largest size."""
    return [(n, n) for n in sizes] + [(4 * n, n) for n in sizes if 4 * n <= max(sizes)]


def result_files() -> list[Path]:
    """The committed GPU results (one per device), newest names sorted."""
    return sorted(RESULTS.glob("semistructured-*.md"))


def read_markdown_tables(path: Path) -> dict[str, list[dict[str, str]]]:
    """The markdown tables of a report (``sparsity.sweep.markdown_table``'s output), by the ``## ``
    heading above each: a list of ``{column: cell}`` rows."""
    tables: dict[str, list[dict[str, str]]] = {}
    heading, columns = "", None
    for line in Path(path).read_text().splitlines():
        if line.startswith("## "):
            heading, columns = line[3:].strip(), None
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if columns is None:
                columns = cells
            elif not set("".join(cells)) <= set("-: "):
                tables.setdefault(heading, []).append(dict(zip(columns, cells)))
        else:
            columns = None
    return tables


def _ms(cell: str) -> float | None:
    return float(cell) if cell else None


def read_results(path: Path) -> tuple[list[LinearRow], list[GptRow], tuple[str, ...]]:
    """A results file read back: its linear-layer rows, its GPT rows and the 2:4 routes it measured
    (the inverse of :func:`format_linear` and :func:`format_gpt`, to the precision they print)."""
    tables = read_markdown_tables(path)
    linear = next((rows for heading, rows in tables.items() if heading.startswith("Linear layer")), [])
    gpt = next((rows for heading, rows in tables.items() if heading.startswith("GPT")), [])
    columns = list(linear[0]) if linear else []
    routes = tuple(c[: -len(" ms")] for c in columns[4:] if c.endswith(" ms") and not c.startswith("train "))
    linear_rows = [
        LinearRow(r["dtype"], tuple(int(v) for v in r["weight"].split("x")), int(r["tokens"]), float(r["dense ms"]),
                  {route: _ms(r[f"{route} ms"]) for route in routes}, float(r["train dense ms"]),
                  _ms(r["train 2:4 ms"]), r["train route"])
        for r in linear
    ]
    gpt_rows = [GptRow(r["shape"], r["variant"], float(r["tokens/s"].replace(",", ""))) for r in gpt]
    return linear_rows, gpt_rows, routes


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'."""
    match = re.search(r"\b([A-Z]\d{2,4}[A-Z]?)\b", name)
    return (match.group(1) if match else re.sub(r"[^a-z0-9]+", "-", name.lower())).lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.semistructured", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU reference: checks the code only")
    parser.add_argument("--quick", action="store_true", help="sizes 1024 and 4096, tokens 16 and 1024")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=sorted(DTYPES),
                        help="weight dtypes to time (default: %(default)s)")
    parser.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES),
                        help="2:4 routes to time (default: %(default)s)")
    parser.add_argument("--no-gpt", action="store_true", help="skip the end-to-end GPT measurement")
    parser.add_argument("--gpt-preset", default="mid", help="the GPT of the end-to-end measurement (default: %(default)s)")
    parser.add_argument("--reps", type=positive_int, default=None, help="timed runs per measurement")
    parser.add_argument("--out", type=output_file, default=None, help="markdown path (default results/semistructured-<device>.md)")
    args = parser.parse_args(argv)

    cuda_ok = torch.cuda.is_available() and torch.cuda.get_device_capability() >= two_four_linear.MIN_CAPABILITY
    if not args.dry_run and not cuda_ok:
        why = "no CUDA device" if not torch.cuda.is_available() else "compute capability < 8.0 (no sparse tensor cores)"
        print(f"benchmarks.semistructured measures 2:4 on sparse tensor cores and needs a CUDA GPU of compute "
              f"capability >= 8.0 ({why} here). Nothing was measured. Use --dry-run to check the code on the CPU.",
              file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda_ok and not args.dry_run else "cpu")
    if args.dry_run:
        sizes, tokens, routes, reps, warmup = DRY_SIZES, DRY_TOKENS, (), args.reps or 2, 1
        gpt_preset, gpt_shapes, gpt_dtype, device_name = "micro", DRY_GPT_SHAPES, torch.float32, "CPU (dry run)"
        torch.set_num_threads(1)
    else:
        sizes, tokens = ((1024, 4096), (16, 1024)) if args.quick else (SIZES, TOKENS)
        routes, reps, warmup = tuple(args.routes), args.reps or 20, 5
        gpt_preset, gpt_shapes, gpt_dtype = args.gpt_preset, GPT_SHAPES, torch.bfloat16
        device_name = torch.cuda.get_device_name()
    measure = timer(device, warmup, reps)
    shapes = weight_shapes(sizes)
    rows = []
    for dtype_name in args.dtypes:
        for shape in shapes:
            for t in tokens:
                rows.append(bench_linear(dtype_name, shape, t, device, measure, routes))
                print(f"{dtype_name} {shape} x{t}: dense {rows[-1].dense_ms:.4f} ms", file=sys.stderr)
    gpt_rows = [] if args.no_gpt else bench_gpt(device, measure, gpt_preset, gpt_shapes, gpt_dtype)

    command = report.command_line("benchmarks.semistructured", argv if argv is not None else sys.argv[1:])
    cuda = f"CUDA {torch.version.cuda}, " if device.type == "cuda" else ""
    lines = [f"# 2:4 semi-structured sparsity: dense vs 2:4 ({device_name})", "", *report.machine_lines(command),
             f"- {cuda}median of {reps} timed runs after {warmup} warm-up runs", ""]
    if args.dry_run:
        lines += [DRY_RUN_NOTE, ""]
    lines += ["## Linear layer (forward; a training step = forward + backward)", "",
               format_linear(rows, routes), ""]
    if rows and routes:
        best = best_speedups(rows)
        lines += ["Best forward speedup at the largest weight: "
                   + ", ".join(f"{r} {s:.2f}x" for r, s in best.items()), ""]
    if gpt_rows:
        lines += [f"## GPT `{gpt_preset}` inference ({'float32' if args.dry_run else 'bf16'} forward)", "",
                   format_gpt(gpt_rows), ""]
    out = args.out
    if out is None and not args.dry_run:
        out = RESULTS / f"semistructured-{device_slug(device_name)}.md"
    report.emit("\n".join(lines), out)
    if out is not None and routes:
        speedup_figure(rows, routes, device_name).savefig(out.with_suffix(".png"), dpi=110)
    if out is not None:
        print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
