"""A compositional multi-task world with known modules (seed 000: modular subnetworks).

The world: the input holds ``n_tasks`` groups of features (neighbouring groups may share
``overlap`` features). Each group has its own *primitives*, random projections of its
features; task ``t<k>`` reads group k only and outputs a class made of parity bits of its
primitives' signs, e.g. bit 0 = [sign(p0) == sign(p1)], bit 1 = [sign(p2) == sign(p3)]
(4 classes, chance 0.25). Parities need hidden units (no linear read-out solves them), so
the shared trunk must compute each task's features: the ground truth says ``t<k>`` needs
only the trunk weights reading group k, but nothing forces the trunk to keep the tasks
apart. One MLP solves all tasks: a shared ReLU trunk (``fc1``, ``fc2``, ...) and one
output head per task (``heads.t0``, ...). Subnetworks are searched in the trunk only (a
task's head belongs to it by construction, so finding it would prove nothing).

*Related* tasks ``r<k>`` compose the same primitives differently (other pairs), so
pretraining on them teaches the trunk each group's primitives without the target labels.

Three experiments (Csordás et al. 2021; Lepori et al. 2023; core-parameter isolation,
Wang et al. 2025), run by :func:`run` and the CLI ``python -m toys.modular --json``:

1. modularity: train on all target tasks, learn one mask per task (weights frozen), ablate
   each mask's exclusive part and score every task: the ablation matrix;
2. consistency: the same for several seeds, from random inits, from one init (a control)
   and from a trunk pretrained on the related tasks: modularity per seed and overlap of the
   same task's mask across seeds, against chance;
3. core isolation: pretrain on task A, fine-tune on task B fully, with A's core units
   frozen, or on B's subnetwork only; B's score (target) and A's (retained) for each.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsity.ablate import AblationMatrix, ablate, ablation_matrix, complement
from sparsity.discover import LearnedMask, exclusive, learn_mask, magnitude_mask, whole_units
from sparsity.fastmode import fast_mode
from sparsity.metrics import mask_overlap
from sparsity.optim import MaskedAdamW
from sparsity.regularize import l1_to_init, snapshot
from sparsity.threads import one_thread
from sparsity.validate import Mask

Composition = tuple[tuple[int, int], ...]
"""Each pair (a, b) is one output bit: [sign(primitive a) == sign(primitive b)]."""


@dataclass(frozen=True)
class Config:
    """The world, the network, the training and the discovery settings of one experiment."""

    n_tasks: int = 4
    group_size: int = 8
    overlap: int = 0
    n_primitives: int = 4
    target: Composition = ((0, 1), (2, 3))
    related: Composition = ((0, 2), (1, 3))
    hidden: tuple[int, ...] = (96, 96)
    n_train: int = 8192
    n_test: int = 4096
    steps: int = 1500
    batch: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.01
    mask_steps: int = 500
    mask_lr: float = 0.05
    mask_sparsity: float = 10.0
    ablation: str = "zero"
    n_seeds: int = 3
    task_a: str = "t0"
    task_b: str = "t1"
    pretrain_l1: float = 1e-3
    core_density: float = 0.05
    subnet_density: float = 0.2
    seed: int = 0
    world_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_tasks", "group_size", "n_primitives", "n_train", "n_test", "steps", "batch",
                     "mask_steps", "n_seeds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_tasks < 2:
            raise ValueError(f"n_tasks must be >= 2 (modularity compares subtasks), got {self.n_tasks}")
        overlap = self.overlap
        if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < self.group_size:
            raise ValueError(f"overlap must be an int in [0, group_size), got {self.overlap!r}")
        for name in ("target", "related"):
            comp = getattr(self, name)
            valid = isinstance(comp, tuple) and comp and all(
                isinstance(pair, tuple) and len(pair) == 2 and pair[0] != pair[1]
                and all(isinstance(i, int) and 0 <= i < self.n_primitives for i in pair)
                for pair in comp
            )
            if not valid:
                raise ValueError(
                    f"{name} must be pairs of distinct primitive indices in 0..{self.n_primitives - 1}, got {comp!r}"
                )
        if len(self.target) != len(self.related):
            raise ValueError("target and related must have the same number of bits (heads of the same size)")
        if not self.hidden or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in self.hidden):
            raise ValueError(f"hidden must be positive ints, got {self.hidden!r}")
        for name in ("lr", "weight_decay", "mask_lr", "mask_sparsity", "pretrain_l1"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        for name in ("core_density", "subnet_density"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if self.ablation not in ("zero", "mean"):
            raise ValueError(f"ablation must be 'zero' or 'mean', got {self.ablation!r}")
        tasks = [f"{kind}{k}" for kind in "tr" for k in range(self.n_tasks)]
        for name in ("task_a", "task_b"):
            if getattr(self, name) not in tasks:
                raise ValueError(f"{name} must be one of {tasks}, got {getattr(self, name)!r}")
        if self.task_a == self.task_b:
            raise ValueError("task_a and task_b must differ")

    @property
    def n_classes(self) -> int:
        """One class per combination of the composition's bits."""
        return 2 ** len(self.target)

    @property
    def chance(self) -> float:
        """Accuracy of guessing: the classes are balanced."""
        return 1.0 / self.n_classes

    @property
    def in_dim(self) -> int:
        """Number of input features (groups laid side by side, neighbours sharing ``overlap``)."""
        return (self.n_tasks - 1) * (self.group_size - self.overlap) + self.group_size

    def window(self, group: int) -> slice:
        """The input features of group ``group`` (read by tasks t<group> and r<group>)."""
        start = group * (self.group_size - self.overlap)
        return slice(start, start + self.group_size)


