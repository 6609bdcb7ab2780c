"""Experiments 1 and 2 of the modular toy: modularity and its consistency across seeds.

1. modularity (Csordás et al. 2021, "Are Neural Nets Modular?"): train on all target
   tasks, learn one mask per task (weights frozen), ablate each mask's exclusive part and
   score every task: the ablation matrix;
2. consistency (Lepori et al. 2023): the same for several seeds, from random inits, from
   one init (a control) and from a trunk pretrained on the related tasks: modularity per
   seed and overlap of the same task's mask across seeds, against chance.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from sparsity.ablate import AblationMatrix, ablate, ablation_matrix, complement
from sparsity.discover import LearnedMask, exclusive
from sparsity.metrics import mask_overlap
from sparsity.threads import one_thread
from toys.modular_training import accuracy, evaluators, learn_task_mask, train
from toys.modular_world import ModularMLP, World, make_model


ARMS = ("random init", "same init", "pretrained")
"""How the networks of the consistency experiment differ from seed to seed:
random init: a fresh initialisation and batch order per seed; same init: one initialisation,
a batch order per seed (the control: how much overlap does sharing a start alone give?);
pretrained: one trunk pretrained on the related tasks, fresh target heads and a batch order per seed."""


@dataclass
class SeedRun:
    """One trained network of the consistency experiment and its discovered subnetworks."""

    arm: str
    seed: int
    model: ModularMLP
    masks: dict[str, LearnedMask]
    alone: dict[str, float]  # each task's accuracy with only its subnetwork left in the trunk
    matrix: AblationMatrix
    modularity: float


def analyse(
    model: ModularMLP, world: World, seed: int, progress: bool = True
) -> tuple[dict[str, LearnedMask], dict[str, float], AblationMatrix]:
    """Learn a mask per target task; score each task with only its subnetwork (is it sufficient?) and
    with each subnetwork's exclusive part ablated (the ablation matrix)."""
    masks = {
        t: learn_task_mask(model, world, t, seed=1000 * seed + k, progress=progress)
        for k, t in enumerate(world.targets)
    }
    alone = {}
    for t, learned in masks.items():
        with ablate(model, complement(learned.mask, learned.names)):
            alone[t] = accuracy(model, world, t)
    parts = exclusive({t: lm.mask for t, lm in masks.items()})
    matrix = ablation_matrix(model, parts, evaluators(world, world.targets), mode=world.config.ablation)
    return masks, alone, matrix


@one_thread()
def pretrain(world: World, progress: bool = True) -> ModularMLP:
    """A trunk trained on the related tasks (same primitives, other compositions)."""
    cfg = world.config
    model = make_model(cfg, seed=cfg.seed + 1000)
    train(model, world, world.related, steps=cfg.steps, seed=cfg.seed + 2000, progress=progress, desc="pretraining")
    return model


@one_thread()
def seed_run(arm: str, s: int, world: World, pretrained: ModularMLP, progress: bool = True) -> SeedRun:
    """Train the arm's network for seed ``s`` on the target tasks and analyse it."""
    cfg = world.config
    if arm == "random init":
        model = make_model(cfg, seed=cfg.seed + s)
    elif arm == "same init":
        model = make_model(cfg, seed=cfg.seed)
    elif arm == "pretrained":
        model = copy.deepcopy(pretrained)
        model.reset_heads(world.targets, seed=cfg.seed + s)
    else:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    train(model, world, world.targets, steps=cfg.steps, seed=cfg.seed + 100 + s, progress=progress,
          desc=f"{arm}, seed {s}")
    masks, alone, matrix = analyse(model, world, seed=s, progress=progress)
    return SeedRun(arm, s, model, masks, alone, matrix, matrix.modularity(cfg.chance))


@dataclass(frozen=True)
class CrossSeedOverlap:
    """Jaccard overlap of the same task's mask found in two seeds, averaged over seed pairs and tasks."""

    jaccard: float
    chance: float
    per_tensor: dict[str, tuple[float, float]]  # name -> (jaccard, chance)


def cross_seed_overlap(runs: Sequence[SeedRun]) -> CrossSeedOverlap:
    """Mean ``mask_overlap`` of each target task's mask over every pair of seeds, with its chance level."""
    if len(runs) < 2:
        raise ValueError("cross_seed_overlap needs at least two seeds")
    names = runs[0].model.trunk_names()
    pairs = []
    for a, b in itertools.combinations(runs, 2):
        for t in a.masks:
            ma, mb = a.masks[t].mask, b.masks[t].mask
            whole = mask_overlap({n: ma[n] for n in names}, {n: mb[n] for n in names})
            per = {n: mask_overlap({n: ma[n]}, {n: mb[n]}) for n in names}
            pairs.append((whole, per))

    def mean(values: Sequence[float]) -> float:
        return sum(values) / len(values)

    return CrossSeedOverlap(
        jaccard=mean([w.jaccard for w, _ in pairs]),
        chance=mean([w.chance_jaccard for w, _ in pairs]),
        per_tensor={
            n: (mean([p[n].jaccard for _, p in pairs]), mean([p[n].chance_jaccard for _, p in pairs])) for n in names
        },
    )
