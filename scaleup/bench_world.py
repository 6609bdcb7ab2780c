"""The benchmark's seam: what a task world gives the controlled benchmark, and the worlds there are.

The benchmark (``scaleup.compare``, ``scaleup.finetune``) compares fine-tuning methods by
learning on a *target* against retention of the *sources* (Biderman et al. 2024, "LoRA
Learns Less and Forgets Less"). Nothing in that comparison is specific to a GPT: a method
needs a pretrained model, the target's training batches (one per step, a function of the
seed and the step, so every method sees the same data in the same order), a loss, a few
batches for gradient criteria, and an evaluation into graded scores (``scaleup.tasks.Scores``:
an all-or-nothing ``exact``, a graded ``token`` and an ``nll``). :class:`BenchWorld` is that
contract; the same benchmark then runs from a toy MLP to a transformer ("toy to transformer
in one harness"):

``gpt``              the synthetic token tasks of ``scaleup.tasks`` on a pretrained ``scaleup.gpt``
                     (the default; :class:`GPTWorld`)
``modular``          the modular multi-task MLP of ``toys.modular_world``: pretrained on every task
                     but one, fine-tuned on the held-out one (``scaleup.bench_modular``)
``teacher_student``  Liu 2026's teacher-student MLP: a copy of teacher A fine-tuned toward a teacher
                     B that differs from A in one layer only (``scaleup.bench_teacher_student``)

A world also says how its parameters group into layer types (the update profile of a run)
and which prefixes are its *blocks*, in order (the ``middle_blocks`` method trains the middle
half of them, ``scaleup.layers.middle_blocks``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from scaleup import bench_modular, bench_teacher_student, gpt, layers
from scaleup import pretrain as pt
from scaleup import tasks as tk

if TYPE_CHECKING:
    from scaleup.bench_config import BenchConfig


class BenchWorld(Protocol):
    """What the benchmark asks of a task world (built as ``World(cfg, device)`` from a ``BenchConfig``).

    ``source_tasks``: the names retention averages over; ``layer_types``: the groups
    :meth:`layer_type` maps parameters to, in report order; ``data``: the world's own data
    object (``Setup.world``; a ``tasks.World`` for the GPT world).
    """

    source_tasks: tuple[str, ...]
    layer_types: tuple[str, ...]
    data: Any

    def pretrained(self, cache_dir: str | Path | None, progress: bool) -> nn.Module:
        """The model every method fine-tunes a copy of, on the world's device (made once, then cached)."""

    def checkpoint(self, cache_dir: str | Path | None) -> Path | None:
        """Where :meth:`pretrained` caches its model (a file or folder); None for a world that makes it
        on the spot. A scale-out worker loads it and never trains it (``scaleup.grid.worker_setup``)."""

    def train_batch(self, step: int, batch_size: int, seed: int) -> Any:
        """The target's training batch of ``step`` for ``seed``, on the device: a function of (seed, step) only."""

    def score_batches(self, n: int, batch_size: int, seed: int) -> list[Any]:
        """``n`` batches of the target's training split for the gradient criteria (SNIP, Fisher, ...)."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The target's training loss of ``model`` on ``batch`` (``loss_fn(model, batch)``, what criteria take)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context of a training step (bf16 autocast for a GPT on a GPU; none for the toys)."""

    def evaluate(self, model: nn.Module) -> tuple[tk.Scores, tk.Scores, dict[str, tk.Scores]]:
        """Scores of the target's validation and test splits, and of each source task's test split."""

    def layer_type(self, name: str) -> str:
        """The layer type (one of ``layer_types``) of a parameter of the pretrained model."""

    def blocks(self) -> list[str]:
        """The model's blocks as parameter-name prefixes, input to output."""


