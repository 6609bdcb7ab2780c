"""Learning-forgetting frontiers: every method judged over its whole trade-off, not at one learning rate.

Biderman et al. 2024 ("LoRA Learns Less and Forgets Less") compare fine-tuning methods by
the points (learning on the target, retention of the source) that each reaches over its
learning-rate grid and along training. One learning rate per method, chosen by a rule,
hides the trade-off: a lower rate keeps more and learns less. Here every run of the
benchmark with a ``trace`` (``BenchConfig.eval_every``) gives one point per evaluation, and
per method x budget x seed:

- the **Pareto frontier** of those points (no other point learns more *and* keeps more);
- the **area under the frontier**, the share of the unit square it dominates (1 is a method
  that learns the target perfectly and forgets nothing);
- the **retention at matched target**: the best retention among the points that reach a given
  target score, e.g. 90% and 99% of full fine-tuning's best (NaN where a method never gets there).

Spread: the mean and the min/max over seeds, each seed's frontier computed on its own.
Graded metrics by default (per-token accuracy on the target's test split against per-token
retention of the sources), because exact match makes forgetting all-or-nothing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from scaleup.methods import get_method
from scaleup.results import measured

X, Y = "retention_token", "target_test_token"
"""Default axes: per-token retention (x) and per-token target accuracy on the test split (y)."""
MATCHED = (0.9, 0.99)
"""Shares of full fine-tuning's best target score at which retention is compared."""


def run_points(row: Mapping[str, Any], x: str = X, y: str = Y) -> list[tuple[float, float]]:
    """The (x, y) points of one stored run: each trace point, or the final measurement without a trace."""
    if not measured(row):
        return []
    trace = row.get("trace") or [row]
    return [(float(p[x]), float(p[y])) for p in trace]


def pareto(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (higher is better on each), by increasing x."""
    frontier: list[tuple[float, float]] = []
    for px, py in sorted(set(points), key=lambda p: (-p[0], -p[1])):
        if not frontier or py > frontier[-1][1]:
            frontier.append((px, py))
    return frontier[::-1]


def area(frontier: Sequence[tuple[float, float]]) -> float:
    """The area of the unit square dominated by the frontier's points (their union of boxes [0, x] x [0, y])."""
    boxes = sorted(frontier, key=lambda p: p[0])  # for t in (prev x, x]: the tallest box reaching past t
    result, prev_x = 0.0, 0.0
    for i, (px, _) in enumerate(boxes):
        height = max(py for qx, py in boxes[i:])
        result += (px - prev_x) * height
        prev_x = px
    return result


def retention_at(frontier: Sequence[tuple[float, float]], target: float) -> float:
    """The best x among frontier points with y >= ``target``; NaN if none reaches it."""
    reached = [px for px, py in frontier if py >= target]
    return max(reached) if reached else math.nan


def frontiers(rows: Mapping[str, Mapping[str, Any]], x: str = X, y: str = Y) -> dict[tuple[str, str, int], list]:
    """Per (method, budget, seed): the Pareto frontier of every point of every learning rate and step."""
    points: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    for row in rows.values():
        points.setdefault((row["method"], row["budget"], row["seed"]), []).extend(run_points(row, x, y))
    return {key: pareto(p) for key, p in points.items() if p}


def _spread(values: Sequence[float]) -> dict[str, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return dict(mean=math.nan, min=math.nan, max=math.nan, n=0)
    return dict(mean=statistics.mean(finite), min=min(finite), max=max(finite), n=len(finite))


def summary(rows: Mapping[str, Mapping[str, Any]], x: str = X, y: str = Y) -> list[dict[str, Any]]:
    """One entry per (method, budget): area under the frontier and retention at matched target, over seeds.

    "Matched" targets are shares (``MATCHED``) of the reference method's best y (full fine-tuning,
    ``Method.reference``) over all its points and seeds; without a reference run they are NaN."""
    fronts = frontiers(rows, x, y)
    full = [py for (m, _, _), f in fronts.items() if get_method(m).reference for _, py in f]
    best_full = max(full) if full else math.nan
    out = []
    for method, budget in dict.fromkeys((m, b) for m, b, _ in fronts):
        seeds = sorted(s for m, b, s in fronts if (m, b) == (method, budget))
        per_seed = [fronts[(method, budget, s)] for s in seeds]
        entry: dict[str, Any] = dict(method=method, budget=budget, seeds=len(seeds),
                                     area=_spread([area(f) for f in per_seed]))
        for share in MATCHED:
            entry[f"retention_at_{share:g}"] = _spread([retention_at(f, share * best_full) for f in per_seed])
        out.append(entry)
    return out
