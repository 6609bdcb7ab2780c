"""The modular toy as a benchmark world: pretrain on every task but one, fine-tune on the held-out one.

``toys.modular_world`` (lesson 2) is a multi-task world with known modules: task ``t<k>``
and its related task ``r<k>`` read feature group k only, through parities no linear read-out
solves, and one shared ReLU trunk with a head per task answers all of them. Here it plays
the benchmark's world (``scaleup.bench_world``):

* **pretraining** (the source): the trunk and the heads of every task but the target,
  trained together (``toys.modular_training.train``, ``pretrain_steps`` AdamW steps); then
  the target's head alone is fitted on the frozen trunk (a linear probe, ``probe_steps``
  full-batch Adam steps). The probe is LP-FT's first half (Kumar et al. 2022): every method
  starts from a head that reads what the trunk already knows, so no sparse budget is spent
  on repairing a random head, and fine-tuning must change the trunk to learn the target's
  parities. The model is cached as safetensors under ``scaleup.pretrain.default_cache_dir()``,
  named by a hash of everything it depends on.
* **fine-tuning** (the target): cross-entropy of the held-out task ``t<k>``'s head.
* **retention**: the other tasks' test scores (the other ``t`` tasks and every ``r`` task,
  ``r<k>`` included: it shares the target's feature group, so it is where interference shows).

Scores (``scaleup.tasks.Scores``): ``exact`` = accuracy; ``token`` = the mean probability the
model gives the right class, the graded measure (it moves before the argmax flips; chance is
1 / n_classes for both); ``nll`` = cross-entropy (nats). The target's test split of the toy is
cut in two: the first half is the validation split (learning rates are chosen on it), the
second the test split (reported).

Heads of the source tasks get no gradient from the target's loss, so no method moves them;
they are matrices like any other, so a sparse budget per tensor and LoRA give them their share
(counted in ``trainable``), the same for every method. Blocks (for ``middle_blocks``): the
trunk's layers ``fc1``, ``fc2``, ...; layer types: ``trunk.fc<i>``, ``head.target``, ``head.source``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from scaleup import pretrain as pt
from scaleup import tasks as tk
from sparsity.train import fit
from sparsity.validate import check_positive_int
from toys import modular_training, modular_world

if TYPE_CHECKING:
    from scaleup.bench_config import BenchConfig

PRESETS = ("mlp",)
"""The one model size: the trunk of :class:`ModularConfig` (its ``hidden`` widths)."""
CODE_VERSION = 1
"""Part of the cache key: bump it when the pretraining below changes what it produces."""
Batch = tuple[torch.Tensor, torch.Tensor]
"""Inputs [n, in_dim] and the target task's class labels [n]."""


@dataclass(frozen=True)
class ModularConfig:
    """The modular world and its pretraining (``BenchConfig.world`` of the ``modular`` world kind)."""

    n_tasks: int = 4
    group_size: int = 8
    hidden: tuple[int, ...] = (96, 96)
    n_train: int = 8192
    n_test: int = 4096
    pretrain_lr: float = 3e-3
    pretrain_batch: int = 256
    weight_decay: float = 0.01
    probe_steps: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int(self.probe_steps, "ModularConfig.probe_steps")
        if self.n_test < 2:
            raise ValueError(f"ModularConfig.n_test must be >= 2 (it is split into validation and test), "
                             f"got {self.n_test!r}")
        self.toy(1)  # the toy's own config checks the rest

    def toy(self, steps: int) -> modular_world.Config:
        """The ``toys.modular_world.Config`` of this world, pretraining for ``steps`` steps."""
        return replace(modular_world.Config(), n_tasks=self.n_tasks, group_size=self.group_size, hidden=self.hidden,
                       n_train=self.n_train, n_test=self.n_test, steps=steps, batch=self.pretrain_batch,
                       lr=self.pretrain_lr, weight_decay=self.weight_decay, seed=self.seed, world_seed=self.seed)

    @property
    def tasks(self) -> list[str]:
        return [f"{kind}{k}" for kind in "tr" for k in range(self.n_tasks)]


def targets(cfg: ModularConfig) -> dict[str, str]:
    """The targets a benchmark can hold out: every ``t<k>``."""
    return {f"t{k}": f"task t{k} held out of pretraining; retention: the other {2 * cfg.n_tasks - 1} tasks"
            for k in range(cfg.n_tasks)}


def scores(logits: torch.Tensor, labels: torch.Tensor) -> tk.Scores:
    """Accuracy, mean probability of the right class, and cross-entropy of class logits."""
    logits = logits.float()
    right = logits.softmax(-1).gather(1, labels[:, None]).squeeze(1)
    return tk.Scores(exact=(logits.argmax(-1) == labels).float().mean().item(), token=right.mean().item(),
                     nll=nn.functional.cross_entropy(logits, labels).item())


