"""Criteria (scores) and selection policies (lora_equal, n_m, lift) of the mask layer."""

import pytest
import torch
from torch import nn

from sparsity import criteria, masks


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))


def mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 8, generator=gen), torch.randn(16, 4, generator=gen)) for _ in range(n)]


def hand_grads(model: nn.Module, data: list) -> list[dict[str, torch.Tensor]]:
    out = []
    for batch in data:
        model.zero_grad()
        mse(model, batch).backward()
        out.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    return out


def test_gradient_criteria_match_hand_computation() -> None:
    model, data = mlp(), batches()
    grads = hand_grads(model, data)
    w = model[0].weight.detach()
    total = sum(g["0.weight"] for g in grads)
    torch.testing.assert_close(criteria.gradient(model, mse, data)["0.weight"], total.abs())
    torch.testing.assert_close(criteria.snip(model, mse, data)["0.weight"], (w * total).abs())
    torch.testing.assert_close(criteria.fisher(model, mse, data)["0.weight"], sum(g["0.weight"] ** 2 for g in grads))
    torch.testing.assert_close(criteria.movement(model, mse, data)["0.weight"], -w * total)
    assert all(p.grad is None for p in model.parameters()), "criteria must not leave gradients behind"


def test_criteria_cover_eligible_parameters_only() -> None:
    model = mlp()
    assert set(criteria.magnitude(model)) == {"0.weight", "2.weight"}
    assert set(criteria.gradient(model, mse, batches(1), include="all")) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("name", ["gradient", "snip", "fisher", "movement"])
def test_gradient_criteria_need_data(name: str) -> None:
    fn = getattr(criteria, name)
    with pytest.raises(ValueError, match="needs gradients"):
        fn(mlp(), mse, None)
    with pytest.raises(ValueError, match="batches is empty"):
        fn(mlp(), mse, [])
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        fn(mlp(), "mse", batches(1))


def test_lift_scores_are_the_low_rank_approximation() -> None:
    model = mlp()
    w = model[2].weight.detach()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    expected = ((u[:, :2] * s[:2]) @ vh[:2]).abs()
    torch.testing.assert_close(criteria.lift(model, rank=2)["2.weight"], expected)
    fast = criteria.low_rank_approximation(w, 2, method="lowrank")
    torch.testing.assert_close(fast.abs(), expected, atol=1e-4, rtol=1e-3)


def test_lift_differs_from_magnitude_and_rank_matters() -> None:
    model = mlp()
    by_lift = masks.lift(model, 0.1, rank=1)
    by_magnitude = masks.magnitude(model, 0.1, scope="per_tensor")
    assert masks.density(by_lift) == pytest.approx(masks.density(by_magnitude))
    assert not all(torch.equal(by_lift[n], by_magnitude[n]) for n in by_lift)
    full_rank = masks.lift(model, 0.1, rank=4)
    torch.testing.assert_close(criteria.lift(model, rank=4)["2.weight"], model[2].weight.detach().abs())
    assert all(torch.equal(full_rank[n], by_magnitude[n]) for n in ["2.weight"])


def test_lift_errors() -> None:
    with pytest.raises(ValueError, match=r"lift rank 5 exceeds the smaller side of '2.weight' \(4, 12\)"):
        criteria.lift(mlp(), rank=5)
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, min\(m, n\)\] = \[1, 4\], got 5"):
        criteria.low_rank_approximation(torch.zeros(4, 8), rank=5)
    with pytest.raises(ValueError, match="lift scores matrices only"):
        criteria.lift(mlp(), rank=1, include="all")
    with pytest.raises(ValueError, match="method must be"):
        criteria.lift(mlp(), rank=1, method="qr")


def test_lora_equal_budget_is_r_times_m_plus_n() -> None:
    model = mlp()
    mask = masks.lora_equal(model, criteria.magnitude(model), rank=1)
    assert int(mask["0.weight"].sum()) == 1 * (12 + 8)
    assert int(mask["2.weight"].sum()) == 1 * (4 + 12)
    assert not mask["0.bias"].any()
    full = masks.lora_equal(model, criteria.magnitude(model), rank=10)  # budget above numel: everything
    assert full["2.weight"].all()
    with pytest.raises(ValueError, match="rank must be a positive int"):
        masks.lora_equal(model, criteria.magnitude(model), rank=0)


def test_n_m_keeps_n_best_of_every_m_along_the_input_dimension() -> None:
    model = mlp()
    mask = masks.n_m(model, criteria.magnitude(model), n=2, m=4)
    w = model[0].weight.detach().abs().reshape(-1, 4)
    groups = mask["0.weight"].reshape(-1, 4)
    assert (groups.sum(dim=1) == 2).all()
    kept_min = torch.where(groups, w, torch.inf).min(dim=1).values
    dropped_max = torch.where(groups, -torch.inf, w).max(dim=1).values
    assert (kept_min >= dropped_max).all()


def test_n_m_ties_go_to_the_earlier_entry_and_bad_shapes_fail() -> None:
    model = nn.Linear(4, 1, bias=False)
    mask = masks.n_m(model, {"weight": torch.ones(1, 4)}, n=2, m=4)
    assert mask["weight"].tolist() == [[True, True, False, False]]
    with pytest.raises(ValueError, match="divisible by 4; '0.weight' has 6"):
        odd = nn.Sequential(nn.Linear(6, 4))
        masks.n_m(odd, criteria.magnitude(odd))
    with pytest.raises(ValueError, match="n must be <= m"):
        masks.n_m(model, {"weight": torch.ones(1, 4)}, n=3, m=2)


def test_update_and_layers_criteria() -> None:
    model = mlp()
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model[2].bias[1] += 0.5
    scores = criteria.update(model, ref)
    assert scores["2.bias"][1] == pytest.approx(0.5) and scores["0.weight"].sum() == 0
    layer_scores = criteria.layers(model, "2")
    assert layer_scores["2.weight"].min() == 1 and layer_scores["0.weight"].max() == 0
    assert masks.top_k(model, {"2.weight": layer_scores["2.weight"]}, 1.0)["2.weight"].all()
