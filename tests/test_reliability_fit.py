"""``fit`` refuses what it would otherwise get silently wrong: hooks it would never call, a learning
rate that is not a finite number >= 0, a non-finite loss (caught before anything moves), and a loss
that is not a scalar tensor."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsity import fit
from sparsity.regularize import snapshot
from sparsity.train import EachStep, Every, check_hooks, constant


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 2)


def _loss(model: nn.Module, batch: object) -> torch.Tensor:
    return model(torch.ones(3, 4)).pow(2).mean()


class Misspelt:
    def after_stpe(self, state: object) -> None:
        raise AssertionError("never called")


class HalfMisspelt:
    def after_step(self, state: object) -> None:
        pass

    def on_ends(self, state: object) -> None:
        pass


class Nothing:
    def log(self, state: object) -> None:
        pass


@pytest.mark.parametrize(("hook", "match"), [
    (lambda state: None, "is a function, not a hook: wrap it as EachStep"),
    (Misspelt(), "'after_stpe'.*did you mean 'after_step'"),
    (HalfMisspelt(), "'on_ends'.*did you mean 'on_end'"),
    (Nothing(), "none of the hook methods"),
])
def test_a_hook_fit_would_never_call_is_refused_before_training(hook: object, match: str) -> None:
    model = _model()
    before = snapshot(model)
    with pytest.raises(TypeError, match=f"hooks\\[1\\].*{match}"):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), _loss, 3, hooks=[EachStep(lambda s: None), hook])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()), "a step ran before the refusal"


def test_the_lab_hooks_pass_the_check() -> None:
    hooks = [EachStep(lambda s: None), Every(2, lambda s: None, at_end=True)]
    assert check_hooks(hooks) == hooks


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1e-3, "0.1", None])
def test_a_schedule_returning_a_bad_learning_rate_stops_at_that_step(bad: object) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def warm_then_bad(step: int) -> object:
        return 0.1 if step < 2 else bad

    history: list[int] = []
    with pytest.raises(ValueError, match="schedule .*warm_then_bad returned the learning rate .* at step 2"):
        fit(model, opt, _loss, 5, schedule=warm_then_bad, hooks=[EachStep(lambda s: history.append(s.step))])
    assert history == [0, 1]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_non_finite_loss_stops_before_the_optimizer_and_the_hooks() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[int] = []
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def loss(m: nn.Module, batch: int) -> torch.Tensor:
        value = _loss(m, batch)
        return value * math.nan if batch == 2 else value

    def record(state: object) -> None:
        seen.append(state.step)
        snapshots[state.step] = snapshot(model)

    with pytest.raises(FloatingPointError, match="the loss is nan at step 2"):
        fit(model, opt, loss, 5, batches=lambda t: t, hooks=[EachStep(record)])
    assert seen == [0, 1], "a hook ran on the diverged step"
    assert all(torch.equal(p, snapshots[1][n]) for n, p in model.named_parameters()), "the optimizer moved"


@pytest.mark.parametrize(("out", "match"), [
    (0.5, "loss_of_batch must return a scalar floating tensor.*returned float"),
    (torch.ones(3, requires_grad=True), "loss_of_batch must return a scalar .*shape \\(3,\\)"),
    ((torch.tensor(1.0, requires_grad=True), {"task": torch.ones(2)}), "loss_of_batch's extra value 'task'.*shape \\(2,\\)"),
    ((torch.tensor(1.0, requires_grad=True), [1.0]), "extra must map names"),
    ((torch.tensor(1.0, requires_grad=True), {}, 3), "tuple of 3"),
    (torch.tensor(1.0), "loss_of_batch returned a loss with no gradient"),
])
def test_a_loss_that_is_not_a_scalar_tensor_is_a_type_error_naming_loss_of_batch(out: object, match: str) -> None:
    model = _model()
    with pytest.raises(TypeError, match=match):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda m, b: out, 2)


def test_scalar_extras_are_recorded() -> None:
    model = _model()

    def loss(m: nn.Module, batch: object) -> tuple[torch.Tensor, dict[str, object]]:
        value = _loss(m, batch)
        return value, {"task": value.detach(), "count": 3}

    history = fit(model, torch.optim.SGD(model.parameters(), lr=0.1), loss, 2, schedule=constant(0.1))
    assert history["count"] == [3.0, 3.0] and history["task"] == history["loss"]