def default_config(**overrides: object) -> Config:
    """The default experiment, shrunk in fast mode (``LAB_FAST=1``) to a CI-sized run."""
    base = Config()
    if fast_mode():
        base = replace(base, n_tasks=3, hidden=(64, 64), n_train=4096, n_test=2048, steps=500, lr=5e-3,
                       mask_steps=150, mask_lr=0.1, n_seeds=2)
    return replace(base, **overrides)


@dataclass
class World:
    """The data: inputs, each group's primitive projections, and the labels of every task.

    Tasks are named ``t0, t1, ...`` (target compositions, one per group) and ``r0, r1, ...``
    (related compositions of the same primitives, used for pretraining).
    """

    config: Config
    projections: torch.Tensor  # (n_tasks, n_primitives, group_size)
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: dict[str, torch.Tensor]
    y_test: dict[str, torch.Tensor]

    @property
    def targets(self) -> list[str]:
        """Names of the target tasks, one per group."""
        return [f"t{k}" for k in range(self.config.n_tasks)]

    @property
    def related(self) -> list[str]:
        """Names of the related (pretraining) tasks, one per group."""
        return [f"r{k}" for k in range(self.config.n_tasks)]


def _labels(
    cfg: Config, projections: torch.Tensor, x: torch.Tensor, group: int, composition: Composition
) -> torch.Tensor:
    """The binary number made of the composition's parity bits of group ``group``'s primitive signs."""
    signs = torch.sign(x[:, cfg.window(group)] @ projections[group].T)
    y = torch.zeros(x.shape[0], dtype=torch.long)
    for a, b in composition:
        y = 2 * y + (signs[:, a] == signs[:, b]).long()
    return y


def make_world(cfg: Config) -> World:
    """Standard-normal inputs and the labels of every target and related task (seeded by ``world_seed``)."""
    gen = torch.Generator().manual_seed(cfg.world_seed)
    projections = torch.randn(cfg.n_tasks, cfg.n_primitives, cfg.group_size, generator=gen)
    x = torch.randn(cfg.n_train + cfg.n_test, cfg.in_dim, generator=gen)
    labels = {}
    for k in range(cfg.n_tasks):
        labels[f"t{k}"] = _labels(cfg, projections, x, k, cfg.target)
        labels[f"r{k}"] = _labels(cfg, projections, x, k, cfg.related)
    return World(
        cfg, projections, x[: cfg.n_train], x[cfg.n_train :],
        {n: y[: cfg.n_train] for n, y in labels.items()}, {n: y[cfg.n_train :] for n, y in labels.items()},
    )


