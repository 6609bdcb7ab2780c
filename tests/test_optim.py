"""The masked optimizers (sparsity.optim): masked entries never move, the rest is torch.optim."""

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

from sparsity.optim import MaskedAdamW, MaskedSGD

# ---------------------------------------------------------------- (a) equivalence with torch.optim


@pytest.mark.parametrize("mask_kind", ["none", "full"])
@pytest.mark.parametrize("hp", [dict(weight_decay=0.0), dict(weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6)])
def test_adamw_without_mask_matches_torch_bit_for_bit(mask_kind: str, hp: dict) -> None:
    a, b = mlp(), mlp()
    mask = None if mask_kind == "none" else {n: torch.ones_like(p, dtype=torch.bool) for n, p in a.named_parameters()}
    ours = MaskedAdamW(a.named_parameters(), mask, lr=1e-2, **hp)
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, foreach=False, **hp)
    for step in range(50):
        train_step(a, ours, step)
        train_step(b, ref, step)
        assert_all_equal(params(a), params(b))
    assert not torch.equal(a.fc1.weight, mlp().fc1.weight)  # it did train


@pytest.mark.parametrize("mask_kind", ["none", "full"])
@pytest.mark.parametrize(
    "hp",
    [
        dict(),
        dict(momentum=0.9),
        dict(momentum=0.9, weight_decay=1e-2),
        dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
        dict(momentum=0.5, dampening=0.1, weight_decay=0.05),
    ],
)
def test_sgd_without_mask_matches_torch_bit_for_bit(mask_kind: str, hp: dict) -> None:
    a, b = mlp(), mlp()
    mask = None if mask_kind == "none" else {n: torch.ones_like(p, dtype=torch.bool) for n, p in a.named_parameters()}
    ours = MaskedSGD(a.named_parameters(), mask, lr=5e-2, **hp)
    ref = torch.optim.SGD(b.parameters(), lr=5e-2, foreach=False, **hp)
    for step in range(50):
        train_step(a, ours, step)
        train_step(b, ref, step)
        assert_all_equal(params(a), params(b))
    assert not torch.equal(a.fc1.weight, mlp().fc1.weight)


# ---------------------------------------------------------------- (b) the headline


def check_masked_run(model: nn.Module, opt: torch.optim.Optimizer, mask: dict, steps: int) -> None:
    start = params(model)
    for step in range(steps):
        train_step(model, opt, step)
    end = params(model)
    for name, p0 in start.items():
        m = mask.get(name, torch.ones_like(p0, dtype=torch.bool))
        assert torch.equal(end[name][~m], p0[~m]), f"{name}: a masked entry moved"
        assert (end[name][m] != p0[m]).all(), f"{name}: a selected entry did not move"
    assert 0 < int(mask["fc1.weight"].sum()) < mask["fc1.weight"].numel()


def test_masked_adamw_keeps_masked_entries_bit_identical_over_1000_steps() -> None:
    model = mlp()
    mask = partial_mask(model)
    opt = MaskedAdamW(model.named_parameters(), mask, lr=1e-2, weight_decay=0.1)
    check_masked_run(model, opt, mask, 1000)


def test_masked_sgd_keeps_masked_entries_bit_identical_over_1000_steps() -> None:
    model = mlp()
    mask = partial_mask(model)
    opt = MaskedSGD(model.named_parameters(), mask, lr=1e-2, momentum=0.9, weight_decay=1e-2)
    check_masked_run(model, opt, mask, 1000)


# ---------------------------------------------------------------- (c) the pitfall it avoids


def zero_masked_grads(mask: dict):
    def hook(model: nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in mask:
                p.grad *= mask[n]

    return hook


def test_pitfall_zeroing_gradients_does_not_freeze_entries_under_adamw_weight_decay() -> None:
    """grad *= mask with plain AdamW: decoupled weight decay still shrinks every masked entry."""
    model = mlp()
    mask = partial_mask(model)
    lr, wd, steps = 1e-2, 0.1, 100
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, foreach=False)
    start = params(model)
    for step in range(steps):
        train_step(model, opt, step, grad_hook=zero_masked_grads(mask))
    frozen_before = start["fc2.weight"]
    frozen_after = model.fc2.weight.detach()
    assert (frozen_after != frozen_before).all()  # every "frozen" entry moved
    # ... and by exactly the weight decay: p0 * (1 - lr * wd) ** steps
    torch.testing.assert_close(frozen_after, frozen_before * (1 - lr * wd) ** steps)
    m = mask["fc1.weight"]
    assert (model.fc1.weight.detach()[~m] != start["fc1.weight"][~m]).all()

    # the masked optimizer under the same settings leaves them untouched
    model2 = mlp()
    opt2 = MaskedAdamW(model2.named_parameters(), mask, lr=lr, weight_decay=wd)
    for step in range(steps):
        train_step(model2, opt2, step)
    assert torch.equal(model2.fc2.weight, start["fc2.weight"])
    assert torch.equal(model2.fc1.weight.detach()[~m], start["fc1.weight"][~m])


