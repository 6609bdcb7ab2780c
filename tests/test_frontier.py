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


def _spread(lo, hi, n=3):
    return dict(mean=(lo + hi) / 2, min=lo, max=hi, n=n)


def test_separated_means_the_seed_intervals_do_not_overlap() -> None:
    from scaleup.frontier_report import separated

    assert separated(_spread(0.6, 0.7), _spread(0.4, 0.55))
    assert not separated(_spread(0.6, 0.7), _spread(0.4, 0.65))  # overlap: within the seed spread


def _lora_equal_rows(lift_retention: float) -> dict:
    """Full FT, LoRA and LIFT at the LoRA-equal budget, three seeds, with hand-set retention at target 1.0."""
    rows = {}
    for seed in range(3):
        jitter = 0.01 * seed
        for method, budget, keep in (("full", "all", 0.40), ("lora", "lora_equal", 0.50),
                                     ("lift", "lora_equal", lift_retention)):
            rows[f"{method}|{seed}"] = dict(method=method, budget=budget, lr=1e-3, seed=seed, target_test=1.0,
                                            trace=[dict(retention_token=keep + jitter, target_test_token=1.0),
                                                   dict(retention_token=1.0, target_test_token=0.0)])
    return rows


def test_the_frontier_verdict_is_written_from_the_numbers() -> None:
    from scaleup.frontier_report import frontier_table, frontier_verdict

    apart = frontier_verdict(_lora_equal_rows(0.70))
    assert "more than LoRA, beyond the seed spread, for lift;" in apart
    assert "0.710 vs 0.510 (+0.200, separated" in apart  # LIFT vs LoRA at 90% of full FT's best target
    assert "+39%" in apart and "+73%" in apart  # 0.71 / 0.51 and 0.71 / 0.41
    assert "Whose frontier dominates** (area under it): lift @ lora_equal" in apart
    close = frontier_verdict(_lora_equal_rows(0.515))
    assert "no sparse criterion keeps more than LoRA beyond the seed spread" in close
    assert "within the seed spread" in close
    table = frontier_table(_lora_equal_rows(0.70))
    assert "| lift | lora_equal | 3 | 0.710 [0.700, 0.720] (n=3) |" in table


def test_the_frontier_figure_draws_one_line_per_method_and_budget() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from scaleup.frontier_report import plot_frontiers

    ax = plot_frontiers(_lora_equal_rows(0.7), "t", before=(1.0, 0.0))
    assert len(ax.lines) == 3  # full, lora, lift: one frontier each
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"full FT", "LoRA", "LIFT", "all", "lora_equal",
                                                                   "before FT"}  # methods by their labels


def test_a_reference_that_never_reaches_the_matched_target_is_named_as_such() -> None:
    from scaleup.frontier_report import frontier_verdict, separated

    never = dict(mean=math.nan, min=math.nan, max=math.nan, n=0)
    assert separated(_spread(0.1, 0.2), never) and not separated(never, _spread(0.1, 0.2))
    rows = _lora_equal_rows(0.7)
    for key, row in rows.items():
        if row["method"] == "lora":  # LoRA learns only half of the target
            row["trace"] = [dict(retention_token=0.9, target_test_token=0.5)]
    verdict = frontier_verdict(rows)
    assert "LoRA never reaches 90% of full FT's best target on any seed; the sparse criteria that do: lift." in verdict
    assert "only the first reaches it (0.710); the other never does on any seed" in verdict  # LIFT vs LoRA


def test_one_seed_is_never_called_separated() -> None:
    from scaleup.frontier_report import compare_spreads, separated

    one, other = _spread(0.8, 0.8, n=1), _spread(0.5, 0.5, n=1)
    assert not separated(one, other)
    assert compare_spreads(one, other) == "0.800 vs 0.500 (+0.300, one seed: no spread measured)"
