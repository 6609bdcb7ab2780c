"""Subnetwork discovery: the learned mask finds a planted module; pruning after fine-tuning,
exclusive parts and whole-unit closure do what they say; bad input fails loudly."""

import pytest
import torch
from torch import nn

from sparsity.ablate import ablate, complement
from sparsity.discover import exclusive, learn_mask, magnitude_mask, whole_units
from sparsity.regularize import snapshot


def _planted() -> tuple[nn.Sequential, dict[str, torch.Tensor]]:
    """A 12-16-2 MLP made of two blocks: output 0 reads inputs 0-5 through units 0-7 only, output 1
    inputs 6-11 through units 8-15. Returns the model and the planted module of output 0."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 2))
    module = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in net.named_parameters()}
    module["0.weight"][:8, :6] = True
    module["0.bias"][:8] = True
    module["2.weight"][0, :8] = True
    module["2.bias"][0] = True
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(16, 12, generator=gen) / 6**0.5)
        net[0].weight[:8, 6:] = 0.0
        net[0].weight[8:, :6] = 0.0
        net[0].bias.copy_(torch.randn(16, generator=gen) * 0.1)
        net[2].weight.copy_(torch.randn(2, 16, generator=gen) / 8**0.5)
        net[2].weight[0, 8:] = 0.0
        net[2].weight[1, :8] = 0.0
        net[2].bias.zero_()
        # Distractor: the other block is large, so a mask that only kept big weights would pick it.
        net[0].weight[8:, 6:] *= 3.0
    return net, module


def _task0_loss(net: nn.Module, x: torch.Tensor):
    target = net(x)[:, 0].detach()
    return lambda forward: nn.functional.mse_loss(forward(x)[:, 0], target)


def test_learned_mask_finds_the_planted_module() -> None:
    net, module = _planted()
    x = torch.randn(512, 12, generator=torch.Generator().manual_seed(1))
    before = snapshot(net)
    found = learn_mask(net, _task0_loss(net, x), steps=400, lr=0.1, sparsity=0.05, seed=0, progress=False)
    kept = sum(int(m.sum()) for m in found.mask.values())
    inside = sum(int((found.mask[n] & module[n]).sum()) for n in module)
    assert kept > 0
    assert inside / kept >= 0.95, f"{kept - inside} of {kept} kept entries lie outside the planted module"
    assert not found.mask["0.weight"][8:].any() and not found.mask["2.weight"][1].any()
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())  # weights frozen
    assert found.density == pytest.approx(kept / sum(p.numel() for p in net.parameters()))
    assert found.expected_density[-1] < found.expected_density[0]
    # The found subnetwork alone (everything else zeroed) still computes output 0.
    target = net(x)[:, 0].detach()
    with ablate(net, complement(found.mask, found.names)):
        alone = net(x)[:, 0].detach()
    assert (torch.sign(alone) == torch.sign(target)).float().mean() > 0.9
    assert torch.corrcoef(torch.stack([alone, target]))[0, 1] > 0.95


def test_learned_mask_is_reproducible_and_respects_names() -> None:
    net, _ = _planted()
    x = torch.randn(256, 12, generator=torch.Generator().manual_seed(2))
    a = learn_mask(net, _task0_loss(net, x), names=["0.weight"], steps=60, seed=3, progress=False)
    b = learn_mask(net, _task0_loss(net, x), names=["0.weight"], steps=60, seed=3, progress=False)
    assert all(torch.equal(a.mask[n], b.mask[n]) for n in a.mask)
    assert a.task_loss == b.task_loss
    assert a.names == ["0.weight"] and set(a.per_tensor_density) == {"0.weight"}
    assert not a.mask["2.weight"].any() and not a.mask["0.bias"].any()


def test_learn_mask_rejects_bad_input() -> None:
    net, _ = _planted()
    loss = _task0_loss(net, torch.randn(8, 12))
    with pytest.raises(ValueError, match="names"):
        learn_mask(net, loss, names=["nope.weight"], progress=False)
    with pytest.raises(TypeError, match="names"):
        learn_mask(net, loss, names="0.weight", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        learn_mask(net, loss, steps=0, progress=False)
    with pytest.raises(TypeError, match="loss_fn"):
        learn_mask(net, 3.0, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        learn_mask(net, loss, temperature=0.0, progress=False)
    with pytest.raises(ValueError, match="sparsity"):
        learn_mask(net, loss, sparsity=-1.0, progress=False)
    with pytest.raises(ValueError, match="init_logit"):
        learn_mask(net, loss, init_logit=float("inf"), progress=False)
    with pytest.raises(TypeError, match="model"):
        learn_mask("net", loss, progress=False)  # type: ignore[arg-type]


def test_magnitude_mask_ranks_by_weight_or_by_update() -> None:
    net, _ = _planted()
    before = snapshot(net)
    by_weight = magnitude_mask(net, density=0.1, names=["0.weight"])
    k = int(by_weight["0.weight"].sum())
    assert k == round(0.1 * 192)
    top = net[0].weight.detach().abs().flatten().topk(k).indices
    assert by_weight["0.weight"].flatten()[top].all()
    assert not by_weight["2.weight"].any() and not by_weight["0.bias"].any()
    with torch.no_grad():  # "fine-tune": move two entries a lot
        net[0].weight[3, 4] += 10.0
        net[2].weight[1, 9] -= 10.0
    by_update = magnitude_mask(net, density=2 / 224, names=["0.weight", "2.weight"], reference=before)
    assert torch.nonzero(by_update["0.weight"]).tolist() == [[3, 4]]
    assert torch.nonzero(by_update["2.weight"]).tolist() == [[1, 9]]
    with pytest.raises(ValueError, match="density"):
        magnitude_mask(net, 1.5)
    with pytest.raises(ValueError, match="reference has no entry"):
        magnitude_mask(net, 0.1, names=["0.weight"], reference={"0.bias": before["0.bias"]})
    with pytest.raises(ValueError, match=r"reference\['0.weight'\] has shape"):
        magnitude_mask(net, 0.1, reference={"0.weight": torch.zeros(2)})


def test_exclusive_removes_shared_entries() -> None:
    a = {"w": torch.tensor([True, True, False, False])}
    b = {"w": torch.tensor([False, True, True, False])}
    c = {"w": torch.tensor([False, False, True, True])}
    out = exclusive({"a": a, "b": b, "c": c})
    assert out["a"]["w"].tolist() == [True, False, False, False]
    assert out["b"]["w"].tolist() == [False, False, False, False]
    assert out["c"]["w"].tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="at least two"):
        exclusive({"a": a})
    with pytest.raises(ValueError, match="shape"):
        exclusive({"a": a, "b": {"w": torch.ones(3, dtype=torch.bool)}})


def test_whole_units_closes_a_mask_over_fan_in() -> None:
    net, _ = _planted()
    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in net.named_parameters()}
    mask["0.weight"][2, 5] = True
    mask["0.bias"][7] = True
    closed = whole_units(net, mask)
    assert closed["0.weight"][2].all() and closed["0.weight"][7].all()
    assert int(closed["0.weight"].sum()) == 2 * 12
    assert closed["0.bias"].tolist() == [i in (2, 7) for i in range(16)]
    assert not closed["2.weight"].any() and not closed["2.bias"].any()
    assert not mask["0.weight"][2, 0]  # the input mask is not modified
    with pytest.raises(ValueError, match="shape"):
        whole_units(net, {"0.weight": torch.ones(3, 3, dtype=torch.bool)})


def test_learn_mask_records_every_step_and_stops_on_a_non_finite_loss() -> None:
    net, _ = _planted()
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(4))
    found = learn_mask(net, _task0_loss(net, x), steps=25, seed=0, progress=False)
    assert len(found.task_loss) == len(found.expected_density) == 25
    assert all(0.0 < d < 1.0 for d in found.expected_density)
    with pytest.raises(FloatingPointError, match="diverged"):
        learn_mask(net, lambda forward: forward(x).sum() * float("nan"), steps=5, progress=False)
