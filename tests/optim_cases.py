"""Small models, batches and comparisons shared by the optimizer tests (test_optim, test_compact)."""

import io
from collections import OrderedDict

import torch
from torch import nn

from sparsity import masks


def mlp(seed: int = 0, sizes: tuple[int, int, int] = (5, 7, 3)) -> nn.Sequential:
    torch.manual_seed(seed)
    d_in, d_hid, d_out = sizes
    return nn.Sequential(OrderedDict(fc1=nn.Linear(d_in, d_hid), act=nn.Tanh(), fc2=nn.Linear(d_hid, d_out)))


def batch(step: int, sizes: tuple[int, int, int] = (5, 7, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of a given step: the same data whatever ran before (resume tests need that)."""
    g = torch.Generator().manual_seed(10_000 + step)
    return torch.randn(8, sizes[0], generator=g), torch.randn(8, sizes[2], generator=g)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, step: int, sizes=(5, 7, 3), grad_hook=None) -> None:
    x, y = batch(step, sizes)
    opt.zero_grad()
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    if grad_hook is not None:
        grad_hook(model)
    opt.step()


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_all_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), n


def partial_mask(model: nn.Module) -> dict[str, torch.Tensor]:
    """fc1.weight partly selected, fc1.bias fully, fc2.weight frozen, fc2.bias absent (trainable)."""
    m = masks.random(model, 0.3, seed=5, scope="per_tensor")
    return {
        "fc1.weight": m["fc1.weight"],
        "fc1.bias": torch.ones_like(model.fc1.bias, dtype=torch.bool),
        "fc2.weight": torch.zeros_like(model.fc2.weight, dtype=torch.bool),
    }


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf)
