"""``SparseModel.merge_and_unload``: the model ``sparsify`` patched comes back plain, and ordinary
full fine-tuning then moves every weight (values-only gradient forwards included)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from sparsity import SparseConfig, fit, sparsify
from sparsity.regularize import snapshot


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 6, generator=g), torch.randn(32, 3, generator=g)


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.mse_loss(model(batch[0]), batch[1])


@pytest.mark.parametrize("values_grad", [True, False])
def test_merged_model_fine_tunes_fully_every_weight_moves(values_grad: bool) -> None:
    model, batch = _model(), _batch()
    run = sparsify(model, SparseConfig("random", density=0.2, include="weight", values_grad=values_grad))
    fit(model, run.optimizer, _loss, 3, batches=lambda t: batch)
    merged = run.merge_and_unload()
    assert merged is model and all(p.requires_grad for p in merged.parameters())
    assert all("forward" not in m.__dict__ for m in merged.modules()), "a patched forward is left on a module"
    before = snapshot(merged)
    opt = torch.optim.SGD(merged.parameters(), lr=0.1)
    fit(merged, opt, _loss, 1, batches=lambda t: batch)
    for name, p in merged.named_parameters():
        assert (p.detach() != before[name]).all(), f"{name}: full fine-tuning after merge left entries unmoved"


def test_merge_is_an_alias_and_keeps_a_freeze_the_user_made() -> None:
    model = _model()
    model[2].bias.requires_grad_(False)
    run = sparsify(model, SparseConfig("magnitude", density=0.5, include="all"))
    assert type(run).merge is type(run).merge_and_unload
    run.merge()
    assert not model[2].bias.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "2.bias")


def test_sparsify_again_without_merging_starts_from_the_users_model_not_the_earlier_runs() -> None:
    """A notebook cell run twice: the second sparsify once read the first one's frozen tensors as the user's
    (a gradient criterion then refused, and merge_and_unload handed back a frozen model)."""
    model, batch = _model(), _batch()
    model[0].bias.requires_grad_(False)  # the user's own choice, which merge must give back
    first = sparsify(model, SparseConfig("random", density=0.2, include="weight"))
    assert sorted(first.optimizer.values_grads) == ["0.weight", "2.weight"]
    with pytest.warns(UserWarning, match="earlier sparsify and not merged: .* values-only gradients of 2 layers"):
        second = sparsify(model, SparseConfig("gradient", density=0.2, include="weight"), loss_fn=_loss,
                          batches=[batch])
    _loss(model, batch).backward()
    assert all(a.grad is None for a in first.optimizer.values_grads.values())  # only the new run is fed
    assert all(a.grad is not None for a in second.optimizer.values_grads.values())
    with pytest.raises(ValueError, match="sparsified again since"):
        first.merge_and_unload()  # it would take the second run's installs off
    merged = second.merge_and_unload()
    assert second.merge_and_unload() is merged and first.merge_and_unload() is merged  # merged: nothing to undo
    assert {n: p.requires_grad for n, p in merged.named_parameters()} == {
        "0.weight": True, "0.bias": False, "2.weight": True, "2.bias": True}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # merged: a new sparsify is a first one again
        sparsify(model, SparseConfig("random", density=0.2))