def test_pitfall_zeroing_gradients_does_not_freeze_entries_under_sgd_weight_decay() -> None:
    """Coupled weight decay (added to the gradient inside SGD) moves zero-gradient entries too."""
    model = mlp()
    mask = partial_mask(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=1e-2, foreach=False)
    start = params(model)
    for step in range(20):
        train_step(model, opt, step, grad_hook=zero_masked_grads(mask))
    assert (model.fc2.weight.detach() != start["fc2.weight"]).all()


# ---------------------------------------------------------------- (d) property test

MODES = ("all", "none", "partial", "absent")


def make_mask(model: nn.Module, modes: list[str], seed: int, density: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = {}
    for (name, p), mode in zip(model.named_parameters(), modes):
        if mode == "all":
            mask[name] = torch.ones_like(p, dtype=torch.bool)
        elif mode == "none":
            mask[name] = torch.zeros_like(p, dtype=torch.bool)
        elif mode == "partial":
            mask[name] = torch.rand(p.shape, generator=g) < density
    return mask


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    d_in=st.integers(1, 5),
    d_hid=st.integers(1, 6),
    d_out=st.integers(1, 4),
    modes=st.lists(st.sampled_from(MODES), min_size=4, max_size=4),
    density=st.floats(0.0, 1.0),
    lr=st.floats(1e-4, 0.5),
    weight_decay=st.floats(0.0, 1.0),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.0, 0.999),
    momentum=st.floats(0.0, 0.99),
    nesterov=st.booleans(),
    steps=st.integers(1, 20),
)
def test_property_masked_entries_never_change(
    seed, d_in, d_hid, d_out, modes, density, lr, weight_decay, beta1, beta2, momentum, nesterov, steps
) -> None:
    sizes = (d_in, d_hid, d_out)
    nesterov = nesterov and momentum > 0
    for make_opt in (
        lambda m, mask: MaskedAdamW(m.named_parameters(), mask, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay),
        lambda m, mask: MaskedSGD(
            m.named_parameters(), mask, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        ),
    ):
        model = mlp(seed, sizes)
        mask = make_mask(model, modes, seed, density)
        opt = make_opt(model, mask)
        start = params(model)
        for step in range(steps):
            train_step(model, opt, step, sizes)
        for name, p in model.named_parameters():
            if name in mask:
                m = mask[name]
                assert torch.equal(p.detach()[~m], start[name][~m]), name
                if not m.any():
                    assert p not in opt.state
                    assert torch.equal(p.detach(), start[name])


# ---------------------------------------------------------------- (e) state and absent params


@pytest.mark.parametrize("opt_cls", [MaskedAdamW, MaskedSGD])
def test_frozen_params_hold_no_state_and_absent_params_train_fully(opt_cls) -> None:
    model = mlp()
    mask = partial_mask(model)  # fc2.weight all False, fc2.bias absent
    kw = dict(momentum=0.9) if opt_cls is MaskedSGD else {}
    opt = opt_cls(model.named_parameters(), mask, lr=1e-2, **kw)
    start = params(model)
    for step in range(5):
        train_step(model, opt, step)
    assert model.fc2.weight not in opt.state
    assert torch.equal(model.fc2.weight, start["fc2.weight"])
    for name in ("fc1.weight", "fc1.bias", "fc2.bias"):
        assert dict(model.named_parameters())[name] in opt.state, name
    assert (model.fc2.bias.detach() != start["fc2.bias"]).all()
    state = opt.state[model.fc1.weight]
    if opt_cls is MaskedAdamW:
        assert state["exp_avg"].shape == model.fc1.weight.shape
        assert state["step"].item() == 5
    else:
        assert state["momentum_buffer"].shape == model.fc1.weight.shape

    # an absent parameter is exactly as trainable as one with a full mask
    model2 = mlp()
    full = dict(mask, **{"fc2.bias": torch.ones_like(model2.fc2.bias, dtype=torch.bool)})
    opt2 = opt_cls(model2.named_parameters(), full, lr=1e-2, **kw)
    for step in range(5):
        train_step(model2, opt2, step)
    assert_all_equal(params(model), params(model2))


