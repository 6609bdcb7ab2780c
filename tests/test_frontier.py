"""Learning-forgetting frontiers (scaleup.frontier) on hand-made points, and traced benchmark runs."""

import math

import pytest

from scaleup import frontier as fr


def test_pareto_keeps_only_undominated_points() -> None:
    points = [(0.9, 0.1), (0.5, 0.5), (0.4, 0.4), (0.1, 0.9), (0.5, 0.3), (0.1, 0.2)]
    assert fr.pareto(points) == [(0.1, 0.9), (0.5, 0.5), (0.9, 0.1)]
    assert fr.pareto([]) == []


def test_area_is_the_union_of_the_dominated_boxes() -> None:
    assert fr.area([(1.0, 1.0)]) == 1.0
    assert fr.area([(0.5, 0.5)]) == 0.25
    # boxes [0,0.1]x[0,0.9], [0,0.5]x[0,0.5], [0,0.9]x[0,0.1]: 0.1*0.9 + 0.4*0.5 + 0.4*0.1
    assert fr.area(fr.pareto([(0.9, 0.1), (0.5, 0.5), (0.1, 0.9)])) == pytest.approx(0.09 + 0.2 + 0.04)
    assert fr.area([]) == 0.0


def test_retention_at_matched_target() -> None:
    front = [(0.1, 0.9), (0.5, 0.5), (0.9, 0.1)]
    assert fr.retention_at(front, 0.5) == 0.5 and fr.retention_at(front, 0.05) == 0.9
    assert math.isnan(fr.retention_at(front, 0.95))


def _row(method, lr, seed, trace):
    return dict(method=method, budget="all" if method == "full" else "d0.05", lr=lr, seed=seed, target_test=0.0,
                trace=[dict(retention_token=x, target_test_token=y) for x, y in trace])


def test_summary_over_learning_rates_steps_and_seeds() -> None:
    rows = {}
    for seed in (0, 1):
        rows[f"full|{seed}|a"] = _row("full", 1e-3, seed, [(0.8, 0.5), (0.3, 1.0)])
        rows[f"full|{seed}|b"] = _row("full", 1e-4, seed, [(0.9, 0.2)])
        rows[f"sparse|{seed}"] = _row("random", 1e-2, seed, [(0.95, 0.6), (0.9, 0.92 - 0.1 * seed)])
    rows["diverged"] = dict(method="random", budget="d0.05", lr=1.0, seed=0, diverged=True)
    summary = {(e["method"], e["budget"]): e for e in fr.summary(rows)}
    full, sparse = summary[("full", "all")], summary[("random", "d0.05")]
    assert full["seeds"] == sparse["seeds"] == 2
    assert full["area"]["mean"] == pytest.approx(0.3 * 1.0 + 0.5 * 0.5 + 0.1 * 0.2)
    # matched at 90% of full's best (1.0): seed 0 reaches 0.92 at retention 0.9, seed 1 (0.82) never does
    assert sparse["retention_at_0.9"] == dict(mean=0.9, min=0.9, max=0.9, n=1)
    assert full["retention_at_0.99"]["mean"] == 0.3
