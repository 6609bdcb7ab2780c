"""How steady is this machine right now? The same fixed piece of work, timed again and again.

A timing benchmark compares methods by ratios of medians taken in interleaved rounds, so a
machine that slows down for everyone alike cancels out. One whose speed swings from one
second to the next does not, and on a shared virtual machine the host's other tenants take
cycles the guest does not see: with no other job running and no steal time reported, neither
the load average nor ``vmstat`` shows it (the lab's own machine: ``benchmarks/results``, the
steadiness lines). The step-time benchmarks therefore time this probe before and after their
own timing and print its spread beside their ratios: max/min near 1.0 is a steady machine,
and a ratio between two methods cannot be trusted to finer than what the probe swings by.
Each try times two kinds of work, because a host can take one without the other: small matmuls
that live in the cache (the cores' speed) and a copy far larger than the cache (the memory's
bandwidth, which other tenants share; the lab's training steps are partly bound by it). The two
can part ways: ``benchmarks/results`` and the README show an evening where only the copy slowed.

    python -m benchmarks.steadiness          # 30 tries, one line
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sparsity.sweep import busy_warning, load_average

SIZE = 256
REPEATS = 20
"""One try: ``REPEATS`` float32 matmuls of ``SIZE x SIZE`` on one torch thread (about 10 ms)."""
COPY_MIB = 32
"""And one copy of ``COPY_MIB`` MiB of float32 into another such tensor: together twice a big L3 cache."""


@dataclass(frozen=True)
class Steadiness:
    """The milliseconds of each try of the same work: the matmuls' and (where timed) the copy's."""

    times_ms: tuple[float, ...]
    copy_ms: tuple[float, ...] = ()

    @property
    def spread(self) -> float:
        """Slowest try of the matmuls over fastest: 1.0 on a perfectly steady machine."""
        return max(self.times_ms) / min(self.times_ms)

    @property
    def copy_spread(self) -> float | None:
        """Slowest copy over fastest, or None where no copy was timed."""
        return max(self.copy_ms) / min(self.copy_ms) if self.copy_ms else None

    def describe(self) -> str:
        def one(t: tuple[float, ...]) -> str:
            return f"{min(t):.1f} to {max(t):.1f} ms (median {statistics.median(t):.1f}; max/min {max(t) / min(t):.2f})"

        if not self.copy_ms:
            return f"{one(self.times_ms)} in {len(self.times_ms)} tries"
        return f"{one(self.times_ms)}, copying {COPY_MIB} MiB {one(self.copy_ms)}, in {len(self.times_ms)} tries"


def probe(tries: int = 30) -> Steadiness:
    """Time ``tries`` tries of the fixed work (:data:`SIZE`, :data:`REPEATS`, :data:`COPY_MIB`) on one torch thread."""
    if tries < 2:
        raise ValueError(f"tries must be at least 2 (a spread needs two times), got {tries}")
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(SIZE, SIZE, generator=gen), torch.randn(SIZE, SIZE, generator=gen)
    source = torch.ones(COPY_MIB * 2**20 // 4)
    target = torch.empty_like(source)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a @ b  # warm-up: the first call pays for allocation, the first copy for the target's pages
        target.copy_(source)
        times, copies = [], []
        for _ in range(tries):
            start = time.perf_counter()
            for _ in range(REPEATS):
                a @ b
            times.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            target.copy_(source)
            copies.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
    return Steadiness(tuple(times), tuple(copies))


def line(before: Steadiness, after: Steadiness) -> str:
    """The report line: the probe's spread before and after a benchmark's timing."""
    return (f"- machine steadiness (`benchmarks.steadiness`: {REPEATS} one-thread {SIZE} x {SIZE} matmuls and a copy "
            f"of {COPY_MIB} MiB per try, the same work each time): before the timing {before.describe()}, after it "
            f"{after.describe()}")


class TimingSession:
    """What every step-time benchmark does around its timing, as a ``with`` block.

    On entry: a warning on stderr when the 1-minute load average exceeds ``threads``
    (``sparsity.sweep.busy_warning``), torch set to ``threads`` CPU threads, the load average
    noted and, with ``tries``, the steadiness probed. :meth:`finish`, called when the timing
    is done (the report is written after it, still on ``threads``): the load average noted again
    (:attr:`loads`) and the probe's report line (:attr:`line`, None without ``tries``). On exit,
    even after an error: the caller's thread count back (tests call the benchmarks in-process).
    ``timed=False`` (a bytes-only run): no warning and no probe.
    """

    def __init__(self, threads: int, tries: int = 0, timed: bool = True) -> None:
        self.threads, self.tries, self.timed = threads, tries if timed else 0, timed
        self.loads: tuple[str, str] = ("n/a", "n/a")
        self.line: str | None = None

    def __enter__(self) -> TimingSession:
        if self.timed and (warning := busy_warning(self.threads)) is not None:
            print(warning, file=sys.stderr, flush=True)
        self._previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        self._load_start = load_average()
        self._before = probe(self.tries) if self.tries else None
        return self

    @property
    def lines(self) -> list[str]:
        """The probe's report line as the lines a report splices in: none without ``tries`` or before
        :meth:`finish`."""
        return [] if self.line is None else [self.line]

    def finish(self) -> None:
        self.loads = (self._load_start, load_average())
        if self._before is not None:
            self.line = line(self._before, probe(self.tries))

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._previous)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tries", type=int, default=30, help="how many times to time the same work (default: 30)")
    args = p.parse_args(argv)
    try:
        print(probe(args.tries).describe())
    except ValueError as e:
        p.error(f"--tries: {e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
