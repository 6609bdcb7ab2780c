"""Teacher-student MLPs: which layer needs fine-tuning? (Liu 2026, "Fine-tuning with sparse updates?")

The teacher is a random MLP that labels the data. The student has the same
architecture; it copies some layers from the teacher (by default the first and the
last) and has the others re-initialised. The student plays a *pretrained model*, the
teacher a *fine-tuning data generator*: only the re-initialised layer truly needs to
change. Trained with MSE plus ``lam`` times the L1 distance to its own initialisation,
does the student discover that?

Observables, recorded every step for every W and b: the L1 distance of the student to
its initialisation and to the teacher, and the loss.

Run ``python -m toys.teacher_student --help`` for the command line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from sparsity.cli_args import finite_nonnegative, json_ready, output_file, positive_int, random_seed
from sparsity.fastmode import fast_mode
from sparsity.metrics import distances, update_norms
from sparsity.optim import MaskedAdamW, MaskedSGD
from sparsity.regularize import l1_to_init, snapshot
from sparsity.threads import use_threads
from sparsity.train import EachStep, FitState, ProximalL1, Schedule, constant, cosine, fit
from sparsity.validate import Mask, check_positive_int

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}
OPTIMIZERS = ("adam", "sgd")
PENALTIES = ("loss", "prox")
SCHEDULES = ("cosine", "constant")
DEFAULT_LR = {"adam": 1e-2, "sgd": 0.05}
"""Learning rate used when Config.lr is None: each optimizer at a rate that converges here."""


@dataclass(frozen=True)
class Config:
    """One teacher-student experiment. Defaults: a bottleneck MLP where W2 is the smallest layer."""

    widths: tuple[int, ...] = (100, 20, 20, 100)
    activation: str = "relu"
    copy_layers: tuple[int, ...] = (1, 3)
    n_train: int = 1000
    n_test: int = 1000
    lam: float = 1e-3
    penalty: str = "loss"
    optimizer: str = "adam"
    lr: float | None = None
    momentum: float = 0.9
    schedule: str = "cosine"
    steps: int = 5000
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.widths) < 2:
            raise ValueError(f"widths must be >= 2 positive ints, got {self.widths}")
        for width in self.widths:
            check_positive_int(width, "widths")
        n_layers = len(self.widths) - 1
        if not all(isinstance(i, int) and 1 <= i <= n_layers for i in self.copy_layers):
            raise ValueError(f"copy_layers must be layer numbers in 1..{n_layers}, got {self.copy_layers}")
        for name, value, allowed in [
            ("activation", self.activation, tuple(ACTIVATIONS)),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("penalty", self.penalty, PENALTIES),
            ("schedule", self.schedule, SCHEDULES),
        ]:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name in ("lam", "lr", "momentum"):
            value = getattr(self, name)
            if name == "lr" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("n_train", "n_test", "steps"):
            check_positive_int(getattr(self, name), name)

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr


def default_config(*, fast: bool = False, **overrides: object) -> Config:
    """The default experiment; ``fast`` (fast mode, passed down by the entry point) shrinks it to a CI-sized run."""
    base = Config(steps=1500) if fast else Config()
    return replace(base, **overrides)


def make_mlp(widths: tuple[int, ...], activation: str, seed: int) -> nn.Sequential:
    """An MLP with layers named fc1, fc2, ... so its tensors read W1/b1, W2/b2, ...

    Weights are drawn N(0, 1 / fan_in) (LeCun init), biases N(0, 0.1^2). The scale sets
    how strong a given lambda is against the MSE: the teacher's output variance sets the
    size of the task loss the L1 term competes with.
    """
    gen = torch.Generator().manual_seed(seed)
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        layer = nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(fan_out, fan_in, generator=gen) * math.sqrt(1 / fan_in))
            layer.bias.copy_(torch.randn(fan_out, generator=gen) * 0.1)
        modules[f"fc{i}"] = layer
        if i < len(widths) - 1:
            modules[f"act{i}"] = ACTIVATIONS[activation]()
    return nn.Sequential(modules)


def label(name: str) -> str:
    """'fc2.weight' -> 'W2', 'fc2.bias' -> 'b2': the names used in Liu 2026's plots."""
    layer, kind = name.split(".")
    return ("W" if kind == "weight" else "b") + layer.removeprefix("fc")


def make_teacher_student(cfg: Config) -> tuple[nn.Sequential, nn.Sequential]:
    """A random teacher, and a student that copies ``cfg.copy_layers`` from it and re-draws the rest."""
    teacher = make_mlp(cfg.widths, cfg.activation, seed=cfg.seed)
    student = make_mlp(cfg.widths, cfg.activation, seed=cfg.seed + 10_000)
    with torch.no_grad():
        for i in cfg.copy_layers:
            getattr(student, f"fc{i}").load_state_dict(getattr(teacher, f"fc{i}").state_dict())
    return teacher, student


