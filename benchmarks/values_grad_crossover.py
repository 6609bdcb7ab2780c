"""Where does the values-only gradient pay? The sampled product against the dense one, by density, width and tokens.

``sparsity.values_grad`` computes a linear layer's weight gradient at the k selected entries
only: a sampled dense-dense matmul (SDDMM, our CPU kernel in ``sparsity.kernels.sparse_cpu``)
with ``k * tokens`` multiply-adds, instead of the dense ``grad_out^T @ x`` (``out * in * tokens``,
a BLAS matmul at a much higher rate per multiply-add) and a gather. Which is faster depends on
the density, the layer's width and the tokens per batch; this script times both on random
inputs, interleaved (sampled, dense, sampled, ...) with medians, and prints the ratio
``sampled / dense`` per case and the crossover: the largest measured density where the sampled
product is still faster. ``values_grad.SAMPLED_MAX_DENSITY``, the rule ``SparseConfig(values_grad=None)``
follows, comes from this table.

Layers are ``(4 d, d)`` and ``(d, 4 d)`` (a transformer's MLP matrices) at widths ``d``; the
``small`` GPT preset has ``d = 256``. ``LAB_FAST=1``: two small cases, a few repetitions. Run::

    PYTHONPATH=. python -m benchmarks.values_grad_crossover [--threads T] [--reps N] [--out PATH]

``--out PATH`` also writes ``PATH`` with ``.json`` (one object per case).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from benchmarks.steadiness import TimingSession
from sparsity import values_grad
from sparsity.cli_args import output_file, positive_int
from sparsity.fastmode import fast_mode
from sparsity.kernels import sparse_cpu
from sparsity.sweep import command_line, emit, load_line, machine_lines, markdown_table

DENSITIES = (0.01, 0.02, 0.05, 0.10, 0.20, 0.40)
WIDTHS, FAST_WIDTHS = (128, 256, 512), (64,)
TOKENS, FAST_TOKENS = (64, 512, 2048), (32, 256)


@dataclass(frozen=True)
class Case:
    """One layer shape, token count and density, with both products' median times."""

    n_out: int
    n_in: int
    tokens: int
    density: float
    sampled_ms: float
    dense_ms: float

    @property
    def ratio(self) -> float:
        return self.sampled_ms / self.dense_ms


def _time_into(fn: Callable[[], object], times: list[float]) -> None:
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)


def measure_case(n_out: int, n_in: int, tokens: int, density: float, reps: int) -> Case:
    """Both products of one case, interleaved ``reps`` times after one warm-up each."""
    gen = torch.Generator().manual_seed(0)
    g, x = torch.randn(tokens, n_out, generator=gen), torch.randn(tokens, n_in, generator=gen)
    k = max(1, round(density * n_out * n_in))
    flat = torch.randperm(n_out * n_in, generator=gen)[:k].sort().values.int()
    products = {how: (lambda how=how: values_grad.selected_weight_grad(g, x, flat, how)) for how in ("sampled", "dense")}
    times: dict[str, list[float]] = {how: [] for how in products}
    for fn in products.values():
        fn()
    gc.disable()
    try:
        for _ in range(reps):
            for how, fn in products.items():
                _time_into(fn, times[how])
    finally:
        gc.enable()
    return Case(n_out, n_in, tokens, density, statistics.median(times["sampled"]), statistics.median(times["dense"]))


def crossovers(cases: list[Case]) -> dict[tuple[int, int, int], float | None]:
    """(out, in, tokens) -> the largest measured density at which the sampled product was faster (None: never)."""
    out: dict[tuple[int, int, int], float | None] = {}
    for c in cases:
        key = (c.n_out, c.n_in, c.tokens)
        out.setdefault(key, None)
        if c.ratio < 1.0 and (out[key] is None or c.density > out[key]):  # type: ignore[operator]
            out[key] = c.density
    return out


def format_report(cases: list[Case], command: str, loads: tuple[str, str], reps: int, threads: int) -> str:
    table = markdown_table(
        ["layer (out x in)", "tokens", "density", "sampled ms", "dense ms", "sampled / dense"],
        [[f"{c.n_out} x {c.n_in}", f"{c.tokens:,}", f"{c.density:.0%}", f"{c.sampled_ms:.3f}", f"{c.dense_ms:.3f}",
          f"{c.ratio:.2f}"] for c in cases], "lrrrrr")
    cross = crossovers(cases)
    lines = [
        "# Values-only gradient: the sampled product (SDDMM kernel) vs the dense one, by density, width and tokens",
        "",
        *machine_lines(command),
        load_line(loads, threads),
        f"- each case: `values_grad.selected_weight_grad(g, x, flat, how)` for how = sampled and dense, "
        f"interleaved, median of {reps}; random inputs and selection (seed 0)",
        "- GPU: not run (no GPU in this session; the sampled product is a CPU kernel)",
        "",
        table,
        "",
        "**Crossover** (the largest measured density where the sampled product was faster):",
        "",
        *[f"- {o} x {i}, {t:,} tokens: " + ("never" if d is None else f"{d:.0%}") for (o, i, t), d in cross.items()],
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    fast = fast_mode()
    p = argparse.ArgumentParser(prog="python -m benchmarks.values_grad_crossover",
                                description="Sampled vs dense weight-gradient product: where the values-only gradient pays.")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default %(default)s)")
    p.add_argument("--reps", type=positive_int, default=3 if fast else 9,
                   help="timed repetitions per case (default %(default)s)")
    p.add_argument("--out", type=output_file, default=None, help="also write the report (and .json beside it)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if sparse_cpu.load() is None:
        print("the CPU kernel could not be built: the sampled product here is the gather fallback", file=sys.stderr)
    fast = fast_mode()
    with TimingSession(args.threads) as session:
        cases = [measure_case(n_out, n_in, tokens, density, args.reps)
                 for d in (FAST_WIDTHS if fast else WIDTHS) for n_out, n_in in ((4 * d, d), (d, 4 * d))
                 for tokens in (FAST_TOKENS if fast else TOKENS) for density in DENSITIES]
        session.finish()
        loads = session.loads
        report = format_report(cases, command_line("benchmarks.values_grad_crossover", argv), loads, args.reps,
                               args.threads)
    emit(report, args.out)
    if args.out is not None:
        rows = [{**asdict(c), "ratio": round(c.ratio, 6), "threads": args.threads, "load_1min_start": loads[0],
                 "load_1min_end": loads[1]} for c in cases]
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
