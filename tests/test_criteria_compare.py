"""The toy criterion comparisons: teacher-student (lesson 3), the masked-optimizer pitfall, principal
weights (lesson 7) and the modular toy.

Mechanics run at a tiny step count; the science tests use the fast-mode config (300 steps)
and assert only what was measured to hold there (see the comments for the measured numbers).
"""

from dataclasses import replace

import pytest
import torch

from sparsity import masks
from sparsity.metrics import mask_overlap
from toys import modular_criteria as mc
from toys import optimizer_pitfall as pit
from toys import principal_weights as pw
from toys import teacher_student as ts
from toys import teacher_student_criteria as tsc
from toys.criterion_masks import DENSITIES, SCOPES


@pytest.fixture(scope="module")
def tiny() -> tsc.Setup:
    """A setup whose compared runs train 20 steps (the L1 discovery run still trains L1_MIN_STEPS)."""
    return tsc.prepare(tsc.default_config(steps=20), progress=False)


@pytest.fixture(scope="module")
def fast(tiny: tsc.Setup) -> tsc.Setup:
    """The lesson's fast-mode runs (300 steps each), reusing tiny's L1 run (both train L1_MIN_STEPS).

    Only the full fine-tuning reference differs (20 steps), which the science tests do not read.
    """
    assert tiny.l1.config.steps == max(tsc.default_config(fast=True).steps, tsc.L1_MIN_STEPS)
    return replace(tiny, config=tsc.default_config(fast=True))


def test_rows_cover_every_criterion_density_and_scope(tiny: tsc.Setup) -> None:
    comp = tsc.compare(tiny, scopes=SCOPES, progress=False)
    got = {(r.criterion, r.density, r.scope) for r in comp.rows}
    assert got == {(c, d, s) for c in tsc.CRITERIA for d in DENSITIES for s in SCOPES}
    assert len(comp.rows) == len(got)
    for r in comp.rows:
        assert r.selected == sum(r.where.values()) > 0
        assert r.actual_density <= r.density + 1e-3
        assert r.test_loss > 0 and 0 <= r.share_needed <= 1
    table = comp.table()
    assert "full FT" in table and "L1-discovered" in table and "LIFT r=4" in table  # the registry's labels
    assert comp.get("fisher", 0.05).criterion == "fisher"
    with pytest.raises(KeyError):
        comp.get("fisher", 0.5)


def test_ranking_criteria_spend_the_whole_budget(tiny: tsc.Setup) -> None:
    n = tiny.n_weights
    for criterion in ("random", "magnitude", "gradient", "snip", "fisher", "movement", "lift"):
        for scope in SCOPES:
            mask = tsc.select(tiny, criterion, 0.05, scope)
            assert abs(masks.density({k: mask[k] for k in ("fc1.weight", "fc2.weight", "fc3.weight")}) - 0.05) < 2 / n
            assert not mask["fc2.bias"].any()  # budgets are spent on weights only


@pytest.mark.parametrize("criterion", ["l1_discovered", "layers"])
@pytest.mark.parametrize("density", DENSITIES)
def test_discovered_update_and_layer_masks_lie_in_w2(tiny: tsc.Setup, criterion: str, density: float) -> None:
    mask = tsc.select(tiny, criterion, density)
    assert mask_overlap(mask, tiny.needed).a_in_b > 0.9  # measured: l1_discovered 1.00 / 0.95 / 0.92, layers 1.00


def test_layer_mask_is_the_whole_layer_when_the_budget_allows(tiny: tsc.Setup) -> None:
    mask = tsc.select(tiny, "layers", 0.2)
    assert mask["fc2.weight"].all() and sum(int(m.sum()) for m in mask.values()) == tiny.needed_count


def test_masked_training_leaves_unselected_entries_bit_identical(tiny: tsc.Setup) -> None:
    for criterion in ("snip", "l1_discovered"):
        mask = tsc.select(tiny, criterion, 0.05)
        _, result = tsc.evaluate(tiny, criterion, 0.05)
        moved_any = False
        for name, p in result.student.named_parameters():
            frozen = ~mask[name]
            assert torch.equal(p.detach()[frozen], result.init[name][frozen]), name
            moved_any |= bool((p.detach() != result.init[name])[mask[name]].any())
        assert moved_any


def test_pitfall_plain_adamw_moves_frozen_entries_masked_adamw_does_not(tiny: tsc.Setup) -> None:
    mask = tsc.select(tiny, "fisher", 0.05)
    naive, masked = pit.masked_optimizer_pitfall(mask, replace(tiny.config, steps=30), progress=False)
    frozen = sum(int((~m).sum()) for m in mask.values())
    assert naive.frozen == masked.frozen == frozen
    assert naive.moved == frozen and naive.max_abs_delta > 0  # weight decay shrinks every nonzero entry
    assert masked.moved == 0 and masked.max_abs_delta == 0.0
    assert "MaskedAdamW" in pit.format_pitfall([naive, masked])


