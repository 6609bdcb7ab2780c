"""The modular world: construction, ground truth, reproducibility, the CLI, and the science
claims at CI size (Csordás et al. 2021; core-parameter isolation)."""

import io
import json
from contextlib import redirect_stdout

import pytest
import torch

from sparsity.regularize import snapshot
from toys import (modular, modular_consistency, modular_isolation, modular_plots, modular_report, modular_training,
                  modular_world)

SMALL = dict(n_tasks=3, hidden=(64, 64), n_train=4096, n_test=2048, steps=500, lr=5e-3, mask_steps=150, mask_lr=0.1,
             n_seeds=2)
"""The fast-mode world (``default_config(fast=True)``): CI-sized, the claims still show."""


def test_fast_mode_default_is_the_small_world() -> None:
    assert modular_world.default_config(fast=True) == modular_world.Config(**SMALL)
    assert modular_world.default_config(fast=True, seed=3).seed == 3


def test_config_rejects_bad_values_naming_them() -> None:
    for field, value in [
        ("overlap", 8), ("overlap", -1), ("n_tasks", 1), ("steps", 0), ("core_density", 0.0),
        ("subnet_density", 1.5), ("ablation", "noise"), ("task_a", "t9"), ("hidden", ()), ("lr", -1.0),
        ("target", ((0, 0), (1, 2))), ("target", ((0, 4), (1, 2))), ("related", ((0, 1),)),
    ]:
        with pytest.raises(ValueError, match=field):
            modular_world.Config(**{field: value})
    with pytest.raises(ValueError, match="task_a and task_b"):
        modular_world.Config(task_a="t1", task_b="t1")


def test_world_layout_and_ground_truth() -> None:
    cfg = modular_world.Config(n_tasks=3, group_size=6, overlap=2, n_train=4000, n_test=100)
    assert cfg.in_dim == 6 + 2 * 4
    assert (cfg.window(1).start, cfg.window(1).stop) == (4, 10)  # shares 2 features with each neighbour
    world = modular_world.make_world(cfg)
    assert world.targets == ["t0", "t1", "t2"] and world.related == ["r0", "r1", "r2"]
    counts = torch.bincount(world.y_train["t1"], minlength=cfg.n_classes).float() / cfg.n_train
    assert counts.min() > 0.15 and cfg.chance == 0.25  # parities of sign bits are balanced classes
    # Ground truth: a task's label depends on its own group only.
    x = world.x_train.clone()
    x[:, cfg.window(2).stop - 2 :] = torch.randn(cfg.n_train, 2)  # features read only by t2
    assert torch.equal(modular_world._labels(cfg, world.projections, x, 0, cfg.target), world.y_train["t0"])
    assert not torch.equal(modular_world._labels(cfg, world.projections, x, 2, cfg.target), world.y_train["t2"])
    # Related tasks use the same primitives, composed differently.
    assert not torch.equal(world.y_train["r0"], world.y_train["t0"])


def test_model_heads_and_trunk() -> None:
    cfg = modular_world.Config(**SMALL)
    model = modular_world.make_model(cfg)
    assert model.trunk_names() == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    out = model(torch.randn(5, cfg.in_dim))
    assert set(out) == {"t0", "t1", "t2", "r0", "r1", "r2"} and out["t0"].shape == (5, 4)
    before = snapshot(model)
    model.reset_heads(["t1"], seed=7)
    after = snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"heads.t1.weight", "heads.t1.bias"}


def test_training_is_reproducible_and_respects_the_mask() -> None:
    cfg = modular_world.Config(**SMALL)
    world = modular_world.make_world(cfg)
    a, b = modular_world.make_model(cfg), modular_world.make_model(cfg)
    frozen = {n: torch.zeros_like(p, dtype=torch.bool) if n == "fc1.weight" else torch.ones_like(p, dtype=torch.bool)
              for n, p in a.named_parameters()}
    start = snapshot(a)
    curve_a = modular_training.train(a, world, ["t0", "t1"], steps=30, seed=3, mask=frozen, progress=False)
    curve_b = modular_training.train(b, world, ["t0", "t1"], steps=30, seed=3, mask=frozen, progress=False)
    assert curve_a == curve_b and curve_a[-1] < curve_a[0]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(a.fc1.weight, start["fc1.weight"])
    assert not torch.equal(a.fc2.weight, start["fc2.weight"])
    assert torch.equal(a.heads.r0.weight, start["heads.r0.weight"])  # not trained on r0: no gradient, no move


@pytest.fixture(scope="module")
def small_report() -> modular_report.Report:
    return modular_report.run(modular_world.Config(**SMALL), progress=False)


