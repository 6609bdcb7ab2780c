"""Dynamic sparsity (sparsity.dynamic): drop/grow and re-selection at a constant count per tensor."""

import math
from collections import OrderedDict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsity import criteria, masks
from sparsity.compact import CompactAdamW
from sparsity.dynamic import reselect_top, rigl_swap
from sparsity.regularize import snapshot
from sparsity.train import RIGL_LAB_2025, FitState, Reselect, RigL, fit


def positions(m: torch.Tensor) -> list[int]:
    return m.flatten().nonzero().squeeze(1).tolist()


def select(n: int, where: list[int]) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[where] = True
    return m


# ---------------------------------------------------------------- (a) rigl_swap by hand


def test_rigl_swap_drops_the_smallest_changes_and_grows_the_largest_gradients() -> None:
    mask = {"w": select(10, [0, 2, 4, 6, 8])}
    # |delta| of the selected 0, 2, 4, 6, 8: .5 .1 .3 .05 .9 (unselected entries' deltas are ignored)
    delta = {"w": torch.tensor([0.5, 0.0, -0.1, 0.0, 0.3, 0.0, -0.05, 0.0, 0.9, 0.0])}
    # |grad| of the unselected 1, 3, 5, 7, 9: .2 .8 .1 .7 .3; a huge gradient at 2, which is dropped
    grad = {"w": torch.tensor([9.0, 0.2, 99.0, -0.8, 9.0, 0.1, 9.0, 0.7, 9.0, -0.3])}
    new = rigl_swap(mask, delta, grad, 0.4)  # round(0.4 * 5) = 2 swaps
    assert positions(new["w"]) == [0, 3, 4, 7, 8]  # 2 and 6 dropped, 3 and 7 grown, 2 does not regrow
    assert positions(mask["w"]) == [0, 2, 4, 6, 8]  # the input is left alone


def test_rigl_swap_breaks_ties_by_position() -> None:
    mask = {"w": select(8, [1, 2, 5, 6])}
    zeros = {"w": torch.zeros(8)}
    assert positions(rigl_swap(mask, zeros, zeros, 0.5)["w"]) == [0, 3, 5, 6]  # drop 1, 2; grow 0, 3


def test_rigl_swap_is_capped_and_leaves_full_and_frozen_tensors_alone() -> None:
    mask = {
        "w": select(10, [0, 1, 2, 3, 4, 5, 6, 7]),  # 8 of 10: at most 2 can swap
        "full": torch.ones(3, dtype=torch.bool),
        "frozen": torch.zeros(4, dtype=torch.bool),
    }
    delta = {"w": torch.arange(10.0)}  # 0 and 1 moved least
    grad = {"w": torch.arange(10.0)}
    new = rigl_swap(mask, delta, grad, 0.5)  # round(0.5 * 8) = 4, capped at 2; no scores for full, frozen
    assert positions(new["w"]) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert new["full"].all() and not new["frozen"].any()
    assert new["full"] is not mask["full"]
    assert all(torch.equal(rigl_swap(mask, delta, grad, 0.0)[n], mask[n]) for n in mask)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(1, 8),
    cols=st.integers(1, 8),
    density=st.floats(0.05, 0.95),
    fraction=st.floats(0.0, 1.0),
    rounding=st.sampled_from(["floor", "round"]),
)
def test_property_rigl_swap_keeps_counts_and_swaps_the_right_entries(seed, rows, cols, density, fraction,
                                                                     rounding) -> None:
    g = torch.Generator().manual_seed(seed)
    mask = {"a": torch.rand(rows, cols, generator=g) < density, "b": torch.rand(cols, generator=g) < density}
    delta = {n: torch.randn(m.shape, generator=g) for n, m in mask.items()}
    grad = {n: torch.randn(m.shape, generator=g) for n, m in mask.items()}
    new = rigl_swap(mask, delta, grad, fraction, rounding)
    count = math.floor if rounding == "floor" else round
    for name, old in mask.items():
        m = new[name]
        k, n_total = int(old.sum()), old.numel()
        assert m.shape == old.shape and m.dtype == torch.bool
        assert int(m.sum()) == k
        dropped, grown, kept = old & ~m, m & ~old, old & m
        expected = min(count(fraction * k), n_total - k) if 0 < k < n_total else 0
        assert int(dropped.sum()) == int(grown.sum()) == expected
        if expected:
            d, gr = delta[name].abs(), grad[name].abs()
            if kept.any():
                assert d[dropped].max() <= d[kept].min()
            if (~old & ~m).any():
                assert gr[grown].min() >= gr[~old & ~m].max()


# ---------------------------------------------------------------- (b) reselect_top


