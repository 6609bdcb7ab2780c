"""Ablation: exact restore (also after an exception), the modes, and the ablation matrix on a
hand-built network whose modules are known."""

import pytest
import torch
from torch import nn

from sparsity.ablate import AblationMatrix, ablate, ablation_matrix, complement
from sparsity.regularize import snapshot


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _mask(model: nn.Module, seed: int = 1, p: float = 0.4) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(t.shape, generator=gen) < p for n, t in model.named_parameters()}


def _bits_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[n].view(torch.int32), b[n].view(torch.int32)) for n in a)


@pytest.mark.parametrize("mode", ["zero", "mean", "reference"])
def test_ablate_overwrites_only_the_mask_and_restores_the_exact_bits(mode: str) -> None:
    model = _mlp()
    before = snapshot(model)
    reference = snapshot(_mlp(seed=5)) if mode == "reference" else None
    mask = _mask(model)
    with ablate(model, mask, mode, reference) as inside:
        assert inside is model
        for name, p in model.named_parameters():
            m = mask[name]
            assert torch.equal(p[~m], before[name][~m])  # untouched outside the mask
            if mode == "zero":
                assert (p[m] == 0).all()
            elif mode == "mean":
                assert torch.allclose(p[m], before[name].mean().expand(int(m.sum())))
            else:
                assert torch.equal(p[m], reference[name][m])
    assert _bits_equal(snapshot(model), before)


def test_ablate_restores_after_an_exception_and_lets_it_through() -> None:
    model = _mlp()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with ablate(model, _mask(model)):
            assert not _bits_equal(snapshot(model), before)
            raise RuntimeError("boom")
    assert _bits_equal(snapshot(model), before)


def test_ablate_keeps_what_the_body_wrote_outside_the_mask() -> None:
    model = _mlp()
    mask = _mask(model)
    before = snapshot(model)
    with ablate(model, mask):
        with torch.no_grad():
            model[0].weight[~mask["0.weight"]] += 1.0
    w = model[0].weight
    assert torch.equal(w[mask["0.weight"]], before["0.weight"][mask["0.weight"]])
    assert torch.equal(w[~mask["0.weight"]], before["0.weight"][~mask["0.weight"]] + 1.0)


def test_ablation_changes_the_output_and_nested_ablations_unwind() -> None:
    model = _mlp()
    x = torch.randn(4, 6)
    y = model(x).detach()
    a, b = _mask(model, seed=1), _mask(model, seed=2)
    with ablate(model, a):
        ya = model(x).detach()
        with ablate(model, b):
            assert not torch.equal(model(x), ya)
        assert torch.equal(model(x), ya)
    assert not torch.equal(ya, y)
    assert torch.equal(model(x), y)


def test_ablate_rejects_bad_input_naming_the_argument() -> None:
    model = _mlp()
    mask = _mask(model)
    with pytest.raises(ValueError, match="mode"):
        with ablate(model, mask, "random"):
            pass
    with pytest.raises(ValueError, match="reference"):
        with ablate(model, mask, "reference"):
            pass
    with pytest.raises(ValueError, match="reference"):
        with ablate(model, mask, "zero", snapshot(model)):
            pass
    with pytest.raises(ValueError, match="mask\\['0.weight'\\] has shape"):
        with ablate(model, {"0.weight": torch.ones(2, 2, dtype=torch.bool)}):
            pass
    with pytest.raises(TypeError, match="dtype torch.bool"):
        with ablate(model, {"0.weight": torch.ones(5, 6)}):
            pass
    with pytest.raises(TypeError, match="model"):
        with ablate("not a model", mask):  # type: ignore[arg-type]
            pass


def test_complement_flips_only_the_named_tensors() -> None:
    model = _mlp()
    mask = _mask(model)
    comp = complement(mask, ["0.weight"])
    assert torch.equal(comp["0.weight"], ~mask["0.weight"])
    assert not comp["2.weight"].any() and not comp["0.bias"].any()
    with pytest.raises(ValueError, match="within"):
        complement(mask, ["missing.weight"])


def _two_module_net() -> nn.Sequential:
    """Two hand-built modules: output k = x[2k] + x[2k+1] computed by hidden units 2k (+) and 2k+1 (-)."""
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1, 0, 0], [-1, -1, 0, 0], [0, 0, 1, 1], [0, 0, -1, -1]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, -1, 0, 0], [0, 0, 1, -1]]))
        net[2].bias.zero_()
    return net