def make_data(cfg: Config, teacher: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standard-normal inputs labelled by the teacher: (x_train, y_train, x_test, y_test)."""
    gen = torch.Generator().manual_seed(cfg.seed + 20_000)
    x = torch.randn(cfg.n_train + cfg.n_test, cfg.widths[0], generator=gen)
    with torch.no_grad():
        y = teacher(x)
    return x[: cfg.n_train], y[: cfg.n_train], x[cfg.n_train :], y[cfg.n_train :]


@dataclass
class History:
    """Per-step records of one run; distances are keyed by tensor label (W1, b1, ...)."""

    loss: list[float] = field(default_factory=list)
    task_loss: list[float] = field(default_factory=list)
    to_init: dict[str, list[float]] = field(default_factory=dict)
    to_teacher: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Result:
    """A finished run: the config, its history, the models and the summary numbers."""

    config: Config
    history: History
    teacher: nn.Module
    student: nn.Module
    init: dict[str, torch.Tensor]
    initial_loss: float
    final_loss: float
    test_loss: float
    update_share: dict[str, float]
    distance_to_init: dict[str, float]
    distance_to_teacher: dict[str, float]

    def summary(self) -> dict[str, object]:
        """The JSON-able numbers of the run (what the CLI prints with --json)."""
        return {
            "config": asdict(self.config),
            "initial_loss": self.initial_loss,
            "final_loss": self.final_loss,
            "test_loss": self.test_loss,
            "update_share": self.update_share,
            "distance_to_init": self.distance_to_init,
            "distance_to_teacher": self.distance_to_teacher,
        }


def _labelled(values: dict[str, float]) -> dict[str, float]:
    return {label(n): v for n, v in values.items()}


def _make_optimizer(cfg: Config, student: nn.Module, mask: Mask | None) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return MaskedAdamW(student.named_parameters(), mask=mask, lr=cfg.learning_rate, weight_decay=0.0)
    return MaskedSGD(student.named_parameters(), mask=mask, lr=cfg.learning_rate, momentum=cfg.momentum)


def mse_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The task loss as ``loss_fn(model, batch)``, the form the gradient criteria take."""
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def batches(cfg: Config, teacher: nn.Module, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The training set cut into ``n`` batches, for criteria that need data (SNIP, Fisher, ...)."""
    x, y, _, _ = make_data(cfg, teacher)
    return list(zip(x.chunk(n), y.chunk(n)))


def _schedule(cfg: Config) -> Schedule:
    if cfg.schedule == "cosine":
        return cosine(cfg.learning_rate, cfg.steps)
    return constant(cfg.learning_rate)


def train(cfg: Config, progress: bool = True, mask: Mask | None = None) -> Result:
    """Train the student on the teacher's data with MSE + lam * L1-to-init and record everything.

    ``penalty="loss"`` adds the L1 term to the loss (Liu 2026); ``penalty="prox"`` instead
    soft-thresholds the update toward the initialisation after each step (exact zeros;
    :class:`sparsity.train.ProximalL1`). ``mask`` (for the student built by
    ``make_teacher_student(cfg)``) restricts training to a subnetwork: sparse fine-tuning,
    with the masked optimizer.
    """
    teacher, student = make_teacher_student(cfg)
    x, y, x_test, y_test = make_data(cfg, teacher)
    init = snapshot(student)
    teacher_weights = snapshot(teacher)
    history = History()
    for name in init:
        history.to_init[label(name)] = []
        history.to_teacher[label(name)] = []

    def loss_of_batch(model: nn.Module, batch: None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        task_loss = nn.functional.mse_loss(model(x), y)
        extra = {"task_loss": task_loss.detach()}
        if cfg.penalty == "loss" and cfg.lam > 0:
            return task_loss + cfg.lam * l1_to_init(model, init), extra
        return task_loss, extra

    def record_distances(state: FitState) -> None:
        for key, value in _labelled(distances(state.model, init)).items():
            history.to_init[key].append(value)
        for key, value in _labelled(distances(state.model, teacher_weights)).items():
            history.to_teacher[key].append(value)

    hooks = [ProximalL1(init, cfg.lam)] if cfg.penalty == "prox" else []
    curves = fit(student, _make_optimizer(cfg, student, mask), loss_of_batch, cfg.steps, schedule=_schedule(cfg),
                 hooks=[*hooks, EachStep(record_distances)], progress=progress,
                 desc=f"lam={cfg.lam:g} {cfg.optimizer}")
    history.loss, history.task_loss = curves["loss"], curves["task_loss"]
    with torch.no_grad():
        final_loss = nn.functional.mse_loss(student(x), y).item()
        test_loss = nn.functional.mse_loss(student(x_test), y_test).item()
    return Result(
        config=cfg,
        history=history,
        teacher=teacher,
        student=student,
        init=init,
        initial_loss=history.task_loss[0],
        final_loss=final_loss,
        test_loss=test_loss,
        update_share={label(n): u.share for n, u in update_norms(student, init).items()},
        distance_to_init=_labelled(distances(student, init)),
        distance_to_teacher=_labelled(distances(student, teacher_weights)),
    )


def plot_run(result: Result, fig: object = None) -> object:
    """Liu 2026's figure: loss, and each tensor's L1 distance to init and to the teacher, over training."""
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(15, 4))
    fig.clear()
    ax_loss, ax_init, ax_teacher = fig.subplots(1, 3)
    h = result.history
    cfg = result.config
    ax_loss.plot(h.loss, label="total loss")
    ax_loss.plot(h.task_loss, label="MSE")
    ax_loss.set(yscale="log", xlabel="step", ylabel="loss", title="Loss")
    ax_loss.legend()
    for ax, curves, what in [(ax_init, h.to_init, "its initialisation"), (ax_teacher, h.to_teacher, "the teacher")]:
        for key, values in curves.items():
            ax.plot(values, label=key, linestyle="-" if key.startswith("W") else "--")
        ax.set(yscale="symlog", xlabel="step", ylabel="L1 distance", title=f"Student's distance to {what}")
        ax.legend(ncol=2, fontsize="small")
    fig.suptitle(f"Teacher-student MLP {cfg.widths}: lambda = {cfg.lam:g}, {cfg.optimizer}, penalty as {cfg.penalty}")
    fig.tight_layout()
    return fig


def plot_update_shares(results: Mapping[str, Result], ax: object = None) -> object:
    """Each tensor's share of the total L1 update, one group of bars per tensor and one bar per run
    (``results`` maps a legend label to a run): where did the update go?"""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    keys = list(next(iter(results.values())).update_share)
    width = 0.8 / len(results)
    for i, (name, result) in enumerate(results.items()):
        offset = (i - (len(results) - 1) / 2) * width
        ax.bar([x + offset for x in range(len(keys))], [result.update_share[k] for k in keys], width, label=name)
    ax.set(xticks=range(len(keys)), xticklabels=keys, ylabel="share of the total L1 update",
           title="Where did the update go?")
    ax.legend()
    return ax


def format_table(result: Result) -> str:
    """A plain-text table of the per-tensor update shares and distances."""
    lines = [f"{'tensor':<7}{'share of L1 update':>20}{'L1 to init':>14}{'L1 to teacher':>16}"]
    for key, share in result.update_share.items():
        lines.append(
            f"{key:<7}{share:>20.3f}{result.distance_to_init[key]:>14.3f}{result.distance_to_teacher[key]:>16.3f}"
        )
    lines.append(f"MSE: {result.initial_loss:.4g} at start -> {result.final_loss:.4g} (train), {result.test_loss:.4g} (test)")
    return "\n".join(lines)


def _parse_widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated ints, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    base = default_config(fast=fast_mode())
    parser = argparse.ArgumentParser(
        prog="python -m toys.teacher_student",
        description="Teacher-student MLP: which layer needs fine-tuning? (Liu 2026)",
    )
    parser.add_argument("--lam", type=finite_nonnegative, default=base.lam,
                        help="L1-to-init strength (default %(default)g)")
    parser.add_argument("--steps", type=positive_int, default=base.steps, help="training steps (default %(default)s)")
    parser.add_argument("--seed", type=random_seed, default=base.seed, help="the run's seed (default: %(default)s)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=base.optimizer, help="the optimizer (default: %(default)s)")
    parser.add_argument("--lr", type=finite_nonnegative, default=None, help=f"learning rate (default: {DEFAULT_LR})")
    parser.add_argument("--penalty", choices=PENALTIES, default=base.penalty, help="L1 as a loss term or a proximal step (default: %(default)s)")
    parser.add_argument("--schedule", choices=SCHEDULES, default=base.schedule,
                        help="the learning-rate schedule (default: %(default)s)")
    parser.add_argument("--widths", type=_parse_widths, default=base.widths, help="layer widths, input to output (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--plot", metavar="PATH", type=output_file, help="save the figure to PATH")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    use_threads()
    try:
        cfg = replace(
            base,
            lam=args.lam,
            steps=args.steps,
            seed=args.seed,
            optimizer=args.optimizer,
            lr=args.lr,
            penalty=args.penalty,
            schedule=args.schedule,
            widths=args.widths,
        )
    except ValueError as err:
        parser.error(str(err))
    try:
        result = train(cfg, progress=not args.no_progress)
    except FloatingPointError as err:
        print(f"{parser.prog}: error: {err}; try a smaller --lr or --lam", file=sys.stderr)
        return 1
    if args.plot:
        plot_run(result).savefig(args.plot, dpi=120)
    if args.json:
        json.dump(json_ready(result.summary()), sys.stdout, indent=2, allow_nan=False)
        print()
    else:
        print(format_table(result))
        if args.plot:
            print(f"figure written to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
