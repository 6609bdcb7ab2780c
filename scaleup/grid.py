"""The benchmark's grid of runs: which cells run in which phase, on which workers, stored by the driver.

Phase 1 is the learning-rate sweep: every (method, budget) x learning rate on the sweep seeds
(seed 0, or every seed with ``sweep_all_seeds``). Phase 2 runs the other seeds at each
(method, budget)'s chosen rate (``scaleup.results.best_lr``), which phase 1 decides. The cells
of a phase are independent: they go to a ``sparsity.executor.Executor`` together, and the
driver appends each row to the results store as it comes back. Serially, one (method, budget)
is completed at a time (its sweep, then its seeds), so a partial run already answers the first
methods; with several workers, a phase spans every (method, budget), to keep them all busy.

A worker builds its own :class:`~scaleup.bench_config.Setup` once (:func:`worker_setup`) from
the pretrained checkpoint the driver made; it never pretrains, so two workers never train the
same checkpoint at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from scaleup import bench_world as bw
from scaleup.bench_config import BenchConfig, Setup, prepare
from scaleup.finetune import run_cell
from scaleup.results import best_lr
from sparsity.executor import Executor
from sparsity.sweep import SweepStore

Pair = tuple[str, str]
"""(method, budget)."""

__all__ = ["Pair", "phases", "run_grid", "run_row", "total_runs", "worker_setup"]


def worker_setup(cfg: BenchConfig, cache_dir: str | Path | None, device: str) -> Setup:
    """A worker's Setup, from the cached pretrained checkpoint of its world (``BenchWorld.checkpoint``);
    a missing one is an error, never a pretraining."""
    path = bw.make_world(cfg, device).checkpoint(cache_dir)
    if path is not None and not path.exists():
        raise FileNotFoundError(f"no pretrained checkpoint {path} on this worker: the driver made it in its cache; "
                                "share that folder ($SUBNET_LAB_CACHE) with every worker, or copy the file there")
    return prepare(cfg, cache_dir=cache_dir, device=device, progress=False)


def run_row(setup: Setup, cell: dict[str, Any], progress: bool = False) -> dict[str, Any]:
    """One cell of the grid (method, budget, lr, seed) run on a Setup: its results row."""
    return run_cell(setup, cell["method"], cell["budget"], cell["lr"], cell["seed"], progress=progress)


def _cell(method: str, budget: str, lr: float, seed: int) -> dict[str, Any]:
    return {"method": method, "budget": budget, "lr": lr, "seed": seed}


def phases(cfg: BenchConfig, pairs: Sequence[Pair], store: SweepStore) -> Iterator[list[dict[str, Any]]]:
    """The cells of phase 1, then (once the caller has stored phase 1's rows) those of phase 2."""
    sweep_seeds = range(cfg.seeds) if cfg.sweep_all_seeds else [0]
    yield [_cell(m, b, lr, s) for m, b in pairs for lr in cfg.lrs(m) for s in sweep_seeds]
    if not cfg.sweep_all_seeds:
        rows = store.load()
        yield [_cell(m, b, best_lr(cfg, rows, m, b), s) for m, b in pairs for s in range(1, cfg.seeds)]


def total_runs(cfg: BenchConfig, pairs: Sequence[Pair]) -> int:
    """Runs in the whole grid: each pair's sweep, plus its other seeds unless the sweep covers every seed."""
    sweep = cfg.seeds if cfg.sweep_all_seeds else 1
    return sum(len(cfg.lrs(m)) * sweep + (0 if cfg.sweep_all_seeds else cfg.seeds - 1) for m, _ in pairs)


def run_grid(cfg: BenchConfig, pairs: Sequence[Pair], store: SweepStore, executor: Executor, *,
             stop_after: int | None = None, progress: bool = True) -> tuple[int, bool]:
    """Run every cell of the grid not yet in ``store``, appending each row as it finishes.

    Returns (runs done by this call, whether every cell is now done). ``stop_after`` stops after
    that many runs (a stand-in for a kill, for tests): the first cells left in the grid's order run.
    """
    groups = [list(pairs)] if executor.workers > 1 else [[p] for p in pairs]
    done = 0
    with tqdm(total=total_runs(cfg, pairs), desc=f"benchmark {cfg.preset}/{cfg.target}", disable=not progress) as bar:
        for group in groups:
            for cells in phases(cfg, group, store):
                todo = store.pending(cells)
                bar.update(len(cells) - len(todo))
                room = len(todo) if stop_after is None else max(0, stop_after - done)
                for cell, row in executor.run(todo[:room]):
                    store.record(cell, row)
                    bar.update(1)
                    done += 1
                if len(todo) > room:
                    return done, False
    return done, True
