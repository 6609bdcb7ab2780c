"""Memory by category (sparsity.memory): live tensor bytes, checked against bytes computed by hand."""

import pytest
import torch
from torch import nn

from sparsity import SparseConfig, sparsify
from sparsity.memory import LiveTensors, step_memory

F32 = 4


def test_the_peak_is_the_largest_live_total_and_frees_are_seen() -> None:
    with LiveTensors() as live:
        a = torch.ones(10)
        b = torch.empty(20)
        view = b[5:]  # a view shares b's storage: not counted again
        del a
        c = torch.zeros(5)
    assert live.peak == (10 + 20) * F32
    assert live.current == (20 + 5) * F32
    del b, view, c
    assert live.current == 0


def _linear_step(optimizer_of):
    torch.manual_seed(0)
    model = nn.Linear(8, 4, bias=False)
    x, y = torch.randn(5, 8), torch.randn(5, 4)
    opt = optimizer_of(model)

    def loss() -> torch.Tensor:
        return nn.functional.mse_loss(model(x), y)

    step_memory(model, opt, loss, [x, y])  # the first step allocates the state
    return step_memory(model, opt, loss, [x, y])


def test_a_full_adamw_step_by_hand() -> None:
    mem = _linear_step(lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=False))
    weight = 4 * 8 * F32
    assert mem.params == weight
    assert mem.grads == weight
    assert mem.optimizer_state == 2 * weight + F32  # exp_avg, exp_avg_sq and the float32 step counter
    assert mem.activations == (5 * 8 + 5 * 4 + 5 * 4) * F32  # linear saves x; mse_loss its input and target
    # the peak, in AdamW's update: weight, gradient, state, the batch (x, y) and two [4, 8]
    # temporaries of the denominator (exp_avg_sq.sqrt(), then its division by the bias correction)
    assert mem.peak_bytes == weight + weight + (2 * weight + F32) + (5 * 8 + 5 * 4) * F32 + 2 * weight


def test_values_only_gradients_keep_k_floats_of_gradient_by_hand(sparse_cpu_route) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4, bias=False))
    run = sparsify(model, SparseConfig("random", density=0.25, values_grad=True))
    x, y = torch.randn(5, 8), torch.randn(5, 4)

    def loss() -> torch.Tensor:
        return nn.functional.mse_loss(model(x), y)

    step_memory(model, run.optimizer, loss, [x, y])
    mem = step_memory(model, run.optimizer, loss, [x, y])
    k = 8  # 25% of 32 entries
    assert mem.params == 32 * F32
    assert mem.grads == k * F32  # the anchor's [k] gradient, no dense one
    # moments (2k floats), step counter, int32 indices (the kernels read them as they are: no int64 copy), the anchor
    assert mem.optimizer_state == 2 * k * F32 + F32 + k * 4 + k * F32
    assert mem.activations == (5 * 8 + 5 * 4 + 5 * 4) * F32


def test_a_bad_loss_is_named() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="loss_of must be a callable"):
        step_memory(model, torch.optim.SGD(model.parameters(), lr=0.1), 3.0)  # type: ignore[arg-type]


def test_checkpointed_blocks_count_only_their_inputs_as_saved_by_hand() -> None:
    """torch.utils.checkpoint packs what its region saves with hooks of its own, so the tracker sees only
    what is kept from forward to backward (each block's input); the recomputation in backward is transient:
    it counts in the peak (the tracker's operator mode sees backward's operators), not as saved activations."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    blocks = nn.Sequential(*[nn.Sequential(nn.Linear(8, 32, bias=False), nn.Tanh(), nn.Linear(32, 8, bias=False))
                             for _ in range(2)])
    x, y = torch.randn(64, 8), torch.randn(64, 8)
    opt = torch.optim.SGD(blocks.parameters(), lr=0.1)

    def loss_of(recompute: bool):
        def loss() -> torch.Tensor:
            h = x
            for block in blocks:
                h = checkpoint(block, h, use_reentrant=False) if recompute else block(h)
            return nn.functional.mse_loss(h, y)
        return loss

    plain = step_memory(blocks, opt, loss_of(False), [x, y])
    ckpt = step_memory(blocks, opt, loss_of(True), [x, y])
    narrow, wide = 64 * 8 * F32, 64 * 32 * F32
    # plain: x, tanh's output (= the second linear's input) per block, each block's output, the target
    assert plain.activations == narrow + 2 * wide + 2 * narrow + narrow
    # checkpointed: each block's input (x, then the first block's output), mse's input and the target
    assert ckpt.activations == narrow + narrow + narrow + narrow
    assert ckpt.params == plain.params and ckpt.grads == plain.grads
    assert ckpt.peak_bytes < plain.peak_bytes
