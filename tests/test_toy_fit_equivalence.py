"""The toys' training now runs through sparsity.train.fit: the same bits as the loops it replaced.

Each test keeps the hand-written loop of the old code as the reference and checks the new
wrapper against it with torch.equal (same machine, same thread count: no tolerance).
"""

import copy
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from sparsity import prune
from sparsity.optim import MaskedAdamW
from sparsity.regularize import snapshot
from toys import classification as tc
from toys import optimizer_pitfall as pit
from toys import principal_weights as pw
from toys import prune_study as ps


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_classification_train_is_the_old_loop_with_its_snapshot() -> None:
    cfg = tc.Config(hidden=(16, 16), n_train=256, n_test=64, steps=12, batch=32)
    world = tc.make_world(cfg)
    model = tc.make_student(cfg)
    keep = prune.magnitude_prune(model, 0.5)
    reference = copy.deepcopy(model)
    early = tc.train(model, world, mask=keep, snapshot_at=4, lr=2e-3, seed=3, progress=False)

    opt = MaskedAdamW(reference.named_parameters(), mask=keep, lr=2e-3, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(3)
    want_early = None
    for t in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * t / cfg.steps))
        idx = torch.randint(0, cfg.n_train, (cfg.batch,), generator=gen)
        loss = nn.functional.cross_entropy(reference(world.x_train[idx]), world.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if t + 1 == 4:
            want_early = snapshot(reference)
    assert _same(snapshot(model), snapshot(reference)) and _same(early, want_early)


def test_principal_finetune_through_sparsify_is_the_old_masked_adamw_loop() -> None:
    cfg = pw.default_transfer_config(steps=15)
    task = pw.make_transfer_task(cfg, 1)
    config = pw.selector_config("lift", 2, 0.05, "per_tensor", 1, cfg.lr)
    fast_mask, fast = pw.finetune(task, config)  # the fast paths (one-pass step, values-only gradient): to rounding
    # the bit-exact reference paths of sparsify: the old loop to the last bit
    mask, (target, drift, update) = pw.finetune(task, replace(config, fused=False, values_grad=False))
    assert all(torch.equal(fast_mask[n], mask[n]) for n in mask)
    assert fast == pytest.approx((target, drift, update), rel=1e-4, abs=1e-6)

    student = copy.deepcopy(task.student)
    opt = MaskedAdamW(student.named_parameters(), mask=mask, lr=cfg.lr, weight_decay=0.0)
    for t in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * t / cfg.steps))
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(student(task.x_train), task.y_train).backward()
        opt.step()
    assert (target, drift, update) == task.measure(student)


def test_pitfall_naive_way_is_the_old_loop() -> None:
    cfg = tc.Config(hidden=(16,), n_train=128, n_test=64, steps=5, batch=32)
    world = tc.make_world(cfg)
    start = tc.make_student(cfg)
    mask = prune.magnitude_prune(start, 0.7)
    x, y = world.x_train, world.y_train
    weights = {}
    ways = {"naive": lambda m: (torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1, foreach=False),
                                [pit.GradientZeroedOutside(mask)])}
    (row,) = pit.frozen_drift(start, mask, ways, lambda m, _: nn.functional.cross_entropy(m(x), y), 6,
                              evaluate=lambda m: weights.update(snapshot(m)) or 0.0)
    model = copy.deepcopy(start)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    for _ in range(6):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        for n, p in model.named_parameters():
            p.grad.mul_(mask[n])
        opt.step()
    assert _same(weights, snapshot(model))
    assert row.frozen == sum(int((~m).sum()) for m in mask.values()) and row.moved > 0


def test_regrowth_masked_adamw_keeps_pruned_entries_at_zero_adamw_regrows_them() -> None:
    cfg = tc.Config(hidden=(16, 16), n_train=256, n_test=64, steps=20, batch=32)
    world = tc.make_world(cfg)
    model = tc.make_student(cfg)
    tc.train(model, world, progress=False)
    keep = prune.prune_(model, 0.8)
    masked, plain = ps.regrowth(model, keep, world, steps=5, n=64)
    assert masked.method.startswith("MaskedAdamW") and masked.moved == 0 and masked.max_abs_delta == 0.0
    assert plain.method == "torch.optim.AdamW" and 0 < plain.moved <= plain.frozen == masked.frozen
    assert 0.0 <= masked.score <= 1.0
