"""Training and scoring on the modular world: minibatch AdamW on chosen tasks, test accuracy,
and the learned task mask (Csordás et al. 2021) over the trunk.

Every run goes through the lab's one training loop, :func:`sparsity.train.fit`, on one CPU
thread (a matmul's rounding depends on the thread count, and the numbers must not).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from sparsity.discover import LearnedMask, learn_mask
from sparsity.optim import MaskedAdamW
from sparsity.regularize import l1_to_init
from sparsity.threads import one_thread
from sparsity.train import cosine, fit
from sparsity.validate import Mask
from toys.modular_world import ModularMLP, World


def _loss(world: World, logits_fn: Callable[[torch.Tensor], dict[str, torch.Tensor]], idx: torch.Tensor,
          tasks: Sequence[str]) -> torch.Tensor:
    logits = logits_fn(world.x_train[idx])
    return torch.stack([nn.functional.cross_entropy(logits[t], world.y_train[t][idx]) for t in tasks]).mean()


@one_thread()
def train(
    model: ModularMLP,
    world: World,
    tasks: Sequence[str],
    *,
    steps: int,
    seed: int,
    mask: Mask | None = None,
    l1: float = 0.0,
    progress: bool = True,
    desc: str = "training",
) -> list[float]:
    """Minibatch AdamW (cosine schedule) on the mean cross-entropy of ``tasks``; only ``mask``'s entries move.

    ``mask=None`` trains everything. ``l1 > 0`` adds ``l1 * sum |w|`` over all parameters
    (sparse-weight training: the solution keeps few nonzero weights, so each task's
    circuit is compact; Gao et al. 2025) and turns weight decay off. Returns the loss
    curve. ``seed`` fixes the batch order.
    """
    cfg = world.config
    zeros = {n: torch.zeros_like(p) for n, p in model.named_parameters()} if l1 > 0 else None
    opt = MaskedAdamW(model.named_parameters(), mask=mask, lr=cfg.lr, weight_decay=0.0 if l1 > 0 else cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)

    def batch_at(step: int) -> torch.Tensor:
        return torch.randint(0, cfg.n_train, (cfg.batch,), generator=gen)

    def loss_of_batch(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        loss = _loss(world, model, idx, tasks)
        return loss if zeros is None else loss + l1 * l1_to_init(model, zeros)

    history = fit(model, opt, loss_of_batch, steps, batches=batch_at, schedule=cosine(cfg.lr, steps),
                  progress=progress, desc=desc)
    return history["loss"]


@one_thread()
@torch.no_grad()
def accuracy(model: nn.Module, world: World, task: str) -> float:
    """Test accuracy of one task (chance: 1 / n_classes)."""
    return (model(world.x_test)[task].argmax(-1) == world.y_test[task]).float().mean().item()


def evaluators(world: World, tasks: Sequence[str]) -> dict[str, Callable[[nn.Module], float]]:
    """One accuracy function per task: the columns of an ablation matrix."""
    return {t: (lambda m, t=t: accuracy(m, world, t)) for t in tasks}


@one_thread()
def learn_task_mask(model: ModularMLP, world: World, task: str, seed: int, progress: bool = True) -> LearnedMask:
    """Csordás et al.'s learned mask for one task over the trunk, the weights frozen."""
    cfg = world.config
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(forward: Callable[..., dict[str, torch.Tensor]]) -> torch.Tensor:
        idx = torch.randint(0, cfg.n_train, (cfg.batch,), generator=gen)
        return _loss(world, forward, idx, [task])

    return learn_mask(model, loss_fn, names=model.trunk_names(), steps=cfg.mask_steps, lr=cfg.mask_lr,
                      sparsity=cfg.mask_sparsity, seed=seed, progress=progress)