def test_gradient_criteria_find_w2_and_magnitude_does_not(tiny: tsc.Setup) -> None:
    # measured at 1%: gradient and fisher 100% in W2, snip 89%, movement 93%, magnitude 25%, random 7% (chance 9%)
    share = {c: mask_overlap(tsc.select(tiny, c, 0.01), tiny.needed).a_in_b for c in
             ("random", "magnitude", "gradient", "fisher", "snip", "movement")}
    assert share["gradient"] > 0.95 and share["fisher"] > 0.95
    assert share["snip"] > 0.8 and share["movement"] > 0.8
    assert share["magnitude"] < 0.4 and share["random"] < 0.15


def test_per_tensor_policy_cannot_find_w2(tiny: tsc.Setup) -> None:
    for criterion in ("fisher", "gradient", "magnitude"):
        row_share = mask_overlap(tsc.select(tiny, criterion, 0.05, "per_tensor"), tiny.needed).a_in_b
        assert row_share == pytest.approx(tiny.chance_share, abs=0.01)


def test_science_at_fast_config_discovered_beats_snip_beats_magnitude_beats_random(fast: tsc.Setup) -> None:
    # measured at 5%, 300 steps: test MSE l1_discovered 0.036 < snip 0.125 < magnitude 0.150 < random 0.227
    loss = {c: tsc.evaluate(fast, c, 0.05)[0].test_loss for c in ("random", "magnitude", "snip", "l1_discovered")}
    assert loss["l1_discovered"] < loss["snip"] < loss["magnitude"] < loss["random"]
    assert loss["l1_discovered"] < 0.5 * loss["snip"]


def test_lift_equals_magnitude_at_full_rank_and_differs_below() -> None:
    _, student = ts.make_teacher_student(ts.Config())
    rows = pw.lift_magnitude_overlap(student, 0.05, (1, 8, None))
    assert [r.identical for r in rows] == [False, False, True]
    assert rows[-1].jaccard == 1.0
    # measured: Jaccard 0.07 at rank 1, 0.29 at rank 8 (chance 0.025)
    assert rows[0].chance_jaccard < rows[0].jaccard < rows[1].jaccard < 1.0


def test_principal_weights_study_runs_and_full_rank_is_magnitude() -> None:
    study = pw.principal_weights(pw.default_transfer_config(steps=30), ranks=(1, None), progress=False)
    names = [r.name for r in study.rows]
    assert names == ["full FT", "random", "magnitude", "LIFT r=1", "LIFT r=full"]
    assert study.get("LIFT r=full").target_loss == study.get("magnitude").target_loss
    assert study.get("LIFT r=full").jaccard_magnitude == 1.0
    assert study.get("full FT").target_loss < study.start_target_loss
    assert "source drift" in study.table()


def test_transfer_task_splits_input_space() -> None:
    task = pw.make_transfer_task(pw.default_transfer_config(target_dim=5))
    # the source inputs are orthogonal to the target subspace the target inputs span
    assert torch.linalg.matrix_rank(task.x_train) == 5
    assert (task.x_source @ task.x_train.T).abs().max() < 1e-3


def test_bad_input_gives_clear_errors(tiny: tsc.Setup) -> None:
    with pytest.raises(ValueError, match="criterion"):
        tsc.select(tiny, "grad", 0.05)
    with pytest.raises(ValueError, match="'l1_update' is now called 'l1_discovered'"):
        tsc.select(tiny, "l1_update", 0.05)  # a former study name: an error naming the registry's, not an alias
    with pytest.raises(ValueError, match="'layer' is now called 'layers'"):
        tsc.select(tiny, "layer", 0.05)
    with pytest.raises(ValueError, match="density"):
        tsc.select(tiny, "random", 0.0)
    with pytest.raises(ValueError, match="scope"):
        tsc.select(tiny, "random", 0.05, "layerwise")
    with pytest.raises(ValueError, match="lam"):
        tsc.prepare(tsc.default_config(lam=1e-3), progress=False)
    with pytest.raises(ValueError, match="rank"):
        tsc.select(tiny, "lift", 0.05, lift_rank=50)
    with pytest.raises(ValueError, match="shape"):
        pit.masked_optimizer_pitfall({"fc2.weight": torch.ones(3, 3, dtype=torch.bool)}, tiny.config, progress=False)
    with pytest.raises(ValueError, match="weight_decay"):
        pit.masked_optimizer_pitfall({}, tiny.config, weight_decay=0.0, progress=False)
    with pytest.raises(ValueError, match="target_dim"):
        pw.TransferConfig(target_dim=100)
    with pytest.raises(TypeError, match="setup"):
        tsc.compare("setup", progress=False)


def test_modular_comparison_covers_its_criteria_and_the_module_oracle_lies_in_the_module() -> None:
    from toys import modular_world

    cfg = modular_world.Config(hidden=(32, 32), n_train=1024, n_test=512, steps=40, batch=128)
    comp = mc.compare_modular(cfg, densities=(0.05,), progress=False)
    assert [r.criterion for r in comp.rows] == list(mc.MODULAR_CRITERIA)
    oracle = next(r for r in comp.rows if r.criterion == "module")
    assert oracle.share_in_module == 1.0 and oracle.fc1_share == 1.0
    assert comp.chance_share == 0.25
    assert all(0 <= r.target_acc <= 1 and 0 <= r.retained_acc <= 1 for r in comp.rows)
    assert "in module" in comp.table()
    with pytest.raises(ValueError, match="task"):
        mc.compare_modular(cfg, task="r1", progress=False)
