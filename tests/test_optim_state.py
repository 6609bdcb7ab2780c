"""Saving and loading the lab's optimizers: state is matched by name, and bad state dicts are refused."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsity.compact import CompactAdamW
from sparsity.optim import MaskedAdamW, MaskedSGD

KINDS = {
    "MaskedAdamW": lambda groups, mask: MaskedAdamW(groups, mask, lr=1e-2, weight_decay=0.1),
    "CompactAdamW": lambda groups, mask: CompactAdamW(groups, mask, lr=1e-2, weight_decay=0.1),
    "MaskedSGD": lambda groups, mask: MaskedSGD(groups, mask, lr=1e-2, momentum=0.9, weight_decay=0.1),
}


def make_params(shapes: list[tuple[int, ...]], seed: int) -> dict[str, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return {f"p{i}": torch.nn.Parameter(torch.randn(*s, generator=g)) for i, s in enumerate(shapes)}


def steps(params: dict[str, torch.Tensor], opt: torch.optim.Optimizer, first: int, count: int) -> None:
    """Elementwise loss, so every gradient depends on its own tensor only, whatever the order."""
    for t in range(first, first + count):
        opt.zero_grad()
        loss = sum(((t + 1) * 0.3 * p).sin().mul(p).sum() for p in params.values())
        loss.backward()
        opt.step()


def grouped(params: dict[str, torch.Tensor], groups: list[list[str]]) -> list[dict]:
    return [{"params": [(n, params[n]) for n in g]} for g in groups]


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from(sorted(KINDS)),
    shapes=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 5)), min_size=1, max_size=4),
    seed=st.integers(0, 10_000),
    before=st.integers(1, 3),
    after=st.integers(1, 3),
    split=st.integers(0, 3),
    data=st.data(),
)
def test_resume_in_another_parameter_order_is_bit_exact(kind, shapes, seed, before, after, split, data) -> None:
    """Train, save, rebuild with the parameters (and groups) in another order, load, train on:
    bit-identical to the run that never stopped, and no masked-out entry moves."""
    names = [f"p{i}" for i in range(len(shapes))]
    g = torch.Generator().manual_seed(seed + 1)
    mask = {n: torch.rand(*s, generator=g) < 0.5 for n, s in zip(names, shapes)}
    cut = min(split, len(names))
    groups = [gr for gr in (names[:cut], names[cut:]) if gr]

    straight = make_params(shapes, seed)
    opt = KINDS[kind](grouped(straight, groups), mask)
    steps(straight, opt, 0, before + after)

    stopped = make_params(shapes, seed)
    opt = KINDS[kind](grouped(stopped, groups), mask)
    steps(stopped, opt, 0, before)
    saved = copy.deepcopy(opt.state_dict())
    start = {n: p.detach().clone() for n, p in stopped.items()}

    resumed = {n: torch.nn.Parameter(p.detach().clone()) for n, p in stopped.items()}
    shuffled = [data.draw(st.permutations(gr)) for gr in data.draw(st.permutations(groups))]
    opt = KINDS[kind](grouped(resumed, shuffled), None)
    opt.load_state_dict(saved)
    steps(resumed, opt, before, after)

    for n in names:
        assert torch.equal(resumed[n], straight[n]), n
        assert torch.equal(resumed[n][~mask[n]], start[n][~mask[n]]), n


def two_params() -> dict[str, torch.nn.Parameter]:
    return make_params([(3, 4), (4,)], seed=0)


@pytest.mark.parametrize("saved_kind, loading_kind", [("MaskedSGD", "MaskedAdamW"), ("MaskedAdamW", "MaskedSGD")])
def test_a_state_dict_of_another_optimizer_kind_is_refused(saved_kind: str, loading_kind: str) -> None:
    params = two_params()
    opt = KINDS[saved_kind](grouped(params, [list(params)]), None)
    steps(params, opt, 0, 1)
    other = KINDS[loading_kind](grouped(params, [list(params)]), None)
    with pytest.raises(ValueError, match="another kind of optimizer"):
        other.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("kind", ["MaskedAdamW", "CompactAdamW"])
@pytest.mark.parametrize("key", ["exp_avg_sq", "step", "exp_avg"])
def test_a_state_missing_a_required_key_is_refused_and_changes_nothing(kind: str, key: str) -> None:
    params = two_params()
    opt = KINDS[kind](grouped(params, [list(params)]), None)
    steps(params, opt, 0, 1)
    before = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(before)
    del bad["state"][0][key]
    with pytest.raises(ValueError, match=f"state of 'p0' lacks '{key}'"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert torch.equal(after["state"][0]["exp_avg"], before["state"][0]["exp_avg"])


def test_a_moment_of_the_wrong_shape_is_refused() -> None:
    params = two_params()
    opt = MaskedAdamW(grouped(params, [list(params)]))
    steps(params, opt, 0, 1)
    bad = copy.deepcopy(opt.state_dict())
    bad["state"][1]["exp_avg"] = torch.zeros(5)
    with pytest.raises(ValueError, match=r"'p1' has exp_avg of shape \(5,\), but this optimizer needs \(4,\)"):
        opt.load_state_dict(bad)


def test_names_that_do_not_match_are_refused() -> None:
    params = two_params()
    opt = MaskedAdamW(grouped(params, [list(params)]))
    steps(params, opt, 0, 1)
    saved = opt.state_dict()
    fewer = MaskedAdamW([("p0", params["p0"])])
    with pytest.raises(ValueError, match="holds parameter 'p1', which this optimizer does not have"):
        fewer.load_state_dict(saved)
    renamed = MaskedAdamW([("q0", params["p0"]), ("p1", params["p1"])])
    with pytest.raises(ValueError, match="no state for parameter 'q0'"):
        renamed.load_state_dict({**saved, "mask": {}})


def test_other_groupings_are_refused() -> None:
    params = two_params()
    opt = MaskedAdamW(grouped(params, [["p0"], ["p1"]]))
    together = MaskedAdamW(grouped(params, [["p0", "p1"]]))
    with pytest.raises(ValueError, match="param group 0 of this optimizer"):
        together.load_state_dict(opt.state_dict())


def test_a_state_dict_without_parameter_names_is_refused() -> None:
    params = two_params()
    opt = MaskedAdamW(grouped(params, [list(params)]))
    sd = opt.state_dict()
    for group in sd["param_groups"]:
        del group["param_names"]
    with pytest.raises(ValueError, match="cannot be matched by name"):
        opt.load_state_dict(sd)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("arg", ["lr", "weight_decay"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1.0])
def test_hyperparameters_must_be_finite_and_nonnegative(kind: str, arg: str, value: float) -> None:
    params = two_params()
    cls = {"MaskedAdamW": MaskedAdamW, "CompactAdamW": CompactAdamW, "MaskedSGD": MaskedSGD}[kind]
    with pytest.raises(ValueError, match=arg):
        cls(list(params.items()), **{arg: value})


@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate parameters")
@pytest.mark.parametrize("cls", [MaskedAdamW, CompactAdamW, MaskedSGD])
def test_one_tensor_under_two_names_is_refused(cls) -> None:
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="'tied' is the same tensor as 'w'"):
        cls([("w", w), ("tied", w)])