def _module_mask(net: nn.Module, k: int) -> dict[str, torch.Tensor]:
    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in net.named_parameters()}
    mask["0.weight"][2 * k : 2 * k + 2, 2 * k : 2 * k + 2] = True
    mask["2.weight"][k, 2 * k : 2 * k + 2] = True
    return mask


def test_ablation_matrix_of_known_modules_is_diagonal() -> None:
    net = _two_module_net()
    x = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0))

    def sign_accuracy(k: int):
        return lambda m: ((m(x)[:, k] > 0) == (x[:, 2 * k] + x[:, 2 * k + 1] > 0)).float().mean().item()

    before = snapshot(net)
    matrix = ablation_matrix(net, {"m0": _module_mask(net, 0), "m1": _module_mask(net, 1)},
                             {"m0": sign_accuracy(0), "m1": sign_accuracy(1)})
    assert _bits_equal(snapshot(net), before)
    assert matrix.baseline == (1.0, 1.0)
    # An ablated module outputs 0: "> 0" is then always False, right for half the inputs (chance).
    assert matrix.scores[0][1] == matrix.scores[1][0] == 1.0
    assert abs(matrix.scores[0][0] - 0.5) < 0.05 and abs(matrix.scores[1][1] - 0.5) < 0.05
    assert matrix.modularity(chance=0.5) > 0.9
    assert matrix.retained()[0][1] == 1.0
    assert "m0" in matrix.format() and "(none)" in matrix.format()


def test_ablating_a_shared_module_is_not_modular() -> None:
    net = _two_module_net()
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    evaluators = {
        f"m{k}": (lambda m, k=k: ((m(x)[:, k] > 0) == (x[:, 2 * k] + x[:, 2 * k + 1] > 0)).float().mean().item())
        for k in range(2)
    }
    both = {n: _module_mask(net, 0)[n] | _module_mask(net, 1)[n] for n in _module_mask(net, 0)}
    matrix = ablation_matrix(net, {"m0": both, "m1": both}, evaluators)
    assert abs(matrix.modularity(chance=0.5)) < 0.05


def test_modularity_score_on_hand_written_tables() -> None:
    perfect = AblationMatrix(("a", "b", "c"), ("a", "b", "c"),
                             ((0.25, 0.9, 0.8), (0.9, 0.25, 0.8), (0.9, 0.9, 0.25)), (0.9, 0.9, 0.8))
    assert perfect.modularity(0.25) == pytest.approx(1.0)
    assert perfect.damage(0.25)[0] == pytest.approx([1.0, 0.0, 0.0])
    uniform = AblationMatrix(("a", "b"), ("a", "b"), ((0.5, 0.5), (0.5, 0.5)), (0.9, 0.9))
    assert uniform.modularity(0.25) == pytest.approx(0.0)
    below_chance = AblationMatrix(("a", "b"), ("a", "b"), ((0.0, 0.9), (0.9, 0.0)), (0.9, 0.9))
    assert below_chance.damage([0.25, 0.25])[0][0] == 1.0  # clipped: below chance counts as full damage
    with pytest.raises(ValueError, match="chance"):
        perfect.modularity([0.25, 0.25])
    with pytest.raises(ValueError, match="one subnetwork per task"):
        AblationMatrix(("a",), ("a", "b"), ((0.1, 0.2),), (0.9, 0.9)).modularity(0.25)


def test_ablation_matrix_rejects_bad_input() -> None:
    net = _two_module_net()
    good = {"m0": _module_mask(net, 0)}
    with pytest.raises(ValueError, match="masks"):
        ablation_matrix(net, {}, {"m0": lambda m: 1.0})
    with pytest.raises(ValueError, match="evaluators"):
        ablation_matrix(net, good, {})
    with pytest.raises(TypeError, match="evaluators\\['m0'\\]"):
        ablation_matrix(net, good, {"m0": 1.0})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="masks\\['bad'\\]"):
        ablation_matrix(net, {"bad": {"0.weight": torch.ones(3, dtype=torch.bool)}}, {"m0": lambda m: 1.0})
