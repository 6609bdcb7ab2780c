"""Values-only weight gradients (sparsity.values_grad): the selected entries' gradient, no dense one."""

import pytest
import torch
from torch import nn

from sparsity import SparseConfig, masks, sparsify, values_grad
from sparsity.compact import CompactAdamW
from sparsity.train import fit


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40), nn.Tanh(), nn.Linear(40, 8))


def test_the_gradient_is_the_dense_one_at_the_selected_entries(sparse_cpu_route) -> None:
    model = _model()
    x = torch.randn(3, 7, 24)  # extra leading dimensions, as in a transformer
    model(x).pow(2).sum().backward()
    dense = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    opt = CompactAdamW(model.named_parameters(), masks.random(model, 0.2, seed=0), lr=1e-2)
    assert values_grad.install(model, opt) == ["0.weight", "2.weight"]
    model(x).pow(2).sum().backward()
    for name in ("0.weight", "2.weight"):
        assert model.get_parameter(name).grad is None  # no dense gradient was made
        got = opt.values_grads[name].grad
        want = dense[name].reshape(-1)[opt.indices[name].long()]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[0].bias.grad, dense["0.bias"])  # biases and inputs as before


def test_training_with_values_only_gradients_follows_the_dense_gradient_run(sparse_cpu_route) -> None:
    data = [(torch.randn(16, 24), torch.randn(16, 8)) for _ in range(20)]

    def run(values: bool) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        model = _model()
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        sparse = sparsify(model, SparseConfig("random", density=0.2, include="weight", lr=1e-2, values_grad=values))
        fit(model, sparse.optimizer, lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), 20, batches=data.__getitem__)
        return model, sparse.mask, start

    plain, mask, start = run(False)
    values, _, _ = run(True)
    for (name, p), q in zip(plain.named_parameters(), values.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
        assert torch.equal(q[~mask[name]], start[name][~mask[name]]), name  # nothing outside the mask moved
    assert not torch.equal(values[0].weight, start["0.weight"])


def test_remove_restores_plain_layers() -> None:
    model = _model()
    opt = CompactAdamW(model.named_parameters(), masks.random(model, 0.2, seed=0), lr=1e-2)
    values_grad.install(model, opt)
    values_grad.remove(model, opt)
    model(torch.randn(2, 24)).sum().backward()
    assert model[0].weight.grad is not None and not opt.values_grads


def test_bad_uses_are_refused() -> None:
    model = _model()
    opt = CompactAdamW(model.named_parameters(), masks.random(model, 0.2, seed=0), lr=1e-2)
    with pytest.raises(TypeError, match="need a CompactAdamW"):
        values_grad.install(model, torch.optim.SGD(model.parameters(), lr=0.1))
    values_grad.install(model, opt)
    with pytest.raises(ValueError, match="reselect: values-only gradients"):
        opt.reselect(masks.random(model, 0.2, seed=1))
    with pytest.raises(ValueError, match="values_grad=True needs storage='compact'"):
        SparseConfig("random", storage="dense", values_grad=True)
    with pytest.raises(RuntimeError, match="without autocast"), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(2, 24))
