"""Activation checkpointing of the lab's GPT (``GPT.gradient_checkpointing_enable``): the same loss and
gradients as saving every activation, with the values-only gradient too, and fewer saved bytes."""

import copy

import pytest
import torch
from torch import nn

from scaleup import gpt
from sparsity import SparseConfig, sparsify
from sparsity.memory import step_memory

VOCAB, T = 20, 12


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(VOCAB, (3, T + 1), generator=g)
    return idx[:, :-1], idx[:, 1:]


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    idx, targets = batch
    return nn.functional.cross_entropy(model(idx).flatten(0, 1), targets.flatten())


def _pair(dropout: float = 0.0) -> tuple[gpt.GPT, gpt.GPT]:
    torch.manual_seed(0)
    plain = gpt.GPT(gpt.config("micro", vocab_size=VOCAB, block_size=T, dropout=dropout))
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable()
    return plain.train(), checkpointed.train()


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_loss_and_gradients_are_those_of_the_plain_forward(dropout: float) -> None:
    plain, checkpointed = _pair(dropout)
    losses = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout draws: checkpoint replays the RNG state in its recompute
        loss = _loss(model, _batch())
        loss.backward()
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_values_only_gradients_train_the_same_under_checkpointing(sparse_cpu_route) -> None:
    plain, checkpointed = _pair()
    start = plain.blocks[0].mlp.fc.weight.detach().clone()
    runs = [sparsify(m, SparseConfig("random", density=0.05, include="weight", lr=1e-2, values_grad=True))
            for m in (plain, checkpointed)]
    assert runs[1].optimizer.values_grads, "no values-only gradient was installed: the check would be empty"
    for step in range(3):
        for model, run in zip((plain, checkpointed), runs):
            run.optimizer.zero_grad()
            _loss(model, _batch(step)).backward()
            if step == 0:
                assert all(a.grad is not None for a in run.optimizer.values_grads.values())
            run.optimizer.step()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.equal(p, q), name
    assert not torch.equal(plain.blocks[0].mlp.fc.weight, start), "nothing trained: the check would be empty"


def test_sampling_and_evaluation_do_not_checkpoint() -> None:
    _, model = _pair()
    model.eval()
    idx, _ = _batch()
    with torch.no_grad():
        full = model(idx)
        cache = [{} for _ in model.blocks]
        steps = [model(idx[:, :1], cache)] + [model(idx[:, t:t + 1], cache) for t in range(1, 4)]
    torch.testing.assert_close(torch.cat(steps, 1), full[:, :4], rtol=1e-5, atol=1e-5)
    model.gradient_checkpointing_disable()
    assert not model.gradient_checkpointing


def test_checkpointing_saves_only_the_blocks_inputs() -> None:
    plain, checkpointed = _pair()
    batch = _batch()
    saved = []
    for model in (plain, checkpointed):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        saved.append(step_memory(model, opt, lambda m=model: _loss(m, batch), batch))
    d, n = plain.config.n_embd, 3 * T
    assert saved[1].activations < saved[0].activations - 2 * n * 4 * d * 4  # at least the blocks' MLP hidden layers
    assert saved[1].peak_bytes < saved[0].peak_bytes
