"""LoRA (scaleup.lora): forward and gradients equal the hand computation; merge, budget, freezing."""

import pytest
import torch
from torch import nn

from scaleup import gpt, lora
from sparsity import criteria, masks


def _adapter(seed: int = 0) -> tuple[lora.LoRALinear, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    base = nn.Linear(6, 5, bias=True)
    adapter = lora.LoRALinear(base, r=2, alpha=3.0, generator=gen)
    with torch.no_grad():  # a trained-looking B, so the correction is not zero
        adapter.lora_B.copy_(torch.randn(5, 2, generator=gen))
    return adapter, torch.randn(4, 6, generator=gen)


def test_forward_equals_the_hand_computation():
    adapter, x = _adapter()
    w, b, a, bb = adapter.base.weight, adapter.base.bias, adapter.lora_A, adapter.lora_B
    hand = x @ w.T + b + (3.0 / 2) * x @ a.T @ bb.T
    torch.testing.assert_close(adapter(x), hand)


def test_gradients_equal_the_hand_computation():
    adapter, x = _adapter()
    g = torch.randn(4, 5, generator=torch.Generator().manual_seed(9))  # dL/dy for L = sum(y * g)
    (adapter(x) * g).sum().backward()
    s, a, b = 3.0 / 2, adapter.lora_A.detach(), adapter.lora_B.detach()
    torch.testing.assert_close(adapter.lora_B.grad, s * g.T @ (x @ a.T))  # dL/dB = s g^T (x A^T)
    torch.testing.assert_close(adapter.lora_A.grad, s * b.T @ g.T @ x)  # dL/dA = s B^T g^T x
    assert adapter.base.weight.grad is None and adapter.base.bias.grad is None


def test_merge_and_unmerge():
    adapter, x = _adapter()
    before, w0 = adapter(x), adapter.base.weight.detach().clone()
    adapter.merge()
    torch.testing.assert_close(adapter(x), before)
    torch.testing.assert_close(adapter.base.weight, w0 + adapter.delta_weight())
    with pytest.raises(RuntimeError, match="already merged"):
        adapter.merge()
    adapter.unmerge()
    torch.testing.assert_close(adapter.base.weight, w0)
    torch.testing.assert_close(adapter(x), before)


def _model():
    return gpt.build("micro", vocab_size=20, block_size=10)


def test_an_adapted_model_starts_as_the_base_and_trains_only_the_adapters():
    model, idx = _model(), torch.randint(20, (3, 8))
    with torch.no_grad():
        before = model(idx)
    lora.add_lora(model, lora.LoraConfig(r=2))
    torch.testing.assert_close(model(idx), before)  # B = 0 at the start
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(idx).square().mean().backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert not torch.allclose(model(idx), before)


def test_trainable_count_is_the_lora_equal_budget():
    model, r = _model(), 3
    budget = masks.lora_equal(model, criteria.magnitude(model), rank=r)
    lora.add_lora(model, lora.LoraConfig(r=r))
    assert lora.trainable_count(model) == sum(int(m.sum()) for m in budget.values())
    assert len(lora.adapters(model)) == 8  # 4 matrices x 2 blocks


def test_merge_lora_restores_names_and_keeps_the_function():
    model, idx = _model(), torch.randint(20, (2, 8))
    names = [n for n, _ in model.named_parameters()]
    lora.add_lora(model, lora.LoraConfig(r=2, targets=("blocks.*.mlp.fc",)))
    with torch.no_grad():
        for adapter in lora.adapters(model).values():
            adapter.lora_B.normal_()
        adapted = model(idx)
    lora.merge_lora(model)
    assert [n for n, _ in model.named_parameters()] == names
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model(idx), adapted)


def test_bad_lora_input_raises_clear_errors():
    with pytest.raises(ValueError, match="r must be a positive int"):
        lora.LoraConfig(r=0)
    with pytest.raises(ValueError, match="alpha"):
        lora.LoraConfig(alpha=-1.0)
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        lora.add_lora(_model(), lora.LoraConfig(targets=("blocks.*.attention",)))
    model = lora.add_lora(_model())
    with pytest.raises(ValueError, match="already has LoRA"):
        lora.add_lora(model)
    with pytest.raises(ValueError, match="exceeds min"):
        lora.LoRALinear(nn.Linear(3, 8), r=4, alpha=1.0)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        lora.merge_lora(_model())