def test_reselect_top_keeps_each_count_and_takes_the_top_scores() -> None:
    mask = {"w": select(6, [0, 1]), "v": select(5, [4, 3, 2]), "frozen": torch.zeros(2, dtype=torch.bool)}
    scores = {"w": torch.tensor([0.0, 0.1, 5.0, -9.0, 3.0, 1.0]), "v": torch.tensor([1.0, 1.0, 1.0, 2.0, 0.0])}
    new = reselect_top(mask, scores)
    assert positions(new["w"]) == [2, 4]  # larger score wins (no abs: the score is the score)
    assert positions(new["v"]) == [0, 1, 3]  # 3 by score, then ties at 1.0: the earlier 0 and 1
    assert not new["frozen"].any()


# ---------------------------------------------------------------- (c) errors


def test_bad_arguments_are_rejected() -> None:
    mask = {"w": select(4, [0, 1])}
    s = {"w": torch.zeros(4)}
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], got 1.5"):
        rigl_swap(mask, s, s, 1.5)
    for bad in ("0.5", True, None):
        with pytest.raises(TypeError, match="fraction must be a number in"):
            rigl_swap(mask, s, s, bad)
    with pytest.raises(ValueError, match="grow_scores has no entry for 'w'"):
        rigl_swap(mask, s, {"v": torch.zeros(4)}, 0.5)
    with pytest.raises(ValueError, match=r"drop_scores\['w'\] has shape \(3,\)"):
        rigl_swap(mask, {"w": torch.zeros(3)}, s, 0.5)
    with pytest.raises(ValueError, match=r"grow_scores\['w'\] contains NaN"):
        rigl_swap(mask, s, {"w": torch.tensor([0.0, float("nan"), 0.0, 0.0])}, 0.5)
    with pytest.raises(TypeError, match="drop_scores must be a mapping"):
        rigl_swap(mask, [torch.zeros(4)], s, 0.5)
    with pytest.raises(TypeError, match=r"mask\['w'\] must have dtype torch.bool"):
        rigl_swap({"w": torch.ones(4)}, s, s, 0.5)
    with pytest.raises(ValueError, match="scores has no entry for 'w'"):
        reselect_top(mask, {})
    with pytest.raises(TypeError, match=r"scores\['w'\] must be a tensor"):
        reselect_top(mask, {"w": [0.0, 1.0, 2.0, 3.0]})


