"""A criterion registered in sparsity.registry runs through the toy comparisons without an edit in toys/."""

import pytest
import torch

from sparsity import registry
from toys import modular_criteria as mc
from toys import teacher_student_criteria as tsc


def squared_magnitude(model, inputs):
    """w^2: the same ranking as magnitude, so it must pick the same mask and train to the same loss."""
    return {n: p.detach().square() for n, p in model.named_parameters() if n in inputs.names(model)}


@pytest.fixture
def registered():
    registry.register_criterion("squared_magnitude", squared_magnitude)
    try:
        yield "squared_magnitude"
    finally:
        registry.unregister_criterion("squared_magnitude")


@pytest.fixture(scope="module")
def setup() -> tsc.Setup:
    return tsc.prepare(tsc.default_config(steps=15), l1_steps=40, progress=False)


def test_a_registered_criterion_runs_through_the_teacher_student_comparison(registered, setup) -> None:
    comp = tsc.compare(setup, criteria=(registered, "magnitude"), densities=(0.05,), scopes=tsc.SCOPES,
                       progress=False)
    for scope in tsc.SCOPES:
        new, magnitude = comp.get(registered, 0.05, scope), comp.get("magnitude", 0.05, scope)
        assert new.where == magnitude.where and new.test_loss == magnitude.test_loss
        assert torch.equal(tsc.select(setup, registered, 0.05, scope)["fc2.weight"],
                           tsc.select(setup, "magnitude", 0.05, scope)["fc2.weight"])
    assert registered in comp.table()


def test_an_unregistered_name_is_refused_and_the_registry_is_left_clean(setup) -> None:
    assert "squared_magnitude" not in registry.CRITERIA
    with pytest.raises(ValueError, match="register_criterion"):
        tsc.compare(setup, criteria=("squared_magnitude",), progress=False)


def test_registry_criteria_that_learn_their_set_get_the_toys_training_run(setup) -> None:
    """l1_discovered trains its own L1 run with the toy's loop (Setup.train_on_task); options override."""
    mask = tsc.select(setup, "l1_discovered", 0.05, options={"lam": 1e-2})
    assert not any(mask[n].any() for n in mask if n.endswith("bias"))
    assert 0 < sum(int(m.sum()) for m in mask.values()) <= round(0.05 * setup.n_weights)


def test_a_registered_criterion_runs_through_the_modular_comparison(registered) -> None:
    from toys import modular_world

    cfg = modular_world.Config(hidden=(16, 16), n_train=512, n_test=256, steps=10, batch=64)
    comp = mc.compare_modular(cfg, criteria=(registered, "magnitude"), densities=(0.05,), progress=False)
    new, magnitude = comp.rows
    assert (new.criterion, new.selected, new.share_in_module) == (registered, magnitude.selected,
                                                                  magnitude.share_in_module)
    assert new.target_acc == magnitude.target_acc
