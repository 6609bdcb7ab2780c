"""The compact optimizer (sparsity.compact): [k]-sized state, MaskedAdamW's trajectory value for value."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from optim_cases import (
    assert_all_equal,
    mlp,
    params,
    partial_mask,
    roundtrip,
    train_step,
)
from torch import nn

from sparsity import masks
from sparsity.compact import CompactAdamW
from sparsity.optim import MaskedAdamW

# ---------------------------------------------------------------- (a) same trajectory as MaskedAdamW


@pytest.mark.parametrize("mask_kind", ["partial", "none"])
def test_matches_masked_adamw_value_for_value_over_200_steps(mask_kind: str) -> None:
    sizes = (13, 37, 11)  # odd sizes: the [k] arrays and the dense tensors split differently into SIMD lanes
    a, b = mlp(sizes=sizes), mlp(sizes=sizes)
    mask = None
    if mask_kind == "partial":
        mask = masks.random(a, 0.3, seed=1, scope="per_tensor", include="all")
        mask["fc2.weight"] = torch.zeros_like(mask["fc2.weight"])
    dense = MaskedAdamW(a.named_parameters(), mask, lr=1e-2, weight_decay=0.1)
    compact = CompactAdamW(b.named_parameters(), mask, lr=1e-2, weight_decay=0.1, fused=False)  # the reference step
    for step in range(200):
        train_step(a, dense, step, sizes)
        for p, q in zip(a.parameters(), b.parameters()):
            q.grad = p.grad.clone()  # the same gradients (the weights are equal: checked below)
        compact.step()
        assert_all_equal(params(a), params(b))
    assert not torch.equal(b.fc1.weight, mlp(sizes=sizes).fc1.weight)  # it did train
    if mask is not None:  # the compact moments are the selected entries of the dense ones
        m = mask["fc1.weight"]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(compact.state[b.fc1.weight][key], dense.state[a.fc1.weight][key][m])


def test_state_is_compact_and_selection_sorted_unique_int32() -> None:
    model = mlp()
    mask = partial_mask(model)
    opt = CompactAdamW(model.named_parameters(), mask, lr=1e-2)
    start = params(model)
    for step in range(5):
        train_step(model, opt, step)
    k = int(mask["fc1.weight"].sum())
    idx = opt.indices["fc1.weight"]
    assert idx.dtype == torch.int32 and idx.shape == (k,)
    assert torch.equal(idx, mask["fc1.weight"].flatten().nonzero().squeeze(1).int())
    state = opt.state[model.fc1.weight]
    assert state["exp_avg"].shape == state["exp_avg_sq"].shape == (k,)
    assert state["step"].item() == 5
    # fully selected and absent tensors train densely; a frozen one holds no state and never moves
    assert opt.state[model.fc1.bias]["exp_avg"].shape == model.fc1.bias.shape
    assert opt.state[model.fc2.bias]["exp_avg"].shape == model.fc2.bias.shape
    assert model.fc2.weight not in opt.state
    assert torch.equal(model.fc2.weight, start["fc2.weight"])
    assert set(opt.indices) == {"fc1.weight", "fc2.weight"}  # all True is the same as absent
    assert opt.indices["fc2.weight"].numel() == 0
    rebuilt = opt.mask
    assert rebuilt.keys() == {"fc1.weight", "fc2.weight"}
    assert all(torch.equal(rebuilt[n], mask[n]) for n in rebuilt)


# ---------------------------------------------------------------- (b) property test

MODES = ("all", "none", "partial", "absent")


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    d_in=st.integers(1, 9),
    d_hid=st.integers(1, 19),
    d_out=st.integers(1, 5),
    modes=st.lists(st.sampled_from(MODES), min_size=4, max_size=4),
    density=st.floats(0.0, 1.0),
    lr=st.floats(1e-4, 0.5),
    weight_decay=st.floats(0.0, 1.0),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.0, 0.999),
    eps=st.sampled_from([1e-8, 1e-6, 1e-3]),
    steps=st.integers(1, 15),
)
def test_property_matches_masked_adamw_and_unselected_entries_never_change(
    seed, d_in, d_hid, d_out, modes, density, lr, weight_decay, beta1, beta2, eps, steps
) -> None:
    sizes = (d_in, d_hid, d_out)
    a, b = mlp(seed, sizes), mlp(seed, sizes)
    g = torch.Generator().manual_seed(seed)
    mask = {}
    for (name, p), mode in zip(a.named_parameters(), modes):
        if mode == "all":
            mask[name] = torch.ones_like(p, dtype=torch.bool)
        elif mode == "none":
            mask[name] = torch.zeros_like(p, dtype=torch.bool)
        elif mode == "partial":
            mask[name] = torch.rand(p.shape, generator=g) < density
    hp = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    dense = MaskedAdamW(a.named_parameters(), mask, **hp)
    compact = CompactAdamW(b.named_parameters(), mask, **hp, fused=False)  # the reference step
    start = params(b)
    for step in range(steps):
        train_step(a, dense, step, sizes)
        train_step(b, compact, step, sizes)
    assert_all_equal(params(a), params(b))
    for name, p in b.named_parameters():
        if name in mask:
            m = mask[name]
            assert torch.equal(p.detach()[~m], start[name][~m]), name
            if not m.any():
                assert p not in compact.state
            elif not m.all():
                assert compact.state[p]["exp_avg"].shape == (int(m.sum()),)


# ---------------------------------------------------------------- (c) memory


def bias_free_mlp(widths: tuple[int, ...]) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(i, o, bias=False) for i, o in zip(widths, widths[1:])])


def filled_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = torch.ones_like(p)


def test_state_bytes_at_5_percent_density_is_under_8_percent_of_adamw() -> None:
    model = bias_free_mlp((100, 200, 200, 100))  # 80,000 weights in 3 tensors
    mask = masks.random(model, 0.05, scope="per_tensor")
    opt = CompactAdamW(model.named_parameters(), mask)
    filled_grads(model)
    opt.step()
    reference = torch.optim.AdamW(bias_free_mlp((100, 200, 200, 100)).parameters())
    for p in reference.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    reference.step()
    adamw_bytes = sum(t.nbytes for s in reference.state.values() for t in s.values())
    n, k = 80_000, sum(int(m.sum()) for m in mask.values())
    assert k == 4_000
    # per selected entry: two float32 moments + one int32 index = 12 bytes; per tensor: a 4-byte step
    assert opt.state_bytes() == 12 * k + 4 * 3
    assert adamw_bytes == 8 * n + 4 * 3
    ratio = opt.state_bytes() / adamw_bytes
    assert ratio <= 0.08
    assert ratio == pytest.approx(1.5 * 0.05, rel=1e-3)


# ---------------------------------------------------------------- (d) resume


def test_state_dict_resume_is_bit_exact() -> None:
    model = mlp()
    mask = partial_mask(model)
    opt = CompactAdamW(model.named_parameters(), mask, lr=1e-2, weight_decay=0.1)
    for step in range(10):
        train_step(model, opt, step)
    saved_model = roundtrip(model.state_dict())
    saved_opt = roundtrip(opt.state_dict())
    assert set(saved_opt) >= {"state", "param_groups", "indices"}
    for step in range(10, 20):
        train_step(model, opt, step)

    fresh = mlp(seed=99)
    fresh.load_state_dict(saved_model)
    # built with another mask: the saved selection wins
    opt_b = CompactAdamW(fresh.named_parameters(), None, lr=1e-2, weight_decay=0.1)
    opt_b.load_state_dict(saved_opt)
    assert opt_b.indices.keys() == opt.indices.keys()
    assert all(torch.equal(opt_b.indices[n], opt.indices[n]) for n in opt.indices)
    for step in range(10, 20):
        train_step(fresh, opt_b, step)
    assert_all_equal(params(model), params(fresh))
    sa, sb = opt.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for key in sa[i]:
            assert torch.equal(sa[i][key], sb[i][key]), (i, key)


def test_state_dict_indices_are_a_copy() -> None:
    model = mlp()
    opt = CompactAdamW(model.named_parameters(), partial_mask(model))
    sd = opt.state_dict()
    sd["indices"]["fc1.weight"].fill_(0)
    assert (opt.indices["fc1.weight"][1:] > opt.indices["fc1.weight"][:-1]).all()


def saved_after_steps(steps: int = 3) -> tuple[nn.Module, CompactAdamW, dict]:
    model = mlp()
    opt = CompactAdamW(model.named_parameters(), partial_mask(model), lr=1e-2)
    for step in range(steps):
        train_step(model, opt, step)
    return model, opt, roundtrip(opt.state_dict())


def test_loading_bad_state_dicts_is_an_error_and_changes_nothing() -> None:
    model, opt, sd = saved_after_steps()
    before = {n: i.clone() for n, i in opt.indices.items()}
    plain = torch.optim.AdamW(model.named_parameters()).state_dict()
    with pytest.raises(ValueError, match="no 'indices': it was not saved by CompactAdamW"):
        opt.load_state_dict(plain)

    cases = [
        ({"fc9.weight": torch.tensor([0], dtype=torch.int32)}, ValueError, "'fc9.weight' is not a parameter"),
        ({"fc1.weight": torch.tensor([0, 1])}, TypeError, r"\['fc1.weight'\] must be a 1-D torch.int32 tensor"),
        ({"fc1.weight": torch.tensor([3, 1], dtype=torch.int32)}, ValueError, "must be sorted and unique"),
        ({"fc1.weight": torch.tensor([1, 1], dtype=torch.int32)}, ValueError, "must be sorted and unique"),
        ({"fc1.weight": torch.tensor([0, 35], dtype=torch.int32)}, ValueError, r"outside \[0, 35\)"),
        ({"fc1.weight": torch.tensor([-1, 3], dtype=torch.int32)}, ValueError, r"outside \[0, 35\)"),
    ]
    for indices, exc, match in cases:
        bad = dict(sd, indices=indices)
        with pytest.raises(exc, match=match):
            opt.load_state_dict(bad)
    # indices that disagree with the saved moments (k entries of state, k + 1 indices)
    k = sd["indices"]["fc1.weight"].numel()
    more = torch.arange(k + 1, dtype=torch.int32)
    expected = rf"'fc1.weight' has exp_avg of shape \({k},\), but this optimizer needs \({k + 1},\)"
    with pytest.raises(ValueError, match=expected):
        opt.load_state_dict(dict(sd, indices=dict(sd["indices"], **{"fc1.weight": more})))
    assert opt.indices.keys() == before.keys()
    assert all(torch.equal(opt.indices[n], before[n]) for n in before)


# ---------------------------------------------------------------- (e) reselect


class Vector(nn.Module):
    def __init__(self, n: int = 10) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.arange(n, dtype=torch.float32))


def select(n: int, positions: list[int]) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[positions] = True
    return m


def test_reselect_moves_kept_moments_and_zeros_grown_ones() -> None:
    model = Vector()
    opt = CompactAdamW(model.named_parameters(), {"w": select(10, [1, 4, 7])}, lr=0.1, weight_decay=0.0)
    grads = [torch.arange(10.0) + 1, torch.arange(10.0) * -2]
    for g in grads:
        model.w.grad = g.clone()
        opt.step()
    state = opt.state[model.w]
    m1, m2 = state["exp_avg"].clone(), state["exp_avg_sq"].clone()
    b1, b2 = 0.9, 0.999  # the moments by hand, at positions 1, 4, 7
    pos = torch.tensor([1, 4, 7])
    hand1 = (1 - b1) * b1 * grads[0][pos] + (1 - b1) * grads[1][pos]
    hand2 = (1 - b2) * b2 * grads[0][pos] ** 2 + (1 - b2) * grads[1][pos] ** 2
    torch.testing.assert_close(m1, hand1)
    torch.testing.assert_close(m2, hand2)

    before = model.w.detach().clone()
    opt.reselect({"w": select(10, [4, 5, 7])})
    assert torch.equal(opt.indices["w"], torch.tensor([4, 5, 7], dtype=torch.int32))
    state = opt.state[model.w]
    assert torch.equal(state["exp_avg"], torch.stack([m1[1], torch.tensor(0.0), m1[2]]))
    assert torch.equal(state["exp_avg_sq"], torch.stack([m2[1], torch.tensor(0.0), m2[2]]))
    assert state["step"].item() == 2
    assert torch.equal(model.w.detach(), before)  # reselect itself moves nothing

    model.w.grad = torch.ones(10)
    opt.step()
    moved = (model.w.detach() != before).nonzero().squeeze(1).tolist()
    assert moved == [4, 5, 7]  # 1 is dropped and stays put, 5 is grown and trains
    assert opt.state[model.w]["step"].item() == 3


def test_reselect_before_any_step_only_changes_the_selection() -> None:
    model = mlp()
    mask = partial_mask(model)
    opt = CompactAdamW(model.named_parameters(), mask)
    new = dict(mask, **{"fc1.weight": mask["fc1.weight"].flip(0)})
    opt.reselect(new)
    assert not opt.state
    assert torch.equal(opt.mask["fc1.weight"], new["fc1.weight"])


def test_reselect_that_changes_a_count_is_an_error_naming_the_tensor() -> None:
    model = mlp()
    mask = partial_mask(model)
    opt = CompactAdamW(model.named_parameters(), mask)
    before = opt.indices["fc1.weight"].clone()
    grown = mask["fc1.weight"].clone()
    grown.view(-1)[(~grown).flatten().nonzero()[0]] = True
    k = int(mask["fc1.weight"].sum())
    expected = rf"new_mask\['fc1.weight'\] selects {k + 1} entries but 'fc1.weight' trains {k}"
    with pytest.raises(ValueError, match=expected):
        opt.reselect(dict(mask, **{"fc1.weight": grown}))
    with pytest.raises(ValueError, match=r"new_mask\['fc2.bias'\] selects 0 entries but 'fc2.bias' trains 3"):
        opt.reselect(dict(mask, **{"fc2.bias": torch.zeros(3, dtype=torch.bool)}))
    with pytest.raises(ValueError, match=r"'fc2.weight' trains 0"):
        opt.reselect({"fc1.weight": mask["fc1.weight"]})  # fc2.weight absent = all of it
    with pytest.raises(ValueError, match=r"new_mask\['fc1.weight'\] has shape"):
        opt.reselect({"fc1.weight": torch.ones(3, dtype=torch.bool)})
    assert torch.equal(opt.indices["fc1.weight"], before)


# ---------------------------------------------------------------- (f) errors


def test_unnamed_params_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="named_parameters"):
        CompactAdamW(mlp().parameters())


def test_bad_masks_and_hyperparameters_are_rejected() -> None:
    model = mlp()
    with pytest.raises(ValueError, match="mask key 'fc3.weight' is not a parameter"):
        CompactAdamW(model.named_parameters(), {"fc3.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"mask\['fc1.weight'\] must have dtype torch.bool"):
        CompactAdamW(model.named_parameters(), {"fc1.weight": torch.ones(7, 5)})
    with pytest.raises(ValueError, match="lr must be >= 0"):
        CompactAdamW(model.named_parameters(), lr=-1e-3)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        CompactAdamW(model.named_parameters(), weight_decay=-0.1)
    with pytest.raises(ValueError, match="betas must be two numbers in"):
        CompactAdamW(model.named_parameters(), betas=(1.0, 0.9))


def test_non_contiguous_partly_selected_parameter_is_rejected() -> None:
    model = nn.Module()
    model.w = nn.Parameter(torch.randn(4, 6).t())
    mask = {"w": torch.rand(6, 4, generator=torch.Generator().manual_seed(0)) < 0.5}
    with pytest.raises(ValueError, match="parameter 'w' is not contiguous"):
        CompactAdamW(model.named_parameters(), mask)
    CompactAdamW(model.named_parameters(), {"w": torch.zeros(6, 4, dtype=torch.bool)})  # frozen: fine


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Value for value: NaN in the same places, every other entry equal (a zero's sign aside)."""
    nan = torch.isnan(a)
    return torch.equal(nan, torch.isnan(b)) and torch.equal(a[~nan], b[~nan])


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(n=st.integers(1, 70), seed=st.integers(0, 10_000), steps=st.integers(1, 4),
       special=st.sampled_from(["none", "zeros", "signed_zeros", "nan"]))