class ModularMLP(nn.Module):
    """A shared ReLU trunk (fc1, fc2, ...) and one linear head per task (heads.t0, heads.r0, ...)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], tasks: Sequence[str], n_classes: int, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            widths = [in_dim, *hidden]
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]), start=1):
                self.add_module(f"fc{i}", nn.Linear(a, b))
            self.heads = nn.ModuleDict({t: nn.Linear(widths[-1], n_classes) for t in tasks})
        self.n_layers = len(hidden)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's last hidden layer."""
        for i in range(1, self.n_layers + 1):
            x = torch.relu(getattr(self, f"fc{i}")(x))
        return x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head, by task name."""
        h = self.features(x)
        return {t: head(h) for t, head in self.heads.items()}

    def trunk_names(self) -> list[str]:
        """The shared parameters: where subnetworks are searched."""
        return [n for n, _ in self.named_parameters() if not n.startswith("heads.")]

    def reset_heads(self, tasks: Sequence[str], seed: int) -> None:
        """Fresh heads for ``tasks`` (new tasks on a pretrained trunk)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for t in tasks:
                self.heads[t].reset_parameters()


def make_model(cfg: Config, seed: int | None = None) -> ModularMLP:
    """A model with one head per target and per related task."""
    tasks = [f"{kind}{k}" for kind in "tr" for k in range(cfg.n_tasks)]
    return ModularMLP(cfg.in_dim, cfg.hidden, tasks, cfg.n_classes, cfg.seed if seed is None else seed)


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
    lr = cfg.lr
    zeros = {n: torch.zeros_like(p) for n, p in model.named_parameters()} if l1 > 0 else None
    opt = MaskedAdamW(model.named_parameters(), mask=mask, lr=lr, weight_decay=0.0 if l1 > 0 else cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    curve = []
    for t in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * t / steps))
        idx = torch.randint(0, cfg.n_train, (cfg.batch,), generator=gen)
        loss = _loss(world, model, idx, tasks)
        if zeros is not None:
            loss = loss + l1 * l1_to_init(model, zeros)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(loss.item())
    return curve


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


# ---------------------------------------------------------------- experiment 1 and 2: modularity, consistency

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


# ---------------------------------------------------------------- experiment 3: core isolation

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


# ---------------------------------------------------------------- the whole experiment


@dataclass
class Report:
    """Everything :func:`run` measured (the models are kept for plots and widgets)."""

    config: Config
    world: World
    pretrained: ModularMLP
    runs: dict[str, list[SeedRun]]
    overlaps: dict[str, CrossSeedOverlap]
    isolation: Isolation

    def checks(self) -> dict[str, object]:
        """The issue's measured targets, computed from the numbers (never assumed)."""
        cfg = self.config
        out: dict[str, object] = {}
        for arm in ("random init", "pretrained"):
            m = self.runs[arm][0].matrix
            n = len(m.tasks)
            out[f"{arm}: own task after ablation, max"] = max(m.scores[i][i] for i in range(n))
            out[f"{arm}: other tasks retained, min share"] = min(
                r for i, row in enumerate(m.retained()) for j, r in enumerate(row) if i != j
            )
        iso = self.isolation
        out["isolation: A retained, freeze core minus full"] = iso.retained["freeze A's core"] - iso.retained["full"]
        out["isolation: B target, freeze core minus full"] = iso.target["freeze A's core"] - iso.target["full"]
        out["chance"] = cfg.chance
        return out

    def summary(self) -> dict[str, object]:
        """The JSON-able numbers (what the CLI prints with --json)."""

        def stats(values: list[float]) -> dict[str, object]:
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            return {"per_seed": values, "mean": mean, "std": std}

        iso = self.isolation
        return {
            "config": asdict(self.config),
            "chance": self.config.chance,
            "ablation_matrix": {
                arm: {**asdict(runs[0].matrix), "modularity": runs[0].modularity} for arm, runs in self.runs.items()
                if arm != "same init"
            },
            "modularity": {arm: stats([r.modularity for r in runs]) for arm, runs in self.runs.items()},
            "mask_density": {arm: stats([sum(m.density for m in r.masks.values()) / len(r.masks) for r in runs])
                             for arm, runs in self.runs.items()},
            "subnetwork_alone_accuracy": {
                arm: runs[0].alone for arm, runs in self.runs.items() if arm != "same init"
            },
            "cross_seed_overlap": {arm: asdict(o) for arm, o in self.overlaps.items()},
            "isolation": {
                "task_a": self.config.task_a,
                "task_b": self.config.task_b,
                "a_before": iso.a_before,
                "b_before": iso.b_before,
                "ways": {
                    w: {"target_b": iso.target[w], "retained_a": iso.retained[w], "trainable_share": iso.trainable[w]}
                    for w in WAYS
                },
            },
            "checks": self.checks(),
        }