def test_params_without_grad_are_skipped() -> None:
    model = mlp()
    model.fc2.bias.requires_grad_(False)
    opt = MaskedAdamW(model.named_parameters(), None, lr=1e-2, weight_decay=0.1)
    before = model.fc2.bias.detach().clone()
    train_step(model, opt, 0)
    assert model.fc2.bias not in opt.state
    assert torch.equal(model.fc2.bias, before)


# ---------------------------------------------------------------- (f) resume


OPTS = {
    "adamw": lambda m, mask: MaskedAdamW(m.named_parameters(), mask, lr=1e-2, weight_decay=0.1),
    "sgd": lambda m, mask: MaskedSGD(m.named_parameters(), mask, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-2),
}


@pytest.mark.parametrize("kind", OPTS)
def test_state_dict_resume_is_bit_exact(kind: str) -> None:
    make = OPTS[kind]
    model = mlp()
    mask = partial_mask(model)
    opt = make(model, mask)
    for step in range(10):
        train_step(model, opt, step)
    saved_model = roundtrip(model.state_dict())
    saved_opt = roundtrip(opt.state_dict())
    assert set(saved_opt) >= {"state", "param_groups", "mask"}
    for step in range(10, 20):
        train_step(model, opt, step)
    a = params(model)

    fresh = mlp(seed=99)
    fresh.load_state_dict(saved_model)
    opt_b = make(fresh, mask)
    opt_b.load_state_dict(saved_opt)
    for step in range(10, 20):
        train_step(fresh, opt_b, step)
    assert_all_equal(a, params(fresh))
    # optimizer state also agrees
    sa, sb = opt.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)


@pytest.mark.parametrize("kind", OPTS)
def test_mask_travels_in_the_state_dict(kind: str) -> None:
    make = OPTS[kind]
    model = mlp()
    mask = partial_mask(model)
    opt = make(model, mask)
    for step in range(10):
        train_step(model, opt, step)
    sd = roundtrip(opt.state_dict())
    assert sd["mask"].keys() == mask.keys()
    assert all(torch.equal(sd["mask"][n], mask[n]) for n in mask)
    saved_model = roundtrip(model.state_dict())
    for step in range(10, 20):
        train_step(model, opt, step)

    # an optimizer built with another mask (here: everything trainable) gets the saved one back
    fresh = mlp(seed=3)
    fresh.load_state_dict(saved_model)
    other = {n: torch.ones_like(p, dtype=torch.bool) for n, p in fresh.named_parameters()}
    opt_b = make(fresh, other)
    opt_b.load_state_dict(sd)
    assert opt_b.mask.keys() == mask.keys()
    assert all(torch.equal(opt_b.mask[n], mask[n]) for n in mask)
    for step in range(10, 20):
        train_step(fresh, opt_b, step)
    assert_all_equal(params(model), params(fresh))


def test_state_dict_mask_is_a_copy() -> None:
    model = mlp()
    mask = partial_mask(model)
    opt = MaskedAdamW(model.named_parameters(), mask)
    sd = opt.state_dict()
    sd["mask"]["fc2.weight"].fill_(True)
    assert not opt.mask["fc2.weight"].any()


def test_loaded_mask_is_a_copy() -> None:
    model = mlp()
    opt = MaskedAdamW(model.named_parameters(), partial_mask(model))
    sd = opt.state_dict()
    opt.load_state_dict(sd)
    sd["mask"]["fc2.weight"].fill_(True)
    assert not opt.mask["fc2.weight"].any()


# ---------------------------------------------------------------- (g) errors


@pytest.mark.parametrize("opt_cls", [MaskedAdamW, MaskedSGD])
def test_unnamed_params_are_a_type_error(opt_cls) -> None:
    with pytest.raises(TypeError, match="named_parameters"):
        opt_cls(mlp().parameters())


