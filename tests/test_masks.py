"""Mask selection (sparsity.masks): budgets, eligibility, determinism and loud failures."""

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from sparsity import masks
from sparsity.regularize import snapshot


def mlp(seed: int = 0) -> nn.Sequential:
    """fc1.weight (6x4), fc1.bias (6), fc2.weight (3x6), fc2.bias (3): 24 + 18 weight entries."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(4, 6), act=nn.ReLU(), fc2=nn.Linear(6, 3)))


class EmbNormMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)


def tiny_model(seed: int = 0) -> EmbNormMLP:
    torch.manual_seed(seed)
    return EmbNormMLP()


WEIGHTS = ("fc1.weight", "fc2.weight")
ALL = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


def n_true(m: torch.Tensor) -> int:
    return int(m.sum())


# ---------------------------------------------------------------- kinds and eligibility


def test_parameter_kinds_classifies_embedding_norm_weight_bias() -> None:
    kinds = masks.parameter_kinds(tiny_model())
    assert kinds == {
        "emb.weight": "embedding",
        "norm.weight": "norm",
        "norm.bias": "norm",
        "fc1.weight": "weight",
        "fc1.bias": "bias",
        "fc2.weight": "weight",
        "fc2.bias": "bias",
    }
    # same order as named_parameters
    assert list(kinds) == [n for n, _ in tiny_model().named_parameters()]


@pytest.mark.parametrize(
    "include, expected",
    [
        ("weight", ["fc1.weight", "fc2.weight"]),
        ("bias", ["fc1.bias", "fc2.bias"]),
        ("norm", ["norm.weight", "norm.bias"]),
        ("embedding", ["emb.weight"]),
        (("weight", "bias"), ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]),
        ("all", ["emb.weight", "norm.weight", "norm.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]),
    ],
)
def test_eligible_by_kind(include: object, expected: list[str]) -> None:
    assert masks.eligible(tiny_model(), include) == expected


def test_unknown_include_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="include must name kinds"):
        masks.eligible(tiny_model(), "weights")
    with pytest.raises(ValueError, match="include must name kinds"):
        masks.random(tiny_model(), 0.5, include=("weight", "bogus"))
    with pytest.raises(ValueError, match="include must name kinds"):
        masks.magnitude(tiny_model(), 0.5, include=())


def test_include_that_selects_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="selects no parameter"):
        masks.eligible(mlp(), "embedding")


@pytest.mark.parametrize("include", ["all", ("weight", "bias"), "norm", "embedding"])
def test_selectors_respect_include_and_cover_every_parameter(include: object) -> None:
    model = tiny_model()
    chosen = set(masks.eligible(model, include))
    for mask in (masks.random(model, 0.5, seed=3, include=include), masks.magnitude(model, 0.5, include=include)):
        assert list(mask) == [n for n, _ in model.named_parameters()]
        for name, p in model.named_parameters():
            assert mask[name].dtype == torch.bool and mask[name].shape == p.shape
            if name not in chosen:
                assert not mask[name].any(), name
        n = sum(p.numel() for name, p in model.named_parameters() if name in chosen)
        assert sum(n_true(m) for m in mask.values()) == max(1, round(0.5 * n))


# ---------------------------------------------------------------- budgets


@pytest.mark.parametrize("density", [0.001, 0.1, 0.3, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("selector", ["random", "magnitude"])
def test_global_budget_is_exact(density: float, selector: str) -> None:
    model = mlp()
    mask = masks.random(model, density, seed=1) if selector == "random" else masks.magnitude(model, density)
    assert set(mask) == set(ALL)
    assert not mask["fc1.bias"].any() and not mask["fc2.bias"].any()
    n = 24 + 18
    assert n_true(mask["fc1.weight"]) + n_true(mask["fc2.weight"]) == max(1, round(density * n))


@pytest.mark.parametrize("density", [0.001, 0.1, 0.3, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("selector", ["random", "magnitude"])
def test_per_tensor_budget_is_exact(density: float, selector: str) -> None:
    model = mlp()
    if selector == "random":
        mask = masks.random(model, density, seed=1, scope="per_tensor")
    else:
        mask = masks.magnitude(model, density, scope="per_tensor")
    assert n_true(mask["fc1.weight"]) == max(1, round(density * 24))
    assert n_true(mask["fc2.weight"]) == max(1, round(density * 18))
    assert not mask["fc1.bias"].any() and not mask["fc2.bias"].any()


def test_tiny_density_selects_at_least_one_entry() -> None:
    model = mlp()
    assert sum(n_true(m) for m in masks.random(model, 1e-9).values()) == 1
    per = masks.magnitude(model, 1e-9, scope="per_tensor")
    assert n_true(per["fc1.weight"]) == 1 and n_true(per["fc2.weight"]) == 1


def test_global_magnitude_picks_the_largest_entries_across_tensors() -> None:
    model = mlp()
    with torch.no_grad():
        # fc2.weight holds the 18 largest magnitudes (1..18, alternating sign), fc1.weight small ones.
        model.fc2.weight.copy_(torch.arange(1.0, 19.0).mul(torch.tensor([1.0, -1.0]).repeat(9)).view(3, 6))
        model.fc1.weight.copy_(torch.linspace(-0.5, 0.5, 24).view(6, 4))
    mask = masks.magnitude(model, 0.25)  # round(0.25 * 42) = 10 (10.5 rounds to even)
    assert n_true(mask["fc1.weight"]) == 0
    assert n_true(mask["fc2.weight"]) == 10
    # exactly the ten largest absolute values 9..18
    assert torch.equal(mask["fc2.weight"], model.fc2.weight.abs() >= 9)
    # per tensor spreads the budget instead
    per = masks.magnitude(model, 0.25, scope="per_tensor")
    assert n_true(per["fc1.weight"]) == 6 and n_true(per["fc2.weight"]) == round(0.25 * 18)


def test_global_magnitude_threshold_property() -> None:
    model = mlp(seed=7)
    mask = masks.magnitude(model, 0.4)
    sel = torch.cat([model.fc1.weight.abs()[mask["fc1.weight"]], model.fc2.weight.abs()[mask["fc2.weight"]]])
    rest = torch.cat([model.fc1.weight.abs()[~mask["fc1.weight"]], model.fc2.weight.abs()[~mask["fc2.weight"]]])
    assert sel.numel() == round(0.4 * 42)
    assert sel.min() >= rest.max()


def test_ties_are_broken_by_position() -> None:
    model = mlp()
    scores = {"fc1.weight": torch.ones(6, 4), "fc2.weight": torch.ones(3, 6)}
    glob = masks.top_k(model, scores, 0.5)  # 21 of 42: the first 21 entries of fc1.weight
    expect1 = torch.zeros(24, dtype=torch.bool)
    expect1[:21] = True
    assert torch.equal(glob["fc1.weight"], expect1.view(6, 4))
    assert not glob["fc2.weight"].any()
    assert not glob["fc1.bias"].any() and not glob["fc2.bias"].any()

    per = masks.top_k(model, scores, 0.5, scope="per_tensor")
    e1 = torch.zeros(24, dtype=torch.bool)
    e1[:12] = True
    e2 = torch.zeros(18, dtype=torch.bool)
    e2[:9] = True
    assert torch.equal(per["fc1.weight"], e1.view(6, 4))
    assert torch.equal(per["fc2.weight"], e2.view(3, 6))

    # magnitude on a model whose weights are all equal behaves the same way
    with torch.no_grad():
        model.fc1.weight.fill_(0.5)
        model.fc2.weight.fill_(-0.5)
    assert torch.equal(masks.magnitude(model, 0.5)["fc1.weight"], expect1.view(6, 4))


def test_top_k_prefers_high_scores_and_keeps_unscored_params_frozen() -> None:
    model = mlp()
    s = torch.zeros(3, 6)
    s[1, 2] = 5.0
    s[2, 5] = 4.0
    mask = masks.top_k(model, {"fc2.weight": s}, 2 / 18, scope="per_tensor")
    expected = torch.zeros(3, 6, dtype=torch.bool)
    expected[1, 2] = expected[2, 5] = True
    assert torch.equal(mask["fc2.weight"], expected)
    assert not mask["fc1.weight"].any() and not mask["fc1.bias"].any() and not mask["fc2.bias"].any()


def test_top_k_empty_scores_is_an_error() -> None:
    with pytest.raises(ValueError, match="scores is empty"):
        masks.top_k(mlp(), {}, 0.5)


def test_random_is_reproducible_and_seed_dependent() -> None:
    model = mlp()
    a = masks.random(model, 0.3, seed=11)
    b = masks.random(model, 0.3, seed=11)
    c = masks.random(model, 0.3, seed=12)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    # the same global count whatever the seed
    assert sum(n_true(m) for m in a.values()) == sum(n_true(m) for m in c.values()) == round(0.3 * 42)
    # it does not depend on (or disturb) the global RNG
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    d = masks.random(model, 0.3, seed=11)
    assert torch.equal(torch.rand(3), before)
    assert all(torch.equal(a[n], d[n]) for n in a)


def test_random_seed_must_be_int() -> None:
    with pytest.raises(TypeError, match="seed must be an int"):
        masks.random(mlp(), 0.5, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed must be an int"):
        masks.random(mlp(), 0.5, seed=True)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, math.nan, math.inf])
def test_density_out_of_range_is_a_value_error(bad: float) -> None:
    model = mlp()
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        masks.random(model, bad)
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        masks.magnitude(model, bad)
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        masks.top_k(model, {"fc1.weight": torch.rand(6, 4)}, bad)


@pytest.mark.parametrize("bad", [True, False, "0.5", None, torch.tensor(0.5)])
def test_density_of_wrong_type_is_a_type_error(bad: object) -> None:
    model = mlp()
    with pytest.raises(TypeError, match="density must be a number"):
        masks.random(model, bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="density must be a number"):
        masks.magnitude(model, bad)  # type: ignore[arg-type]


def test_unknown_scope_is_an_error() -> None:
    with pytest.raises(ValueError, match="scope must be one of"):
        masks.random(mlp(), 0.5, scope="per_layer")
    with pytest.raises(ValueError, match="scope must be one of"):
        masks.magnitude(mlp(), 0.5, scope="Global")


# ---------------------------------------------------------------- layers


def test_layers_by_module_prefix() -> None:
    mask = masks.layers(mlp(), "fc2")
    assert mask["fc2.weight"].all() and mask["fc2.bias"].all()
    assert not mask["fc1.weight"].any() and not mask["fc1.bias"].any()
    assert list(mask) == list(ALL)


def test_layers_by_exact_name_and_list() -> None:
    mask = masks.layers(mlp(), "fc1.bias")
    assert mask["fc1.bias"].all()
    assert sum(n_true(mask[n]) for n in ALL if n != "fc1.bias") == 0
    both = masks.layers(mlp(), ["fc1.bias", "fc2.weight"])
    assert both["fc1.bias"].all() and both["fc2.weight"].all()
    assert not both["fc1.weight"].any() and not both["fc2.bias"].any()


def test_layers_by_glob() -> None:
    mask = masks.layers(mlp(), "*.weight")
    assert mask["fc1.weight"].all() and mask["fc2.weight"].all()
    assert not mask["fc1.bias"].any() and not mask["fc2.bias"].any()
    mask = masks.layers(mlp(), "fc?.bias")
    assert mask["fc1.bias"].all() and mask["fc2.bias"].all()
    assert not mask["fc1.weight"].any()


def test_layers_prefix_respects_module_boundaries() -> None:
    # "fc" is neither a parameter, nor a module, nor a glob matching "fc1.weight"
    with pytest.raises(ValueError, match="pattern 'fc' matches no parameter"):
        masks.layers(mlp(), "fc")


def test_layers_pattern_matching_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="pattern 'fc3' matches no parameter"):
        masks.layers(mlp(), ["fc1", "fc3"])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        masks.layers(mlp(), [])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        masks.layers(mlp(), ["fc1", 2])  # type: ignore[list-item]


# ---------------------------------------------------------------- from_update


def moved_model() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    model = mlp()
    ref = snapshot(model)
    with torch.no_grad():
        model.fc1.weight[0, 0] += 1e-3
        model.fc1.weight[2, 3] -= 2e-3
        model.fc2.weight[1, 1] += 1e-6
        model.fc2.bias[2] += 0.5
    return model, ref


def test_from_update_marks_entries_moved_more_than_tol() -> None:
    model, ref = moved_model()
    mask = masks.from_update(model, ref, tol=1e-5)
    assert list(mask) == list(ALL)
    expected = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    expected["fc1.weight"][0, 0] = True
    expected["fc1.weight"][2, 3] = True
    expected["fc2.bias"][2] = True
    assert all(torch.equal(mask[n], expected[n]) for n in ALL)

    # tol = 0 also catches the 1e-6 change; a large tol catches only the 0.5 change
    loose = masks.from_update(model, ref, tol=0.0)
    assert bool(loose["fc2.weight"][1, 1]) and masks.density(loose) == 4 / 51
    strict = masks.from_update(model, ref, tol=0.1)
    assert masks.density(strict) == 1 / 51 and bool(strict["fc2.bias"][2])


def test_from_update_include_limits_the_eligible_tensors() -> None:
    model, ref = moved_model()
    weights_only = {n: ref[n] for n in WEIGHTS}
    mask = masks.from_update(model, weights_only, tol=1e-5, include="weight")
    assert not mask["fc2.bias"].any()  # moved, but not eligible
    assert n_true(mask["fc1.weight"]) == 2


def test_from_update_nothing_moved_is_all_false() -> None:
    model = mlp()
    mask = masks.from_update(model, snapshot(model), tol=0.0)
    assert masks.density(mask) == 0.0


def test_from_update_errors() -> None:
    model, ref = moved_model()
    with pytest.raises(ValueError, match="tol must be >= 0"):
        masks.from_update(model, ref, tol=-1e-6)
    nan_ref = dict(ref)
    nan_ref["fc1.weight"] = ref["fc1.weight"].clone()
    nan_ref["fc1.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"reference\['fc1.weight'\] contains NaN"):
        masks.from_update(model, nan_ref)
    bad_shape = dict(ref)
    bad_shape["fc2.weight"] = torch.zeros(6, 3)
    with pytest.raises(ValueError, match=r"reference\['fc2.weight'\] has shape \(6, 3\)"):
        masks.from_update(model, bad_shape)
    unknown = dict(ref)
    unknown["fc3.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="key 'fc3.weight' is not a parameter"):
        masks.from_update(model, unknown)
    with pytest.raises(ValueError, match=r"reference has no entry for parameters \['fc1.bias'"):
        masks.from_update(model, {n: ref[n] for n in WEIGHTS})  # include="all" needs the biases too


# ---------------------------------------------------------------- validate and density


def test_validate_accepts_a_good_mask_and_returns_it() -> None:
    model = mlp()
    mask = masks.random(model, 0.5)
    out = masks.validate(model, mask)
    assert out == mask and out is not mask
    partial = {"fc1.weight": torch.ones(6, 4, dtype=torch.bool)}
    assert masks.validate(model, partial) == partial


def test_validate_errors() -> None:
    model = mlp()
    with pytest.raises(ValueError, match="mask key 'fc9.weight' is not a parameter"):
        masks.validate(model, {"fc9.weight": torch.ones(6, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"mask\['fc1.weight'\] has shape \(4, 6\), but the parameter has shape \(6, 4\)"):
        masks.validate(model, {"fc1.weight": torch.ones(4, 6, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"mask\['fc1.weight'\] must have dtype torch.bool, got torch.float32"):
        masks.validate(model, {"fc1.weight": torch.ones(6, 4)})
    with pytest.raises(ValueError, match=r"mask\['fc1.weight'\] is on meta, but the parameter is on cpu"):
        masks.validate(model, {"fc1.weight": torch.ones(6, 4, dtype=torch.bool, device="meta")})
    with pytest.raises(TypeError, match="must be a tensor"):
        masks.validate(model, {"fc1.weight": [[True] * 4] * 6})
    with pytest.raises(TypeError, match="must be a mapping"):
        masks.validate(model, [torch.ones(6, 4, dtype=torch.bool)])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        masks.validate("not a model", {})  # type: ignore[arg-type]


def test_density_of_a_mask() -> None:
    mask = {"a": torch.tensor([True, False, False, True]), "b": torch.tensor([[True, True], [False, False]])}
    assert masks.density(mask) == 4 / 8
    assert masks.density({"a": torch.zeros(3, dtype=torch.bool)}) == 0.0
    assert masks.density({"a": torch.ones(3, dtype=torch.bool)}) == 1.0
    with pytest.raises(ValueError, match="mask is empty"):
        masks.density({})
    with pytest.raises(ValueError, match="mask is empty"):
        masks.density({"a": torch.zeros(0, dtype=torch.bool)})
