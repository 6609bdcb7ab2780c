"""The modular toy's world and network: a compositional multi-task world with known modules.

The input holds ``n_tasks`` groups of features (neighbouring groups may share ``overlap``
features). Each group has its own *primitives*, random projections of its features; task
``t<k>`` reads group k only and outputs a class made of parity bits of its primitives'
signs, e.g. bit 0 = [sign(p0) == sign(p1)], bit 1 = [sign(p2) == sign(p3)] (4 classes,
chance 0.25). Parities need hidden units (no linear read-out solves them), so the shared
trunk must compute each task's features: the ground truth says ``t<k>`` needs only the
trunk weights reading group k, but nothing forces the trunk to keep the tasks apart. One
MLP solves all tasks: a shared ReLU trunk (``fc1``, ``fc2``, ...) and one output head per
task (``heads.t0``, ...). Subnetworks are searched in the trunk only (a task's head belongs
to it by construction, so finding it would prove nothing).

*Related* tasks ``r<k>`` compose the same primitives differently (other pairs), so
pretraining on them teaches the trunk each group's primitives without the target labels
(the pretraining arm of Lepori et al. 2023).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from sparsity.validate import check_nonnegative_int, check_positive_int

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
            check_positive_int(getattr(self, name), name)
        if self.n_tasks < 2:
            raise ValueError(f"n_tasks must be >= 2 (modularity compares subtasks), got {self.n_tasks}")
        if check_nonnegative_int(self.overlap, "overlap") >= self.group_size:
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
        if not self.hidden:
            raise ValueError(f"hidden must be positive ints, got {self.hidden!r}")
        for width in self.hidden:
            check_positive_int(width, "hidden")
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


def default_config(*, fast: bool = False, **overrides: object) -> Config:
    """The default experiment; ``fast`` (fast mode, passed down by the entry point) shrinks it to a CI-sized run."""
    base = Config()
    if fast:
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