@pytest.mark.parametrize("opt_cls", [MaskedAdamW, MaskedSGD])
def test_bad_masks_are_rejected(opt_cls) -> None:
    model = mlp()
    with pytest.raises(ValueError, match="mask key 'fc3.weight' is not a parameter"):
        opt_cls(model.named_parameters(), {"fc3.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"mask\['fc1.weight'\] has shape \(5, 7\)"):
        opt_cls(model.named_parameters(), {"fc1.weight": torch.ones(5, 7, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"mask\['fc1.weight'\] must have dtype torch.bool"):
        opt_cls(model.named_parameters(), {"fc1.weight": torch.ones(7, 5)})
    with pytest.raises(TypeError, match=r"mask\['fc1.weight'\] must have dtype torch.bool"):
        opt_cls(model.named_parameters(), {"fc1.weight": torch.ones(7, 5, dtype=torch.uint8)})


def test_bad_hyperparameters_are_rejected() -> None:
    model = mlp()
    with pytest.raises(ValueError, match="lr must be >= 0"):
        MaskedAdamW(model.named_parameters(), lr=-1e-3)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        MaskedSGD(model.named_parameters(), lr=-1e-3)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        MaskedAdamW(model.named_parameters(), weight_decay=-0.1)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        MaskedAdamW(model.named_parameters(), eps=-1e-8)
    for betas in [(1.0, 0.999), (0.9, 1.0), (-0.1, 0.999), (0.9,), (0.9, 0.99, 0.9)]:
        with pytest.raises(ValueError, match="betas must be two numbers in"):
            MaskedAdamW(model.named_parameters(), betas=betas)
    with pytest.raises(ValueError, match="nesterov needs momentum > 0"):
        MaskedSGD(model.named_parameters(), nesterov=True)
    with pytest.raises(ValueError, match="nesterov needs momentum > 0 and dampening = 0"):
        MaskedSGD(model.named_parameters(), momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="momentum must be >= 0"):
        MaskedSGD(model.named_parameters(), momentum=-0.9)


def test_loading_a_plain_torch_state_dict_is_an_error() -> None:
    model = mlp()
    plain = torch.optim.AdamW(model.named_parameters(), lr=1e-2)
    train_step(model, plain, 0)
    opt = MaskedAdamW(model.named_parameters(), lr=1e-2)
    with pytest.raises(ValueError, match="mask"):
        opt.load_state_dict(plain.state_dict())


def test_loading_a_mask_for_unknown_params_is_an_error() -> None:
    model = mlp()
    opt = MaskedAdamW(model.named_parameters())
    sd = opt.state_dict()
    sd["mask"] = {"fc9.weight": torch.ones(2, 2, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"state_dict\['mask'\] key 'fc9.weight' is not a parameter"):
        opt.load_state_dict(sd)
    assert opt.mask == {}  # unchanged after the failed load


# ---------------------------------------------------------------- (h) adaptive_lr


def test_adaptive_lr_matches_hand_computation() -> None:
    torch.manual_seed(0)
    model = mlp()
    lr, b1, b2, eps = 1e-2, 0.9, 0.99, 1e-8
    mask = {"fc2.weight": torch.zeros_like(model.fc2.weight, dtype=torch.bool)}
    opt = MaskedAdamW(model.named_parameters(), mask, lr=lr, betas=(b1, b2), eps=eps, weight_decay=0.1)
    assert opt.adaptive_lr() == {}  # nothing stepped yet
    g = torch.Generator().manual_seed(1)
    named = dict(model.named_parameters())
    grads = {n: [] for n in named}
    steps = 4
    for _ in range(steps):
        for n, p in named.items():
            gr = torch.randn(p.shape, generator=g, dtype=torch.float64) + 0.5
            grads[n].append(gr)
            p.grad = gr.float()
        opt.step()
    scales = opt.adaptive_lr()
    assert set(scales) == {"fc1.weight", "fc1.bias", "fc2.bias"}  # fc2.weight never stepped
    for n, s in scales.items():
        assert s.shape == named[n].shape
        v = torch.zeros_like(grads[n][0])
        for gr in grads[n]:
            v = b2 * v + (1 - b2) * gr.float().double() ** 2
        v_hat = v / (1 - b2**steps)
        expected = lr / (v_hat.sqrt() + eps)
        torch.testing.assert_close(s.double(), expected, rtol=1e-5, atol=0)