class ModularWorld:
    """The modular toy behind the benchmark's seam (``scaleup.bench_world.BenchWorld``)."""

    def __init__(self, cfg: BenchConfig, device: str) -> None:
        self.cfg, self.device, self.target = cfg, device, cfg.target
        self.toy = cfg.world.toy(cfg.pretrain_steps)
        self.data = modular_world.make_world(self.toy)
        self.source_tasks = tuple(t for t in cfg.world.tasks if t != self.target)
        self.layer_types = (*(f"trunk.{b}" for b in self.blocks()), "head.target", "head.source")
        half = self.toy.n_test // 2
        d = self.data
        self.x_train = d.x_train.to(device)
        self.y_train = d.y_train[self.target].to(device)
        self.x_val, self.y_val = d.x_test[:half].to(device), d.y_test[self.target][:half].to(device)
        self.x_test = d.x_test[half:].to(device)
        self.y_test = {t: y[half:].to(device) for t, y in d.y_test.items()}

    def checkpoint(self, cache_dir: str | Path | None) -> Path | None:
        return self.cache_path(cache_dir)

    def cache_path(self, cache_dir: str | Path | None) -> Path:
        """Where the pretrained model lives: named by the target, the steps and a hash of everything else."""
        key = json.dumps(dict(code=CODE_VERSION, world=asdict(self.cfg.world), target=self.target,
                              steps=self.cfg.pretrain_steps), sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        name = f"modular-{self.target}-steps{self.cfg.pretrain_steps}-{digest}.safetensors"
        return Path(cache_dir or pt.default_cache_dir()) / name

    def pretrained(self, cache_dir: str | Path | None, progress: bool) -> nn.Module:
        model = modular_world.make_model(self.toy)
        path = self.cache_path(cache_dir)
        if path.exists():
            try:
                model.load_state_dict(load_file(path))
                return model.to(self.device)
            except (SafetensorError, OSError, RuntimeError) as e:  # truncated, unreadable, or another model's
                warnings.warn(f"discarding the cached modular model {path} and rebuilding it: {e}", stacklevel=2)
                path.unlink()
        modular_training.train(model, self.data, self.source_tasks, steps=self.cfg.pretrain_steps, seed=self.toy.seed,
                               progress=progress, desc=f"pretraining on all but {self.target}")
        self._probe(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.safetensors")  # this process's own
        save_file({n: t.contiguous() for n, t in model.state_dict().items()}, partial)
        os.replace(partial, path)
        return model.to(self.device)

    def _probe(self, model: modular_world.ModularMLP) -> None:
        """Fit the target's head on the frozen trunk's features (full-batch Adam, cross-entropy)."""
        head = model.heads[self.target]
        with torch.no_grad():
            features = model.features(self.data.x_train)
        labels = self.data.y_train[self.target]
        fit(head, torch.optim.Adam(head.parameters(), lr=1e-2),
            lambda h, _: nn.functional.cross_entropy(h(features), labels), self.cfg.world.probe_steps)

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(len(self.x_train), (batch_size,), generator=gen).to(self.device)
        return self.x_train[idx], self.y_train[idx]

    def score_batches(self, n: int, batch_size: int, seed: int) -> list[Batch]:
        gen = torch.Generator().manual_seed(5000 + seed)
        picks = [torch.randint(len(self.x_train), (batch_size,), generator=gen).to(self.device) for _ in range(n)]
        return [(self.x_train[idx], self.y_train[idx]) for idx in picks]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x)[self.target], y)

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[tk.Scores, tk.Scores, dict[str, tk.Scores]]:
        val = model(self.x_val)
        test = model(self.x_test)
        return (scores(val[self.target], self.y_val), scores(test[self.target], self.y_test[self.target]),
                {t: scores(test[t], self.y_test[t]) for t in self.source_tasks})

    def layer_type(self, name: str) -> str:
        parts = name.split(".")
        if parts[0] in self.blocks() and len(parts) == 2:
            return f"trunk.{parts[0]}"
        if parts[0] == "heads" and len(parts) == 3 and parts[1] in self.cfg.world.tasks:
            return "head.target" if parts[1] == self.target else "head.source"
        raise ValueError(f"'{name}' is not a parameter name of toys.modular_world.ModularMLP")

    def blocks(self) -> list[str]:
        return [f"fc{i}" for i in range(1, len(self.cfg.world.hidden) + 1)]
