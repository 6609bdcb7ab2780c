"""Experiment 3 of the modular toy: core-parameter isolation (Wang et al. 2025).

Pretrain on task A, then fine-tune on task B three ways: fully, with A's core units frozen
(whole units, as PackNet freezes them; Mallya & Lazebnik 2018), or on B's own subnetwork
only; B's score (target) and A's (retained) for each.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from sparsity.discover import magnitude_mask, whole_units
from sparsity.regularize import snapshot
from sparsity.threads import one_thread
from sparsity.validate import Mask
from toys.modular_training import accuracy, train
from toys.modular_world import ModularMLP, World, make_model


WAYS = ("full", "freeze A's core", "B's subnetwork only")
"""The three ways to fine-tune on B: every parameter; everything but A's core units;
only B's subnetwork (plus B's head)."""


@dataclass
class Isolation:
    """Pretrained on A, fine-tuned on B three ways: B's score (target) and A's (retained) for each."""

    a_before: float
    b_before: float
    target: dict[str, float]
    retained: dict[str, float]
    trainable: dict[str, float]  # share of the trunk each way may update
    models: dict[str, ModularMLP]
    pretrained: ModularMLP
    core: Mask
    subnetwork: Mask


def trunk_share(model: ModularMLP, mask: Mask | None) -> float:
    """Share of the trunk's entries a mask selects (None: all of them)."""
    if mask is None:
        return 1.0
    names = model.trunk_names()
    return sum(int(mask[n].sum()) for n in names) / sum(mask[n].numel() for n in names)


def a_core(pretrained: ModularMLP, density: float, units: bool = True) -> Mask:
    """A's core: magnitude pruning of the trunk after training on A, closed over whole units by default."""
    core = magnitude_mask(pretrained, density, names=pretrained.trunk_names())
    return whole_units(pretrained, core) if units else core


def b_subnetwork(pretrained: ModularMLP, tuned: ModularMLP, density: float) -> Mask:
    """B's subnetwork: the trunk entries a full fine-tuning on B moved most."""
    return magnitude_mask(tuned, density, names=tuned.trunk_names(), reference=snapshot(pretrained))


def way_mask(way: str, core: Mask, subnetwork: Mask, task_b: str) -> Mask | None:
    """The trainable entries of one fine-tuning way (None: everything)."""
    if way == "full":
        return None
    if way == "freeze A's core":
        return {n: ~m for n, m in core.items()}
    if way == "B's subnetwork only":
        head = f"heads.{task_b}."
        return {n: m | n.startswith(head) for n, m in subnetwork.items()}
    raise ValueError(f"way must be one of {WAYS}, got {way!r}")


@one_thread()
def finetune_b(pretrained: ModularMLP, world: World, mask: Mask | None, progress: bool = True,
               desc: str = "fine-tuning on B") -> ModularMLP:
    """A copy of the pretrained model fine-tuned on B (only ``mask``'s entries move; None: all)."""
    cfg = world.config
    model = copy.deepcopy(pretrained)
    train(model, world, [cfg.task_b], steps=cfg.steps, seed=cfg.seed + 3000, mask=mask, progress=progress, desc=desc)
    return model


@one_thread()
def isolation(world: World, progress: bool = True) -> Isolation:
    """Pretrain on A (sparse-weight training), find A's core and B's subnetwork, fine-tune on B three ways.

    A's core: the top ``core_density`` of the trunk's weights after training on A, closed
    over whole units. B's subnetwork: the top ``subnet_density`` of the trunk by the update
    of a full fine-tuning on B (that run is also the "full" way).
    """
    cfg = world.config
    pretrained = make_model(cfg)
    train(pretrained, world, [cfg.task_a], steps=cfg.steps, seed=cfg.seed + 2500, l1=cfg.pretrain_l1,
          progress=progress, desc="pretraining on A")
    core = a_core(pretrained, cfg.core_density)
    models = {"full": finetune_b(pretrained, world, None, progress, desc="fine-tuning on B: full")}
    subnetwork = b_subnetwork(pretrained, models["full"], cfg.subnet_density)
    masks = {way: way_mask(way, core, subnetwork, cfg.task_b) for way in WAYS}
    for way in WAYS[1:]:
        models[way] = finetune_b(pretrained, world, masks[way], progress, desc=f"fine-tuning on B: {way}")
    return Isolation(
        a_before=accuracy(pretrained, world, cfg.task_a),
        b_before=accuracy(pretrained, world, cfg.task_b),
        target={w: accuracy(m, world, cfg.task_b) for w, m in models.items()},
        retained={w: accuracy(m, world, cfg.task_a) for w, m in models.items()},
        trainable={w: trunk_share(pretrained, masks[w]) for w in WAYS},
        models=models,
        pretrained=pretrained,
        core=core,
        subnetwork=subnetwork,
    )