def test_the_claim_as_stated_value_for_value_with_zeros_and_nan(n: int, seed: int, steps: int, special: str) -> None:
    """What the module docstring claims, on inputs that hit it: exact zeros of both signs in the
    weights and gradients, and NaN gradients; lengths that split differently into SIMD lanes."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(n, generator=g)
    mask = torch.rand(n, generator=g) < 0.6
    grads = [torch.randn(n, generator=g) for _ in range(steps)]
    if special != "none":
        hit = torch.rand(n, generator=g) < 0.3
        fill = {"zeros": 0.0, "signed_zeros": -0.0, "nan": float("nan")}[special]
        start[hit & (torch.rand(n, generator=g) < 0.5)] = 0.0 if special != "signed_zeros" else -0.0
        for grad in grads:
            grad[hit] = fill
    a, b = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    dense = MaskedAdamW([("w", a)], {"w": mask}, lr=1e-2, weight_decay=0.1)
    compact = CompactAdamW([("w", b)], {"w": mask}, lr=1e-2, weight_decay=0.1, fused=False)
    for grad in grads:
        a.grad, b.grad = grad.clone(), grad.clone()
        dense.step()
        compact.step()
        assert _same_values(a.detach(), b.detach())
    assert torch.equal(b.detach()[~mask].view(torch.int32), start[~mask].view(torch.int32))  # bits untouched
