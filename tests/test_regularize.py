"""Penalties and proximal steps toward a reference (sparsity.regularize)."""

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from sparsity.regularize import l1_to_init, nuclear_to_init, prox_l1_to_init_, prox_nuclear_to_init_, snapshot


def mlp(seed: int = 0) -> nn.Sequential:
    """fc1: Linear(3, 4) (weight 4x3), fc2: Linear(4, 5) (weight 5x4)."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(3, 4), act=nn.ReLU(), fc2=nn.Linear(4, 5)))


def set_deltas(model: nn.Module, ref: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in deltas:
                p.copy_(ref[n] + deltas[n])


# ---------------------------------------------------------------- snapshot


def test_snapshot_is_a_detached_copy() -> None:
    model = mlp()
    snap = snapshot(model)
    assert list(snap) == [n for n, _ in model.named_parameters()]
    for n, p in model.named_parameters():
        assert torch.equal(snap[n], p)
        assert not snap[n].requires_grad
        assert snap[n].data_ptr() != p.data_ptr()
    frozen = {n: t.clone() for n, t in snap.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(torch.equal(snap[n], frozen[n]) for n in snap)


# ---------------------------------------------------------------- L1


def test_l1_to_init_is_zero_at_the_reference() -> None:
    model = mlp()
    assert l1_to_init(model, snapshot(model)).item() == 0.0


def test_l1_to_init_equals_hand_sum_and_its_gradient_is_sign_of_delta() -> None:
    model = mlp()
    ref = snapshot(model)
    d_w = torch.zeros(4, 3)
    d_w[0, 0], d_w[1, 2], d_w[3, 1] = 0.5, -0.25, 2.0
    d_b = torch.tensor([0.0, -1.0, 0.0, 0.125])
    set_deltas(model, ref, {"fc1.weight": d_w, "fc1.bias": d_b})
    loss = l1_to_init(model, ref)
    torch.testing.assert_close(loss, torch.tensor(0.5 + 0.25 + 2.0 + 1.0 + 0.125))
    loss.backward()
    assert torch.equal(model.fc1.weight.grad, torch.sign(d_w))
    assert torch.equal(model.fc1.bias.grad, torch.sign(d_b))
    assert model.fc1.bias.grad[0].item() == 0.0  # delta 0 -> gradient 0
    assert torch.equal(model.fc2.weight.grad, torch.zeros(5, 4))  # unmoved tensor: all zero


def test_l1_to_init_on_a_subset_of_tensors() -> None:
    model = mlp()
    ref = snapshot(model)
    set_deltas(model, ref, {"fc1.weight": torch.full((4, 3), 0.5), "fc2.bias": torch.full((5,), 3.0)})
    only_w = {"fc1.weight": ref["fc1.weight"]}
    torch.testing.assert_close(l1_to_init(model, only_w), torch.tensor(6.0))
    l1_to_init(model, only_w).backward()
    assert model.fc2.bias.grad is None  # not part of the penalty


# ---------------------------------------------------------------- nuclear


def test_nuclear_to_init_is_the_sum_of_singular_values_of_matrices() -> None:
    model = mlp()
    ref = snapshot(model)
    g = torch.Generator().manual_seed(0)
    d1, d2 = torch.randn(4, 3, generator=g), torch.randn(5, 4, generator=g)
    set_deltas(model, ref, {"fc1.weight": d1, "fc2.weight": d2, "fc1.bias": torch.full((4,), 10.0)})
    got = nuclear_to_init(model, ref)
    expected = torch.linalg.svdvals(model.fc1.weight.detach() - ref["fc1.weight"]).sum() + torch.linalg.svdvals(
        model.fc2.weight.detach() - ref["fc2.weight"]
    ).sum()
    torch.testing.assert_close(got, expected)
    # biases are skipped: changing them does not change the penalty
    set_deltas(model, ref, {"fc1.bias": torch.full((4,), -7.0), "fc2.bias": torch.full((5,), 1.0)})
    torch.testing.assert_close(nuclear_to_init(model, ref), expected)
    # it is differentiable
    nuclear_to_init(model, ref).backward()
    assert model.fc1.weight.grad is not None and model.fc1.weight.grad.abs().sum() > 0
    assert model.fc1.bias.grad is None


def test_nuclear_to_init_of_a_rank_one_delta() -> None:
    model = mlp()
    ref = snapshot(model)
    u, v = torch.tensor([1.0, 2.0, 2.0, 0.0]), torch.tensor([0.0, 3.0, 4.0])  # |u| = 3, |v| = 5
    set_deltas(model, ref, {"fc1.weight": torch.outer(u, v)})
    torch.testing.assert_close(nuclear_to_init(model, ref), torch.tensor(15.0))


def test_nuclear_to_init_needs_a_matrix() -> None:
    model = mlp()
    ref = snapshot(model)
    with pytest.raises(ValueError, match="reference holds no matrix"):
        nuclear_to_init(model, {"fc1.bias": ref["fc1.bias"], "fc2.bias": ref["fc2.bias"]})


# ---------------------------------------------------------------- proximal L1


def test_prox_l1_soft_thresholds_exactly() -> None:
    model = nn.Linear(3, 1, bias=False)
    ref = snapshot(model)
    set_deltas(model, ref, {"weight": torch.tensor([[0.5, -0.05, 0.2]])})
    prox_l1_to_init_(model, ref, 0.1)
    delta = model.weight.detach() - ref["weight"]
    torch.testing.assert_close(delta, torch.tensor([[0.4, 0.0, 0.1]]))
    assert model.weight[0, 1].item() == ref["weight"][0, 1].item()  # exactly back on the reference


def test_prox_l1_sign_and_zero_threshold() -> None:
    model = mlp()
    ref = snapshot(model)
    d = torch.tensor([-3.0, -0.5, 0.0, 0.5])
    set_deltas(model, ref, {"fc1.bias": d})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prox_l1_to_init_(model, ref, 0.0)  # threshold 0: identity
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    prox_l1_to_init_(model, ref, 1.0)
    torch.testing.assert_close(model.fc1.bias.detach() - ref["fc1.bias"], torch.tensor([-2.0, 0.0, 0.0, 0.0]))


def test_prox_l1_with_per_entry_thresholds() -> None:
    model = mlp()
    ref = snapshot(model)
    d_w = torch.full((4, 3), 0.3)
    d_b2 = torch.full((5,), 0.3)
    set_deltas(model, ref, {"fc1.weight": d_w, "fc2.bias": d_b2})
    thr = torch.zeros(4, 3)
    thr[0] = 0.1
    thr[1] = 0.5
    thr[2] = 0.3
    before_fc2_bias = model.fc2.bias.detach().clone()
    prox_l1_to_init_(model, ref, {"fc1.weight": thr})
    expected = torch.tensor([[0.2] * 3, [0.0] * 3, [0.0] * 3, [0.3] * 3])
    torch.testing.assert_close(model.fc1.weight.detach() - ref["fc1.weight"], expected)
    # a tensor absent from the threshold dict is left alone, bit for bit
    assert torch.equal(model.fc2.bias, before_fc2_bias)


def test_prox_l1_errors() -> None:
    model = mlp()
    ref = snapshot(model)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        prox_l1_to_init_(model, ref, -0.1)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        prox_l1_to_init_(model, ref, math.nan)
    with pytest.raises(ValueError, match=r"threshold\['fc1.weight'\] has negative entries"):
        prox_l1_to_init_(model, ref, {"fc1.weight": torch.full((4, 3), -1e-3)})
    with pytest.raises(ValueError, match=r"threshold\['fc1.weight'\] has shape"):
        prox_l1_to_init_(model, ref, {"fc1.weight": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="threshold key 'fc3.weight'"):
        prox_l1_to_init_(model, ref, {"fc3.weight": torch.zeros(3, 4)})
    nan_ref = dict(ref, **{"fc1.bias": torch.full((4,), math.nan)})
    with pytest.raises(ValueError, match=r"reference\['fc1.bias'\] contains NaN"):
        prox_l1_to_init_(model, nan_ref, 0.1)


# ---------------------------------------------------------------- proximal nuclear


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))
    return q


def test_prox_nuclear_soft_thresholds_singular_values() -> None:
    model = mlp()
    ref = snapshot(model)
    u, v = orthonormal(5, 2, 1), orthonormal(4, 2, 2)
    delta = (3.0 * torch.outer(u[:, 0], v[:, 0]) + 0.5 * torch.outer(u[:, 1], v[:, 1])).float()
    d_bias = torch.full((5,), 0.7)
    set_deltas(model, ref, {"fc2.weight": delta, "fc2.bias": d_bias})
    torch.testing.assert_close(
        torch.linalg.svdvals(model.fc2.weight.detach() - ref["fc2.weight"])[:2], torch.tensor([3.0, 0.5])
    )
    fc1_before = model.fc1.weight.detach().clone()
    bias_before = model.fc2.bias.detach().clone()
    prox_nuclear_to_init_(model, ref, 1.0)
    new_delta = model.fc2.weight.detach() - ref["fc2.weight"]
    s = torch.linalg.svdvals(new_delta)
    torch.testing.assert_close(s[0], torch.tensor(2.0))
    assert (s[1:] < 1e-5).all()
    assert int(torch.linalg.matrix_rank(new_delta)) == 1
    torch.testing.assert_close(new_delta, (2.0 * torch.outer(u[:, 0], v[:, 0])).float(), atol=1e-5, rtol=1e-5)
    # 1-D tensors are skipped; a zero delta stays zero
    assert torch.equal(model.fc2.bias, bias_before)
    torch.testing.assert_close(model.fc1.weight.detach(), fc1_before)


def test_prox_nuclear_errors() -> None:
    model = mlp()
    ref = snapshot(model)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        prox_nuclear_to_init_(model, ref, -1.0)
    with pytest.raises(TypeError, match="threshold must be a non-negative number"):
        prox_nuclear_to_init_(model, ref, {"fc1.weight": torch.zeros(4, 3)})  # type: ignore[arg-type]


# ---------------------------------------------------------------- reference errors (all four entry points)

PENALTIES = [
    lambda m, r: l1_to_init(m, r),
    lambda m, r: nuclear_to_init(m, r),
    lambda m, r: prox_l1_to_init_(m, r, 0.1),
    lambda m, r: prox_nuclear_to_init_(m, r, 0.1),
]


@pytest.mark.parametrize("fn", PENALTIES, ids=["l1", "nuclear", "prox_l1", "prox_nuclear"])
def test_bad_references_are_rejected(fn) -> None:
    model = mlp()
    ref = snapshot(model)
    nan = dict(ref)
    nan["fc1.weight"] = ref["fc1.weight"].clone()
    nan["fc1.weight"][1, 1] = math.nan
    with pytest.raises(ValueError, match=r"reference\['fc1.weight'\] contains NaN"):
        fn(model, nan)
    with pytest.raises(ValueError, match=r"reference\['fc2.weight'\] has shape \(4, 5\)"):
        fn(model, dict(ref, **{"fc2.weight": torch.zeros(4, 5)}))
    with pytest.raises(ValueError, match="reference key 'fc3.weight' is not a parameter"):
        fn(model, dict(ref, **{"fc3.weight": torch.zeros(2, 2)}))
    with pytest.raises(TypeError, match="reference must be a mapping"):
        fn(model, list(ref.values()))
    # a failed call leaves the model untouched
    assert all(torch.equal(ref[n], p) for n, p in model.named_parameters())


def test_empty_reference_is_refused() -> None:
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="reference is empty"):
        l1_to_init(model, {})
