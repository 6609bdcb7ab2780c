"""Liu 2026's teacher-student MLP as a benchmark world: the one layer that needs to change is known.

Lesson 1 (``toys.teacher_student``) builds a student that differs from its teacher in one
layer, so only that layer *needs* fine-tuning. Here the construction serves the benchmark
(``scaleup.bench_world``), with a source to forget:

* **teacher A** (``toys.teacher_student.make_mlp``) labels the source: standard-normal inputs
  whose last ``new_inputs`` features are zero (the source never sees them).
* **teacher B** is teacher A with the first layer's weights on those last ``new_inputs``
  inputs redrawn (same LeCun scale), nothing else: it labels the target, standard-normal
  inputs on every feature.
* **the pretrained model** is a copy of teacher A (the student fitted to the source
  exactly). It is made, not trained, in microseconds, so nothing is cached and
  ``BenchConfig.pretrain_steps`` plays no part.

On source inputs A and B agree, so a model can learn the target and forget nothing:
changing ``fc1``'s columns of the new inputs (``n_hidden x new_inputs`` entries) turns A
into B exactly, and every other change (the other columns, ``fc2``, ``fc3``, the biases) moves
the source's answers. Where a method puts its update is what the frontier grades. (Lesson 1
redraws a whole layer; then no model fits both teachers and retention would only measure the
distance between them.)

Scores (``scaleup.tasks.Scores``), each in [0, 1], higher better, on fixed sets of ``n_eval``
inputs: ``token`` = 1 - MSE / MSE of the zero predictor, clipped at 0 (the share of the
teacher's output power explained: graded); ``exact`` = the share of examples whose squared
error is at most ``tolerance`` times their target's squared norm (an example counts only if
it is right to within that tolerance); ``nll`` = the MSE itself. Layer types and blocks are
the layers ``fc1``, ``fc2``, ... (weight and bias together); ``middle_blocks`` trains the middle
half of them (``scaleup.layers.middle_blocks``: ``fc2`` and ``fc3`` of three).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from scaleup import tasks as tk
from sparsity.validate import check_positive_int
from toys import teacher_student as ts

if TYPE_CHECKING:
    from scaleup.bench_config import BenchConfig

PRESETS = ("mlp",)
"""The one model size: the MLP of :class:`TeacherStudentConfig` (its ``widths``)."""
TARGET = "teacher_b"
SOURCE = "teacher_a"
Batch = tuple[torch.Tensor, torch.Tensor]
"""Inputs [n, widths[0]] and the teacher's outputs [n, widths[-1]]."""


@dataclass(frozen=True)
class TeacherStudentConfig:
    """The teachers and the evaluation sets (``BenchConfig.world`` of the ``teacher_student`` world kind)."""

    widths: tuple[int, ...] = (100, 20, 20, 100)
    activation: str = "relu"
    new_inputs: int = 20
    n_eval: int = 1000
    tolerance: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.widths) < 3 or not all(isinstance(w, int) and w > 0 for w in self.widths):
            raise ValueError(f"TeacherStudentConfig.widths must be >= 3 positive ints (a hidden layer at least), "
                             f"got {self.widths!r}")
        if self.activation not in ts.ACTIVATIONS:
            raise ValueError(f"TeacherStudentConfig.activation must be one of {tuple(ts.ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if not isinstance(self.new_inputs, int) or not 0 < self.new_inputs < self.widths[0]:
            raise ValueError(f"TeacherStudentConfig.new_inputs must be an int in (0, widths[0] = {self.widths[0]}), "
                             f"got {self.new_inputs!r}")
        check_positive_int(self.n_eval, "TeacherStudentConfig.n_eval")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) \
                or not 0 < self.tolerance < 1:
            raise ValueError(f"TeacherStudentConfig.tolerance must be in (0, 1), got {self.tolerance!r}")


def targets(cfg: TeacherStudentConfig) -> dict[str, str]:
    """The one target: teacher B."""
    return {TARGET: f"teacher A with fc1's weights on the last {cfg.new_inputs} inputs redrawn; "
                    f"retention: teacher A on inputs without them"}


