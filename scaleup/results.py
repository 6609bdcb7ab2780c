"""The benchmark's results folder: one ``sparsity.sweep.SweepStore`` of runs, and what it says.

Each finished run is appended to ``results.jsonl`` at once, keyed by (method, budget,
learning rate, seed), so a killed benchmark loses no finished run and a restarted one
skips them; the folder's ``config.json`` guards it against runs of another config.
From the stored runs: the learning rate each (method, budget) is reported at
(:func:`best_lr`, chosen on the target's *validation* split; the test split is only
reported) and the summary table, mean and spread over seeds (:func:`summarize`).
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scaleup.bench_config import BenchConfig
from scaleup.methods import check_methods, known_methods
from sparsity.sweep import SweepStore, mean_spread
from sparsity.sweep import cell_key as sweep_key

KEY_FIELDS = ("method", "budget", "lr", "seed")


def measured(row: Mapping[str, Any]) -> bool:
    """Whether a stored run has measurements: a run that went non-finite holds only its cell and the reason."""
    return "target_test" in row


def store(out: str | Path, cfg: BenchConfig | None = None) -> SweepStore:
    """The results store of folder ``out``; with ``cfg``, refuse a folder that holds another config."""
    return SweepStore(out, KEY_FIELDS, config=None if cfg is None else cfg.to_json())


def cell_key(method: str, budget: str, lr: float, seed: int) -> str:
    """The key of one run in the store: ``method|budget|lr|seed`` (the lr as ``%g``)."""
    return sweep_key({"method": method, "budget": budget, "lr": lr, "seed": seed}, KEY_FIELDS)


def load_results(out: str | Path) -> dict[str, dict[str, Any]]:
    """Finished runs by cell key. A last line cut off by a kill is ignored (that run is redone)."""
    return store(out).load()


def load_config(out: str | Path) -> BenchConfig:
    """The config of the benchmark in folder ``out``."""
    return BenchConfig.from_json(store(out).config())


NOT_RECORDED = "not recorded"
"""The fingerprint of rows written before results recorded their pretrained model."""


def checkpoints(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Pretrained-model fingerprint (``scaleup.pretrain.fingerprint``, :data:`NOT_RECORDED` for older rows)
    -> the methods with rows fine-tuned from it, in first-seen order."""
    found: dict[str, list[str]] = {}
    for row in rows.values():
        methods = found.setdefault(row.get("pretrained") or NOT_RECORDED, [])
        if row["method"] not in methods:
            methods.append(row["method"])
    return found


def checkpoint_lines(found: Mapping[str, list[str]]) -> list[str]:
    """``"fingerprint: method, method"`` per pretrained model of :func:`checkpoints`: what a report lists
    where a folder's rows come from several (their numbers compare only within one)."""
    return [f"{fp}: {', '.join(methods)}" for fp, methods in found.items()]


def check_one_checkpoint(rows: Mapping[str, Mapping[str, Any]], fingerprint: str, folder: str | Path) -> None:
    """Refuse to add rows fine-tuned from pretrained model ``fingerprint`` to a store whose rows came from
    another one (their numbers would not be comparable); warn where older rows recorded none."""
    found = checkpoints(rows)
    other = sorted(set(found) - {fingerprint, NOT_RECORDED})
    if other:
        raise ValueError(f"{folder} holds rows fine-tuned from another pretrained model (fingerprint "
                         f"{', '.join(other)}; this run's is {fingerprint}): results from two pretrained models "
                         "are not comparable. Use a new --out folder, or the cache that made those rows")
    if NOT_RECORDED in found:
        warnings.warn(f"{folder}: rows of {', '.join(found[NOT_RECORDED])} record no pretrained model (written "
                      f"before rows did); they may come from another one than this run's {fingerprint}", stacklevel=2)


def best_lr(cfg: BenchConfig, rows: dict[str, dict[str, Any]], method: str, budget: str) -> float | None:
    """The smallest learning rate whose target *validation* accuracy is within ``cfg.lr_tie`` of the
    grid's best, over seed 0 (or the mean over seeds with ``sweep_all_seeds``). None until the sweep is done.

    A rate at which any of those runs diverged (``diverged`` in its row) is never chosen; if
    every rate diverged, the smallest is returned (its rows say so).

    Why the smallest: once a target saturates, several rates learn it equally well and the larger
    ones only move the weights further (and forget more); a tie-break on validation loss would walk
    to the largest stable rate and make every method forget everything. Test data never enter.
    """
    seeds = range(cfg.seeds) if cfg.sweep_all_seeds else [0]
    accuracy = {}
    for lr in cfg.lrs(method):
        found = [rows.get(cell_key(method, budget, lr, s)) for s in seeds]
        if any(r is None for r in found):
            return None
        if not any(r.get("diverged") for r in found):
            accuracy[lr] = statistics.mean(r["target_val"] for r in found)
    if not accuracy:
        return min(cfg.lrs(method))
    best = max(accuracy.values())
    return min(lr for lr, acc in accuracy.items() if acc >= best - cfg.lr_tie)


def _number(value: float | None) -> float:
    """A stored measurement as a float (NaN where it was not measured: peak memory off Linux)."""
    return float("nan") if value is None else float(value)


def summarize(out: str | Path, methods: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per (method, budget) at its chosen learning rate: mean and std over its measured seeds.

    ``n_diverged`` counts the seeds that diverged there; a (method, budget) whose every run
    diverged has no row (:func:`diverged_runs` lists it)."""
    cfg = load_config(out)
    rows = load_results(out)
    methods = known_methods() if methods is None else check_methods(methods)
    table = []
    for m in methods:
        for b in cfg.budgets(m):
            lr = best_lr(cfg, rows, m, b)
            if lr is None:
                continue
            found = [rows[k] for s in range(cfg.seeds) if (k := cell_key(m, b, lr, s)) in rows]
            runs = [r for r in found if measured(r)]
            n_diverged = sum(bool(r.get("diverged")) for r in found)
            if not runs:
                continue
            entry: dict[str, Any] = dict(method=m, budget=b, lr=lr, lr_edge=cfg.lr_edge(m, lr), n_seeds=len(runs),
                                         n_diverged=n_diverged, trainable=runs[0]["trainable"])
            for metric in ("target_test", "target_val", "retention", "train_s", "select_s", "peak_mb",
                           "optimizer_state_bytes"):
                entry[metric], entry[metric + "_std"] = mean_spread([_number(r[metric]) for r in runs])
            for kind in ("update_sparsity", "update_rank"):
                entry[kind] = {t: statistics.mean(r[kind][t] for r in runs) for t in runs[0][kind]}
            table.append(entry)
    return table


def diverged_runs(out: str | Path) -> list[dict[str, Any]]:
    """Every stored run flagged ``diverged``: its cell and the reason, in the order they ran."""
    return [dict(method=r["method"], budget=r["budget"], lr=r["lr"], seed=r["seed"], reason=r.get("diverged_reason", ""))
            for r in load_results(out).values() if r.get("diverged")]