class GPTWorld:
    """The GPT benchmark's world: ``scaleup.tasks`` on a GPT pretrained by ``scaleup.pretrain``.

    Exactly the calls the benchmark made before this seam existed, so every number it
    produces is unchanged: batches from ``tasks.World.train_batch``, ``tasks.loss`` (under
    ``gpt.autocast``), ``tasks.task_scores`` on the fixed evaluation sets; layer types and
    blocks by ``scaleup.layers.layer_type`` and ``block_names`` (the lab GPT's ``blocks.<i>``, or a
    Hugging Face model's, ``BenchConfig.model``).
    """

    source_tasks = tk.SOURCE_TASKS

    def __init__(self, cfg: BenchConfig, device: str) -> None:
        self.cfg, self.device = cfg, device
        self.data = tk.World(cfg.world)
        self.model: nn.Module | None = None

    layer_types = layers.LAYER_TYPES

    def checkpoint(self, cache_dir: str | Path | None) -> Path | None:
        return pt.checkpoint_path(self.cfg.pretrain, cache_dir)

    def pretrained(self, cache_dir: str | Path | None, progress: bool) -> nn.Module:
        self.model = pt.pretrained(self.cfg.pretrain, cache_dir=cache_dir, device=self.device, progress=progress)
        return self.model

    def train_batch(self, step: int, batch_size: int, seed: int) -> tk.Batch:
        return self.data.train_batch(self.cfg.target, step, batch_size, seed).to(self.device)

    def score_batches(self, n: int, batch_size: int, seed: int) -> list[tk.Batch]:
        gen = torch.Generator().manual_seed(5000 + seed)
        return [self.data.batch(self.cfg.target, "train", batch_size, gen).to(self.device) for _ in range(n)]

    def loss(self, model: nn.Module, batch: tk.Batch) -> torch.Tensor:
        return tk.loss(model, batch)

    def autocast(self) -> contextlib.AbstractContextManager:
        return gpt.autocast(self.device)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[tk.Scores, tk.Scores, dict[str, tk.Scores]]:
        world, target = self.data, self.cfg.target
        return (tk.task_scores(model, world, target, "val"), tk.task_scores(model, world, target, "test"),
                {t: tk.task_scores(model, world, t, "test") for t in tk.SOURCE_TASKS})

    def layer_type(self, name: str) -> str:
        return layers.layer_type(name)

    def blocks(self) -> list[str]:
        if self.model is None:
            raise RuntimeError("GPTWorld.blocks() needs the pretrained model: call pretrained() first")
        return layers.block_names(self.model)


@dataclass(frozen=True)
class WorldKind:
    """One kind of world: its config class, its presets and default preset, its targets (name ->
    what it is, given the world config; the first is the default) and its :class:`BenchWorld` class."""

    config: type
    presets: tuple[str, ...]
    default_preset: str
    targets: Callable[[Any], Mapping[str, str]]
    make: Callable[[BenchConfig, str], BenchWorld]
    title: str


WORLDS: dict[str, WorldKind] = {
    "gpt": WorldKind(tk.WorldConfig, tuple(gpt.PRESETS), "tiny", lambda world: tk.TARGET_TASKS, GPTWorld, "GPT"),
    "modular": WorldKind(bench_modular.ModularConfig, bench_modular.PRESETS, "mlp", bench_modular.targets,
                         bench_modular.ModularWorld, "Modular MLP"),
    "teacher_student": WorldKind(bench_teacher_student.TeacherStudentConfig, bench_teacher_student.PRESETS, "mlp",
                                 bench_teacher_student.targets, bench_teacher_student.TeacherStudentWorld,
                                 "Teacher-student MLP"),
}
"""The world kinds ``BenchConfig.world_kind`` names."""


def kind(name: str) -> WorldKind:
    """The world kind called ``name``; an unknown name is an error listing the known ones."""
    if name not in WORLDS:
        raise ValueError(f"world_kind must be one of {tuple(WORLDS)}, got {name!r}")
    return WORLDS[name]


def make_world(cfg: BenchConfig, device: str) -> BenchWorld:
    """The :class:`BenchWorld` of a config, on ``device``."""
    return kind(cfg.world_kind).make(cfg, device)


def describe(cfg: BenchConfig) -> str:
    """The world, model and target of a config in words, for reports: "Model GPT tiny, target `add2` (near: ...)",
    after "World `modular`: " for a world other than the GPT's."""
    spec = kind(cfg.world_kind)
    text = f"Model {cfg.model_name}, target `{cfg.target}` ({spec.targets(cfg.world)[cfg.target]})"
    return text if cfg.world_kind == "gpt" else f"World `{cfg.world_kind}`: {text}"