# ---------------------------------------------------------------- (d) a training run


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step % 4)  # four fixed batches: the loss can go down
    return torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g)


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def test_training_with_rigl_every_k_steps_keeps_the_selection_valid() -> None:
    """The module docstring's loop: fit with a RigL hook that swaps before the optimizer's step."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(8, 16), act=nn.Tanh(), fc2=nn.Linear(16, 4)))
    ref = snapshot(model)
    mask = masks.random(model, 0.2, seed=0, scope="per_tensor", include="all")
    counts = {n: int(m.sum()) for n, m in mask.items()}
    opt = CompactAdamW(model.named_parameters(), mask, lr=1e-2, weight_decay=0.1)
    ever = {n: m.clone() for n, m in mask.items()}
    steps, every = 60, 10

    class HandWrittenRigL:
        def before_step(self, state: FitState) -> None:
            t = state.step
            if t > 0 and t % every == 0:
                grads = {n: p.grad for n, p in model.named_parameters()}
                deltas = {n: p.detach() - ref[n] for n, p in model.named_parameters()}
                new = rigl_swap(opt.mask, deltas, grads, 0.3 * (1 + math.cos(math.pi * t / steps)) / 2, "round")
                opt.reselect(new)
                for name, idx in opt.indices.items():
                    assert idx.dtype == torch.int32
                    assert (idx[1:] > idx[:-1]).all(), name  # sorted, unique
                    assert idx.numel() == counts[name], name
                    assert torch.equal(opt.mask[name], new[name])
                    assert opt.state[dict(model.named_parameters())[name]]["exp_avg"].shape == (counts[name],)
                    ever[name] |= new[name]

    losses = fit(model, opt, _mse, steps, batches=_batch, hooks=[HandWrittenRigL()])["loss"]
    grew = sum(int(ever[n].sum()) - counts[n] for n in counts)
    assert grew > 0  # the selection did move
    for name, p in model.named_parameters():
        assert torch.equal(p.detach()[~ever[name]], ref[name][~ever[name]]), name  # never selected: never moved
    assert sum(losses[-4:]) < sum(losses[:4])

    # The library's hook (sparsity.train.RigL) at the lab's first settings is this loop: the same weights, bit for
    # bit (the committed RigL rows ran with them; the paper's settings, the hook's defaults, end elsewhere).
    torch.manual_seed(0)
    again = nn.Sequential(OrderedDict(fc1=nn.Linear(8, 16), act=nn.Tanh(), fc2=nn.Linear(16, 4)))
    opt2 = CompactAdamW(again.named_parameters(), masks.random(again, 0.2, seed=0, scope="per_tensor", include="all"),
                        lr=1e-2, weight_decay=0.1)
    fit(again, opt2, _mse, steps, batches=_batch, hooks=[RigL(every, steps, snapshot(again), **RIGL_LAB_2025)])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    assert all(torch.equal(opt.mask[n], opt2.mask[n]) for n in counts)
    torch.manual_seed(0)
    paper = nn.Sequential(OrderedDict(fc1=nn.Linear(8, 16), act=nn.Tanh(), fc2=nn.Linear(16, 4)))
    opt3 = CompactAdamW(paper.named_parameters(), masks.random(paper, 0.2, seed=0, scope="per_tensor", include="all"),
                        lr=1e-2, weight_decay=0.1)
    fit(paper, opt3, _mse, steps, batches=_batch, hooks=[RigL(every, steps, snapshot(paper))])
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), paper.parameters()))


def test_the_rigl_hook_refuses_what_it_cannot_swap() -> None:
    model = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="fraction"):
        RigL(5, 10, snapshot(model), fraction=0.0)
    with pytest.raises(ValueError, match="every"):
        RigL(0, 10, snapshot(model))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="reselect"):
        fit(model, opt, _mse, 6, batches=_batch, hooks=[RigL(5, 10, snapshot(model))])


def test_lift_style_reselection_with_the_reselect_hook_follows_the_model() -> None:
    """The docstring's second loop: Reselect after every K-th step with reselect_top on fresh scores."""
    torch.manual_seed(1)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(8, 16), act=nn.Tanh(), fc2=nn.Linear(16, 4)))
    mask = masks.top_k(model, criteria.lift(model, rank=2), 0.1, scope="per_tensor")
    counts = {n: int(m.sum()) for n, m in mask.items()}
    opt = CompactAdamW(model.named_parameters(), mask, lr=5e-2)
    chosen = []

    def select(m: nn.Module, step: int) -> dict[str, torch.Tensor]:
        new = reselect_top(opt.mask, criteria.lift(m, rank=2))
        chosen.append((step, new))
        return new

    fit(model, opt, _mse, 30, batches=_batch, hooks=[Reselect(10, select)])
    assert [step for step, _ in chosen] == [10, 20, 30]
    for _, new in chosen:
        assert {n: int(m.sum()) for n, m in new.items()} == counts
    assert all(torch.equal(opt.mask[n], chosen[-1][1][n]) for n in counts)
    assert any(not torch.equal(chosen[0][1][n], mask[n]) for n in counts)  # the selection followed the model


def test_eps_before_the_bias_correction_is_kingma_and_bas_adam() -> None:
    """The hook makes torch's AdamW take theta -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)."""
    from sparsity.train import EpsBeforeBiasCorrection

    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    start = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    steps, eps = 5, 1e-3  # a large eps, so its placement matters
    fit(model, opt, _mse, steps, batches=_batch, hooks=[EpsBeforeBiasCorrection(eps)])

    again = nn.Linear(8, 4)
    with torch.no_grad():
        for p, s in zip(again.parameters(), start):
            p.copy_(s)
    m = [torch.zeros_like(p) for p in again.parameters()]
    v = [torch.zeros_like(p) for p in again.parameters()]
    for t in range(1, steps + 1):
        again.zero_grad()
        _mse(again, _batch(t - 1)).backward()
        with torch.no_grad():
            for p, m_, v_ in zip(again.parameters(), m, v):
                m_.mul_(0.9).add_(p.grad, alpha=0.1)
                v_.mul_(0.95).addcmul_(p.grad, p.grad, value=0.05)
                p -= 1e-2 * math.sqrt(1 - 0.95**t) / (1 - 0.9**t) * m_ / (v_.sqrt() + eps)
    for p, q in zip(model.parameters(), again.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    plain = nn.Linear(8, 4)  # torch's own placement ends elsewhere: the test can fail
    with torch.no_grad():
        for p, s in zip(plain.parameters(), start):
            p.copy_(s)
    fit(plain, torch.optim.AdamW(plain.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=eps, weight_decay=0.0), _mse,
        steps, batches=_batch)
    assert any((p - q).abs().max() > 1e-5 for p, q in zip(plain.parameters(), again.parameters()))
    with pytest.raises(ValueError, match="eps"):
        EpsBeforeBiasCorrection(0.0)
