"""A synthetic classification world for pruning: a small teacher labels, a wide student learns.

Pruning is judged by *accuracy* (it "recovers 95-100% of dense accuracy"), so the
lab needs a classification task that a CPU trains in seconds and that is reproducible bit
for bit. Here a random *teacher* MLP (``in_dim -> teacher_hidden -> n_classes``, ReLU)
labels standard-normal inputs by the argmax of its logits; its output biases are tuned so
that every class is about equally frequent (chance = 1 / n_classes), and inputs whose top-two teacher logits are
closer than ``margin`` are dropped, so a dense student can get close to 100%.

The *student* is a much wider MLP (``in_dim -> hidden... -> n_classes``): the task needs
a few hundred weights, the student has tens of thousands. That is the lottery-ticket
setting (Frankle & Carbin 2019): a heavily over-parameterised network trained on a task a
small one could solve. How much of it can pruning remove?
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from sparsity.optim import MaskedAdamW
from sparsity.regularize import snapshot
from sparsity.threads import one_thread
from sparsity.train import FitState, LossOfBatch, cosine, fit
from sparsity.validate import Mask, TensorDict, check_nonnegative_int, check_positive_int


BALANCE_ITERATIONS = 100
BALANCE_STEP = 0.03


@dataclass(frozen=True)
class Config:
    """The world (teacher, data) and the student's training recipe."""

    in_dim: int = 16
    n_classes: int = 8
    teacher_hidden: int = 32
    margin: float = 0.02
    hidden: tuple[int, ...] = (256, 256)
    n_train: int = 16384
    n_test: int = 4096
    steps: int = 3000
    batch: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    world_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("in_dim", "teacher_hidden", "n_train", "n_test", "steps", "batch"):
            check_positive_int(getattr(self, name), name)
        if check_positive_int(self.n_classes, "n_classes") < 2:
            raise ValueError(f"n_classes must be an int >= 2, got {self.n_classes!r}")
        if not isinstance(self.hidden, (tuple, list)) or not self.hidden:
            raise ValueError(f"hidden must be a non-empty tuple of positive ints, got {self.hidden!r}")
        for h in self.hidden:
            check_positive_int(h, "hidden entry")
        for name in ("margin", "lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def default_config(*, fast: bool = False, **overrides: object) -> Config:
    """The default world and student; ``fast`` (fast mode, passed down by the entry point) shrinks them to a
    CI-sized run."""
    base = Config(hidden=(128, 128), n_train=8192, n_test=2048, steps=500) if fast else Config()
    return replace(base, **overrides)


@dataclass
class World:
    """The teacher and its labelled data."""

    config: Config
    teacher: nn.Sequential
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def chance(self) -> float:
        """Accuracy of always answering the most frequent test class."""
        return torch.bincount(self.y_test, minlength=self.config.n_classes).max().item() / len(self.y_test)


def make_mlp(widths: tuple[int, ...], seed: int) -> nn.Sequential:
    """A ReLU MLP with layers fc1, fc2, ... and PyTorch's default init, drawn from ``seed``."""
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            modules[f"fc{i}"] = nn.Linear(fan_in, fan_out)
            if i < len(widths) - 1:
                modules[f"act{i}"] = nn.ReLU()
    return nn.Sequential(modules)


def make_world(cfg: Config) -> World:
    """Draw the teacher and label ``n_train + n_test`` inputs that clear the margin."""
    teacher = make_mlp((cfg.in_dim, cfg.teacher_hidden, cfg.n_classes), seed=cfg.world_seed)
    gen = torch.Generator().manual_seed(cfg.world_seed + 1)
    with torch.no_grad():
        probe = torch.randn(16384, cfg.in_dim, generator=gen)
        for _ in range(BALANCE_ITERATIONS):  # shift the output biases until every class is about as frequent
            share = torch.bincount(teacher(probe).argmax(1), minlength=cfg.n_classes).float() / len(probe)
            teacher.fc2.bias.sub_(BALANCE_STEP * torch.log(share.clamp_min(1e-3) * cfg.n_classes))
        need = cfg.n_train + cfg.n_test
        xs: list[torch.Tensor] = []
        while sum(len(x) for x in xs) < need:
            x = torch.randn(4 * need, cfg.in_dim, generator=gen)
            top2 = teacher(x).topk(2, dim=1).values
            xs.append(x[top2[:, 0] - top2[:, 1] >= cfg.margin])
        x = torch.cat(xs)[:need]
        y = teacher(x).argmax(1)
    return World(cfg, teacher, x[: cfg.n_train], y[: cfg.n_train], x[cfg.n_train :], y[cfg.n_train :])


def make_student(cfg: Config, seed: int | None = None) -> nn.Sequential:
    """The wide student, initialised from ``seed`` (default ``cfg.seed``)."""
    return make_mlp((cfg.in_dim, *cfg.hidden, cfg.n_classes), seed=cfg.seed if seed is None else seed)


class SnapshotAt:
    """A ``fit`` hook that keeps a snapshot of the weights after ``step`` steps (0: before training):
    the early checkpoint iterative magnitude pruning rewinds to (Frankle et al. 2020)."""

    def __init__(self, model: nn.Module, step: int) -> None:
        self.step = check_nonnegative_int(step, "step")
        self.weights: TensorDict | None = snapshot(model) if step == 0 else None

    def after_step(self, state: FitState) -> None:
        if state.step + 1 == self.step:
            self.weights = snapshot(state.model)


def cross_entropy(world: World) -> LossOfBatch:
    """The classification loss on a batch of training indices, as ``fit``'s ``loss_of_batch``."""
    return lambda model, idx: nn.functional.cross_entropy(model(world.x_train[idx]), world.y_train[idx])


def train(
    model: nn.Module,
    world: World,
    *,
    mask: Mask | None = None,
    steps: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    snapshot_at: int | None = None,
    progress: bool = True,
    desc: str = "training",
) -> TensorDict | None:
    """Minibatch cross-entropy with AdamW and a cosine schedule; only ``mask``'s entries move.

    ``steps``, ``lr`` and ``seed`` (batch order) default to the world's config. With
    ``snapshot_at=k`` the weights after k steps are returned (:class:`SnapshotAt`, the early
    checkpoint IMP rewinds to); otherwise None. Runs on one CPU thread: the matrices are too
    small to gain from more, and the bits do not depend on the machine's core count.
    """
    cfg = world.config
    steps = check_positive_int(cfg.steps if steps is None else steps, "steps")
    lr = cfg.lr if lr is None else lr
    if snapshot_at is not None and (isinstance(snapshot_at, bool) or not isinstance(snapshot_at, int)
                                    or not 0 <= snapshot_at <= steps):
        raise ValueError(f"snapshot_at must be None or an int in [0, steps={steps}], got {snapshot_at!r}")
    opt = MaskedAdamW(model.named_parameters(), mask=mask, lr=lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
    hooks = [] if snapshot_at is None else [SnapshotAt(model, snapshot_at)]
    with one_thread():
        fit(model, opt, cross_entropy(world), steps,
            batches=lambda step: torch.randint(0, cfg.n_train, (cfg.batch,), generator=gen),
            schedule=cosine(lr, steps), hooks=hooks, progress=progress, desc=desc)
    return hooks[0].weights if hooks else None


def trainer(world: World, **kwargs: object) -> Callable[[nn.Module, Mask], None]:
    """``train`` as the ``train_fn(model, keep)`` callback of ``sparsity.prune`` (kwargs passed on)."""

    def train_fn(model: nn.Module, keep: Mask) -> None:
        train(model, world, mask=keep, progress=False, **kwargs)  # type: ignore[arg-type]

    return train_fn


@torch.no_grad()
def accuracy(model: nn.Module, world: World, split: str = "test") -> float:
    """Share of correctly classified inputs of the ``"test"`` or ``"train"`` split."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    x, y = (world.x_test, world.y_test) if split == "test" else (world.x_train, world.y_train)
    return (model(x).argmax(1) == y).float().mean().item()