@one_thread()
def run(cfg: Config | None = None, progress: bool = True) -> Report:
    """All three experiments on one world (the default config when ``cfg`` is None)."""
    cfg = default_config() if cfg is None else cfg
    world = make_world(cfg)
    pretrained = pretrain(world, progress)
    runs: dict[str, list[SeedRun]] = {}
    for arm in ARMS:
        runs[arm] = []
        for s in range(cfg.n_seeds):
            if arm == "same init" and s == 0:
                runs[arm].append(runs["random init"][0])  # the same network: init seed and batch order coincide
                continue
            runs[arm].append(seed_run(arm, s, world, pretrained, progress))
    overlaps = {arm: cross_seed_overlap(r) for arm, r in runs.items()} if cfg.n_seeds > 1 else {}
    return Report(cfg, world, pretrained, runs, overlaps, isolation(world, progress))


def plot_ablation_matrix(matrix: AblationMatrix, chance: float, ax: object = None, title: str = "") -> object:
    """Heatmap of accuracy (task j | subnetwork i ablated), the unablated row on top, numbers in the cells."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    rows = [matrix.baseline, *matrix.scores]
    image = ax.imshow(rows, vmin=chance, vmax=1.0, cmap="viridis")
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    ax.set_xticks(range(len(matrix.tasks)), matrix.tasks)
    ax.set_yticks(range(len(rows)), ["none", *matrix.subnetworks])
    ax.set(xlabel="task scored", ylabel="subnetwork ablated", title=title or "Accuracy after ablation")
    ax.figure.colorbar(image, ax=ax, label=f"accuracy (chance {chance:.2f})")
    return ax


def plot_consistency(report: Report, fig: object = None) -> object:
    """Modularity per seed in each arm, and the cross-seed mask overlap against its chance level."""
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(11, 4))
    fig.clear()
    ax_mod, ax_overlap = fig.subplots(1, 2)
    for i, arm in enumerate(ARMS):
        values = [r.modularity for r in report.runs[arm]]
        ax_mod.scatter([i] * len(values), values, s=40, label=arm)
    ax_mod.set(xticks=range(len(ARMS)), xticklabels=ARMS, xlim=(-0.5, len(ARMS) - 0.5), ylim=(0, 1.05),
               xlabel="how the seeds' networks differ", ylabel="modularity score",
               title="Modularity of each seed's network")
    if report.overlaps:
        arms = list(report.overlaps)
        width = 0.38
        ax_overlap.bar([i - width / 2 for i in range(len(arms))], [report.overlaps[a].jaccard for a in arms], width,
                       label="measured")
        ax_overlap.bar([i + width / 2 for i in range(len(arms))], [report.overlaps[a].chance for a in arms], width,
                       label="chance (random masks, same densities)")
        ax_overlap.set(xticks=range(len(arms)), xticklabels=arms, xlabel="how the seeds' networks differ",
                       ylabel="Jaccard overlap", title="Same task's subnetwork, across seeds")
        ax_overlap.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def plot_isolation(iso: Isolation, extra: Sequence[tuple[str, float, float]] = (), ax: object = None) -> object:
    """Forgetting of A (accuracy lost) against the target score on B, one point per fine-tuning way.

    ``extra`` adds points (label, B score, A score), e.g. runs from the lesson's widget.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    points = [(w, iso.target[w], iso.retained[w]) for w in WAYS] + list(extra)
    for label, b, a in points:
        ax.scatter(b, iso.a_before - a, s=60)
        ax.annotate(label, (b, iso.a_before - a), textcoords="offset points", xytext=(6, 4), fontsize="small")
    ax.set(xlabel="B accuracy (target)", ylabel="A accuracy lost (forgetting)",
           title=f"Fine-tuning on B after A: forgetting vs target (A was {iso.a_before:.2f})")
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.margins(x=0.25, y=0.1)
    return ax


