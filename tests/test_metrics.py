"""Update metrics (sparsity.metrics): norms, sparsity, rank and mask overlap against hand values."""

import copy
import math

import pytest
import torch
from torch import nn

from sparsity import masks
from sparsity.metrics import distances, mask_overlap, update_norms, update_rank, update_sparsity
from sparsity.regularize import snapshot

D_W = torch.tensor([[1.0, -2.0, 0.0], [0.0, 0.0, 3.0]])
D_B = torch.tensor([0.5, -0.5])


def moved() -> tuple[nn.Linear, dict[str, torch.Tensor]]:
    """A Linear(3, 2) moved from its snapshot by D_W (L1 6, L2 sqrt 14, max 3) and D_B (1, sqrt .5, .5)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ref = snapshot(model)
    with torch.no_grad():
        model.weight.add_(D_W)
        model.bias.add_(D_B)
    return model, ref


def hand(ord: float) -> dict[str, float]:
    return {
        1: {"weight": 6.0, "bias": 1.0},
        2: {"weight": math.sqrt(14.0), "bias": math.sqrt(0.5)},
        math.inf: {"weight": 3.0, "bias": 0.5},
    }[ord]


# ---------------------------------------------------------------- distances and norms


@pytest.mark.parametrize("ord", [1, 2, math.inf])
def test_distances_to_a_snapshot_match_hand_values(ord: float) -> None:
    model, ref = moved()
    got = distances(model, ref, ord)
    assert list(got) == ["weight", "bias"]
    for n, v in hand(ord).items():
        assert got[n] == pytest.approx(v, rel=1e-5), n


@pytest.mark.parametrize("ord", [1, 2, math.inf])
def test_distances_to_a_model_match_hand_values(ord: float) -> None:
    model, ref = moved()
    other = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in other.named_parameters():
            p.copy_(ref[n])
    got = distances(model, other, ord)
    for n, v in hand(ord).items():
        assert got[n] == pytest.approx(v, rel=1e-5), n
    # symmetric
    back = distances(other, model, ord)
    assert back == pytest.approx(got)


def test_distances_to_a_partial_snapshot_and_to_itself() -> None:
    model, ref = moved()
    got = distances(model, {"bias": ref["bias"]}, 1)
    assert got == pytest.approx({"bias": 1.0})
    assert distances(model, {}, 2) == {}
    assert distances(model, model, 2) == {"weight": 0.0, "bias": 0.0}


def test_distances_errors() -> None:
    model, ref = moved()
    with pytest.raises(ValueError, match="ord must be 1, 2 or inf"):
        distances(model, ref, 3)
    with pytest.raises(ValueError, match="ord must be 1, 2 or inf"):
        distances(model, ref, True)
    with pytest.raises(ValueError, match=r"other\['weight'\] has shape"):
        distances(model, {"weight": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="other key 'fc.weight' is not a parameter"):
        distances(model, {"fc.weight": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match=r"other\['bias'\] contains NaN"):
        distances(model, {"bias": torch.tensor([0.0, math.nan])})


def test_update_norms_hand_values_and_shares() -> None:
    model, ref = moved()
    norms = update_norms(model, ref)
    assert list(norms) == ["weight", "bias"]
    w, b = norms["weight"], norms["bias"]
    assert (w.l1, w.l2, w.max) == pytest.approx((6.0, math.sqrt(14.0), 3.0), rel=1e-5)
    assert (b.l1, b.l2, b.max) == pytest.approx((1.0, math.sqrt(0.5), 0.5), rel=1e-5)
    assert w.share == pytest.approx(6 / 7, rel=1e-6)
    assert b.share == pytest.approx(1 / 7, rel=1e-6)
    assert sum(u.share for u in norms.values()) == pytest.approx(1.0)


def test_update_norms_shares_are_zero_when_nothing_moved() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    norms = update_norms(model, snapshot(model))
    assert len(norms) == 4
    for u in norms.values():
        assert (u.l1, u.l2, u.max, u.share) == (0.0, 0.0, 0.0, 0.0)


def test_update_norms_shares_sum_to_one_after_random_moves() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    ref = snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    norms = update_norms(model, ref)
    assert sum(u.share for u in norms.values()) == pytest.approx(1.0)
    assert all(0 < u.share < 1 for u in norms.values())


# ---------------------------------------------------------------- update sparsity


def test_update_sparsity_overall_and_per_tensor() -> None:
    model, ref = moved()  # weight: 3 of 6 entries moved; bias: 2 of 2 moved
    s = update_sparsity(model, ref)
    assert s.per_tensor == {"weight": 3 / 6, "bias": 0 / 2}
    assert s.overall == 3 / 8
    only_w = update_sparsity(model, {"weight": ref["weight"]})
    assert only_w.per_tensor == {"weight": 0.5} and only_w.overall == 0.5


def test_update_sparsity_tolerance() -> None:
    model, ref = moved()
    with torch.no_grad():
        model.weight[0, 2] += 1e-6  # a tiny change on an unmoved entry
    assert update_sparsity(model, ref, tol=1e-5).per_tensor["weight"] == 3 / 6
    assert update_sparsity(model, ref, tol=0.0).per_tensor["weight"] == 2 / 6
    # a tolerance above every change but the 3.0 one
    loose = update_sparsity(model, ref, tol=2.5)
    assert loose.per_tensor == {"weight": 5 / 6, "bias": 1.0}
    assert loose.overall == 7 / 8
    assert update_sparsity(model, ref, tol=10.0).overall == 1.0


def test_update_sparsity_in_bfloat16_ignores_changes_below_its_resolution() -> None:
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ref = snapshot(model)
    with torch.no_grad():
        model.weight[0, 0] += 1e-4  # representable in fp32, below bf16's 2**-7 spacing at 1.0
        model.weight[0, 1] += 0.25  # a real change in bf16 too
    assert model.weight[0, 0].item() != 1.0
    fp32 = update_sparsity(model, ref, tol=1e-5)
    bf16 = update_sparsity(model, ref, tol=1e-5, dtype=torch.bfloat16)
    assert fp32.overall == 2 / 4
    assert bf16.overall == 3 / 4
    assert bf16.per_tensor == {"weight": 3 / 4}


def test_update_sparsity_errors() -> None:
    model, ref = moved()
    with pytest.raises(ValueError, match="tol must be >= 0"):
        update_sparsity(model, ref, tol=-1.0)
    with pytest.raises(ValueError, match="reference is empty"):
        update_sparsity(model, {})
    with pytest.raises(ValueError, match=r"reference\['bias'\] contains NaN"):
        update_sparsity(model, {"bias": torch.tensor([math.nan, 0.0])})


# ---------------------------------------------------------------- rank


def test_update_rank_of_hand_built_matrices() -> None:
    g = torch.Generator().manual_seed(0)
    rank3 = sum(torch.outer(torch.randn(8, generator=g), torch.randn(6, generator=g)) for _ in range(3))
    assert update_rank(rank3) == 3
    assert update_rank(torch.zeros(4, 5)) == 0
    assert update_rank(torch.eye(4)) == 4
    assert update_rank(torch.outer(torch.arange(1.0, 5.0), torch.ones(3))) == 1
    # a relative tolerance can cut small singular values off
    d = torch.diag(torch.tensor([1.0, 1e-3, 1e-6]))
    assert update_rank(d) == 3
    assert update_rank(d, rtol=1e-4) == 2
    assert update_rank(d, rtol=0.5) == 1


def test_update_rank_errors() -> None:
    with pytest.raises(ValueError, match=r"delta must be 2-D, got shape \(5,\)"):
        update_rank(torch.ones(5))
    with pytest.raises(ValueError, match="delta must be 2-D"):
        update_rank(torch.ones(2, 3, 4))
    bad = torch.ones(3, 3)
    bad[1, 1] = math.nan
    with pytest.raises(ValueError, match="delta contains NaN"):
        update_rank(bad)
    with pytest.raises(TypeError, match="delta must be a tensor"):
        update_rank([[1.0, 0.0], [0.0, 1.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rtol must be >= 0"):
        update_rank(torch.eye(2), rtol=-0.1)


# ---------------------------------------------------------------- mask overlap


def bools(bits: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in bits])


def test_mask_overlap_identical_and_disjoint() -> None:
    a = {"x": bools("1100"), "y": bools("001")}
    same = mask_overlap(a, {k: v.clone() for k, v in a.items()})
    assert (same.jaccard, same.a_in_b, same.b_in_a) == (1.0, 1.0, 1.0)
    b = {"x": bools("0011"), "y": bools("110")}
    disjoint = mask_overlap(a, b)
    assert (disjoint.jaccard, disjoint.a_in_b, disjoint.b_in_a) == (0.0, 0.0, 0.0)
    empty = {"x": bools("0000"), "y": bools("000")}
    none = mask_overlap(empty, empty)
    assert (none.jaccard, none.a_in_b, none.density_a, none.chance_jaccard) == (0.0, 0.0, 0.0, 0.0)


def test_mask_overlap_hand_example() -> None:
    # |a| = 3, |b| = 4, |a & b| = 2, |a | b| = 5, n = 10 (split over two tensors)
    a = {"x": bools("111000"), "y": bools("0000")}
    b = {"x": bools("011110"), "y": bools("0000")}
    o = mask_overlap(a, b)
    assert o.jaccard == pytest.approx(2 / 5)
    assert o.a_in_b == pytest.approx(2 / 3)
    assert o.b_in_a == pytest.approx(2 / 4)
    assert (o.density_a, o.density_b) == pytest.approx((0.3, 0.4))
    da, db = 0.3, 0.4
    assert o.chance_jaccard == pytest.approx(da * db / (da + db - da * db))
    assert o.chance_a_in_b == pytest.approx(db)
    assert o.chance_b_in_a == pytest.approx(da)
    # swapping the masks swaps the one-sided values
    r = mask_overlap(b, a)
    assert (r.jaccard, r.a_in_b, r.b_in_a) == pytest.approx((o.jaccard, o.b_in_a, o.a_in_b))


def test_mask_overlap_of_independent_random_masks_is_at_chance() -> None:
    torch.manual_seed(0)
    model = nn.Linear(1000, 100, bias=False)  # 100,000 entries
    a = masks.random(model, 0.1, seed=1)
    b = masks.random(model, 0.3, seed=2)
    o = mask_overlap(a, b)
    assert o.density_a == pytest.approx(0.1) and o.density_b == pytest.approx(0.3)
    assert o.chance_jaccard == pytest.approx(0.03 / 0.37)
    assert abs(o.jaccard - o.chance_jaccard) < 0.01
    assert abs(o.a_in_b - o.chance_a_in_b) < 0.01
    assert abs(o.b_in_a - o.chance_b_in_a) < 0.01


def test_mask_overlap_errors() -> None:
    a = {"x": bools("1100")}
    with pytest.raises(ValueError, match="masks cover different tensors"):
        mask_overlap(a, {"y": bools("1100")})
    with pytest.raises(ValueError, match="masks cover different tensors"):
        mask_overlap(a, {"x": bools("1100"), "y": bools("1")})
    with pytest.raises(ValueError, match=r"b\['x'\] has shape \(5,\), but the parameter has shape \(4,\)"):
        mask_overlap(a, {"x": bools("11000")})
    with pytest.raises(TypeError, match="mask entries must be bool tensors"):
        mask_overlap(a, {"x": torch.tensor([1.0, 1.0, 0.0, 0.0])})
    with pytest.raises(TypeError, match="mask entries must be bool tensors"):
        mask_overlap({"x": torch.tensor([1, 1, 0, 0])}, a)
    with pytest.raises(TypeError, match="a and b must be masks"):
        mask_overlap([bools("1100")], a)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="masks are empty"):
        mask_overlap({}, {})