def test_trained_network_splits_into_task_subnetworks(small_report: modular_report.Report) -> None:
    cfg = small_report.config
    for arm in ("random init", "pretrained"):
        run = small_report.runs[arm][0]
        m = run.matrix
        assert min(m.baseline) > 0.8, m.format()
        for i in range(cfg.n_tasks):
            assert m.scores[i][i] < cfg.chance + 0.25, m.format()  # own task broken
            others = [m.retained()[i][j] for j in range(cfg.n_tasks) if j != i]
            assert min(others) > 0.85, m.format()  # the rest intact
        assert run.modularity > 0.6
        densities = [learned.density for learned in run.masks.values()]
        assert all(0.01 < d < 0.6 for d in densities)


def test_consistency_and_overlap_are_measured_against_chance(small_report: modular_report.Report) -> None:
    assert set(small_report.runs) == set(modular_consistency.ARMS)
    assert small_report.runs["same init"][0] is small_report.runs["random init"][0]
    overlaps = small_report.overlaps
    # Sharing a starting point (pretrained trunk or one init) makes the same task's subnetwork
    # overlap well above chance across seeds; independent inits do not.
    for arm in ("same init", "pretrained"):
        assert overlaps[arm].jaccard > 2 * overlaps[arm].chance
    assert overlaps["pretrained"].jaccard > overlaps["random init"].jaccard
    summary = json.loads(json.dumps(small_report.summary()))
    assert summary["cross_seed_overlap"]["pretrained"]["chance"] == pytest.approx(overlaps["pretrained"].chance)


def test_freezing_a_core_protects_a(small_report: modular_report.Report) -> None:
    iso = small_report.isolation
    assert iso.a_before > 0.85
    assert iso.retained["freeze A's core"] > iso.retained["full"] + 0.2  # markedly less forgetting
    assert iso.target["freeze A's core"] > iso.target["full"] - 0.05  # at about the same target score
    assert iso.trainable["full"] == 1.0 > iso.trainable["freeze A's core"]
    # A's core is closed over units: every frozen row of fc1 is frozen entirely.
    rows = iso.core["fc1.weight"].any(1)
    assert iso.core["fc1.weight"][rows].all() and torch.equal(iso.core["fc1.bias"], rows)
    assert torch.equal(iso.models["freeze A's core"].fc1.weight[rows], iso.pretrained.fc1.weight[rows])


def test_cli_prints_the_json_summary() -> None:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert modular.main(["--json", "--steps", "30", "--mask-steps", "20", "--seeds", "2", "--no-progress"]) == 0
    summary = json.loads(buffer.getvalue())
    assert set(summary) >= {"ablation_matrix", "modularity", "cross_seed_overlap", "isolation", "checks"}
    matrix = summary["ablation_matrix"]["random init"]
    assert len(matrix["scores"]) == len(matrix["tasks"]) == summary["config"]["n_tasks"]
    assert set(summary["isolation"]["ways"]) == set(modular_isolation.WAYS)
    with pytest.raises(SystemExit):
        modular.main(["--overlap", "99"])


def test_experiment_helpers_reject_bad_input(small_report: modular_report.Report) -> None:
    with pytest.raises(ValueError, match="at least two seeds"):
        modular_consistency.cross_seed_overlap(small_report.runs["random init"][:1])
    with pytest.raises(ValueError, match="arm"):
        modular_consistency.seed_run("lottery", 0, small_report.world, small_report.pretrained, progress=False)


def test_way_mask_rejects_unknown_ways() -> None:
    model = modular_world.make_model(modular_world.Config(**SMALL))
    empty = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    assert modular_isolation.way_mask("full", empty, empty, "t1") is None
    only_b = modular_isolation.way_mask("B's subnetwork only", empty, empty, "t1")
    assert only_b["heads.t1.weight"].all() and not only_b["heads.t0.weight"].any()
    with pytest.raises(ValueError, match="way"):
        modular_isolation.way_mask("lora", empty, empty, "t1")


def test_toys_modular_is_the_command_line_and_re_exports_nothing() -> None:
    """Callers import from where things are defined (``toys.modular_world``, ...), not from a facade."""
    assert not hasattr(modular, "__all__")
    for name in ("Config", "make_world", "train", "plot_isolation", "Report"):
        assert not hasattr(modular, name), name


def test_the_mask_learning_and_task_score_figures(small_report: modular_report.Report) -> None:
    run = small_report.runs["random init"][0]
    fig = modular_plots.plot_mask_learning(run)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == len(run.masks)
    ax = modular_plots.plot_task_scores(run.alone, small_report.config.chance, highlight="t1")
    assert len(ax.patches) == len(run.alone)