def format_report(report: Report) -> str:
    """Plain-text tables of the ablation matrices, modularity, overlaps and the A/B fine-tuning."""
    s = report.summary()
    cfg = report.config
    lines = [f"chance = {cfg.chance:.2f}; subnetworks: learned masks (exclusive parts), {cfg.ablation}-ablated"]
    for arm in ("random init", "pretrained"):
        run0 = report.runs[arm][0]
        alone = ", ".join(f"{t} {a:.3f}" for t, a in run0.alone.items())
        lines += ["", f"Ablation matrix, {arm} (seed 0): accuracy of each task (column), a subnetwork (row) ablated",
                  run0.matrix.format(), f"modularity {run0.modularity:.3f}; each subnetwork alone: {alone}"]
    lines += ["", f"{'arm':<14}{'modularity mean +- std':>26}{'mask density':>14}{'cross-seed Jaccard':>20}"
              f"{'chance':>8}"]
    for arm in ARMS:
        mod, dens = s["modularity"][arm], s["mask_density"][arm]
        o = report.overlaps.get(arm)
        overlap = f"{o.jaccard:>20.3f}{o.chance:>8.3f}" if o else f"{'-':>20}{'-':>8}"
        lines.append(f"{arm:<14}{mod['mean']:>18.3f} +- {mod['std']:.3f}{dens['mean']:>14.3f}{overlap}")
    iso = report.isolation
    lines += ["", f"Pretrained on A = {cfg.task_a} (A {iso.a_before:.3f}, B {iso.b_before:.3f}), "
                  f"then fine-tuned on B = {cfg.task_b}:",
              f"{'way':<22}{'B (target)':>12}{'A (retained)':>14}{'trainable trunk':>17}"]
    for w in WAYS:
        lines.append(f"{w:<22}{iso.target[w]:>12.3f}{iso.retained[w]:>14.3f}{iso.trainable[w]:>17.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    base = default_config()
    parser = argparse.ArgumentParser(
        prog="python -m toys.modular",
        description="Modular subnetworks: find them, ablate them, protect them (seed 000).",
    )
    parser.add_argument("--seeds", type=int, default=base.n_seeds, help="seeds per arm (default %(default)s)")
    parser.add_argument("--steps", type=int, default=base.steps, help="training steps per run (default %(default)s)")
    parser.add_argument("--mask-steps", type=int, default=base.mask_steps,
                        help="mask-learning steps (default %(default)s)")
    parser.add_argument("--overlap", type=int, default=base.overlap, help="features shared by neighbouring groups")
    parser.add_argument("--ablation", choices=("zero", "mean"), default=base.ablation)
    parser.add_argument("--seed", type=int, default=base.seed)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    try:
        cfg = replace(base, n_seeds=args.seeds, steps=args.steps, mask_steps=args.mask_steps, overlap=args.overlap,
                      ablation=args.ablation, seed=args.seed)
    except ValueError as err:
        parser.error(str(err))
    report = run(cfg, progress=not args.no_progress)
    if args.json:
        json.dump(report.summary(), sys.stdout, indent=2)
        print()
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