def teachers(cfg: TeacherStudentConfig) -> tuple[nn.Sequential, nn.Sequential]:
    """Teacher A, and teacher B: A with ``fc1``'s columns of the last ``new_inputs`` inputs redrawn."""
    a = ts.make_mlp(cfg.widths, cfg.activation, seed=cfg.seed)
    b = copy.deepcopy(a)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    with torch.no_grad():
        b.fc1.weight[:, -cfg.new_inputs:] = torch.randn(cfg.widths[1], cfg.new_inputs, generator=gen) \
            * math.sqrt(1 / cfg.widths[0])
    return a.requires_grad_(False), b.requires_grad_(False)


def scores(pred: torch.Tensor, y: torch.Tensor, tolerance: float) -> tk.Scores:
    """Share of examples within ``tolerance`` (relative squared error), explained output power, MSE."""
    err = ((pred.float() - y) ** 2).sum(1)
    power = (y**2).sum(1)
    return tk.Scores(exact=(err <= tolerance * power).float().mean().item(),
                     token=max(0.0, 1.0 - err.sum().item() / power.sum().item()),
                     nll=err.mean().item() / y.shape[1])


class TeacherStudentWorld:
    """The teacher-student MLP behind the benchmark's seam (``scaleup.bench_world.BenchWorld``)."""

    source_tasks = (SOURCE,)

    def __init__(self, cfg: BenchConfig, device: str) -> None:
        self.config, self.device = cfg.world, device
        self.teacher_a, self.teacher_b = (t.to(device) for t in teachers(cfg.world))
        self.data = {"teacher_a": self.teacher_a, "teacher_b": self.teacher_b}
        self.layer_types = tuple(self.blocks())
        self.val = self._labelled(self._inputs(cfg.world.n_eval, self._gen(30_000), source=False), self.teacher_b)
        self.test = self._labelled(self._inputs(cfg.world.n_eval, self._gen(30_001), source=False), self.teacher_b)
        self.source_test = self._labelled(self._inputs(cfg.world.n_eval, self._gen(30_002), source=True),
                                          self.teacher_a)

    def _gen(self, offset: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.seed + offset)

    def _inputs(self, n: int, gen: torch.Generator, source: bool) -> torch.Tensor:
        """Standard-normal inputs; the source's have zeros on the last ``new_inputs`` features."""
        x = torch.randn(n, self.config.widths[0], generator=gen)
        if source:
            x[:, -self.config.new_inputs:] = 0.0
        return x.to(self.device)

    @torch.no_grad()
    def _labelled(self, x: torch.Tensor, teacher: nn.Module) -> Batch:
        return x, teacher(x)

    def checkpoint(self, cache_dir: str | Path | None) -> Path | None:
        return None  # the pretrained model is a copy of teacher A, made on the spot

    def pretrained(self, cache_dir: str | Path | None, progress: bool) -> nn.Module:
        return copy.deepcopy(self.teacher_a).requires_grad_(True)

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return self._labelled(self._inputs(batch_size, gen, source=False), self.teacher_b)

    def score_batches(self, n: int, batch_size: int, seed: int) -> list[Batch]:
        gen = torch.Generator().manual_seed(5000 + seed)
        return [self._labelled(self._inputs(batch_size, gen, source=False), self.teacher_b) for _ in range(n)]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[tk.Scores, tk.Scores, dict[str, tk.Scores]]:
        tol = self.config.tolerance
        (xv, yv), (xt, yt), (xs, ys) = self.val, self.test, self.source_test
        return scores(model(xv), yv, tol), scores(model(xt), yt, tol), {SOURCE: scores(model(xs), ys, tol)}

    def layer_type(self, name: str) -> str:
        layer = name.split(".")[0]
        if layer not in self.blocks() or name.count(".") != 1:
            raise ValueError(f"'{name}' is not a parameter name of the teacher-student MLP (fc1.weight, ...)")
        return layer

    def blocks(self) -> list[str]:
        return [f"fc{i}" for i in range(1, len(self.config.widths))]
