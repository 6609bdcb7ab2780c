"""What a run of the GPT fine-tuning benchmark depends on: its config and its setting.

The model is the lab's GPT at a preset (the default) or a Hugging Face architecture
(``BenchConfig.model``: a built-in family at the preset's shape, or a local folder or config.json;
``scaleup.hf_model``), built for the task world's vocabulary and pretrained the same way.

A *method* is how a copy of the pretrained model is fine-tuned (full, LoRA, a mask any criterion
chooses, ...): an object registered in ``scaleup.methods``, which the config asks for a method's
learning-rate grid and budgets.

:class:`BenchConfig` holds every setting a result depends on (a results folder belongs to
one config); :class:`Setup` is what every run of one config shares: the pretrained model,
its snapshot, the task world, the accuracies before fine-tuning and a cache of criterion
scores. Which world the benchmark runs in (the GPT's token tasks, or a toy MLP's) is
``BenchConfig.world_kind``; what a world provides is the seam of ``scaleup.bench_world``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scaleup import bench_world as bw
from scaleup import hf_model
from scaleup import pretrain as pt
from scaleup import tasks as tk
from scaleup.method_base import INCLUDE, Budget
from scaleup.method_dynamic import LiftSettings, RigLSettings
from scaleup.method_mask import L1Settings
from scaleup.methods import get_method, known_methods
from sparsity.eligibility import eligible
from sparsity.regularize import snapshot
from sparsity.train import RIGL_LAB_2025
from sparsity.validate import check_density, check_nonnegative_int, check_positive_int, named_params

DEMO_METHODS = ("full", "lora", "lift", "magnitude", "random")
"""What ``make demo`` compares: the CLI example's methods at the LoRA-equal budget."""


@dataclass(frozen=True)
class BenchConfig:
    """Everything a benchmark run depends on. A results folder belongs to one config.

    ``world_kind`` names the world (``scaleup.bench_world.WORLDS``); ``preset`` (the model size;
    for a built-in Hugging Face family its shape too, unused for a folder's config), ``target`` and
    ``world`` (the world's own config) default to that kind's default preset, first target and
    default config: the GPT world's ``tiny``, ``add2`` and ``tasks.WorldConfig()``.
    """

    preset: str | None = None
    target: str | None = None
    steps: int = 300
    batch_size: int = 32
    warmup: int = 30
    seeds: int = 3
    densities: tuple[float, ...] = (0.01, 0.05)
    lora_equal: bool = True
    lora_rank: int = 4
    lora_alpha: float = 8.0
    lift: LiftSettings = field(default_factory=LiftSettings)
    """The ``lift`` and ``lift_reselect`` methods' settings (``scaleup.method_dynamic``)."""
    rigl: RigLSettings = field(default_factory=RigLSettings)
    """The ``rigl`` method's settings."""
    score_batches: int = 4
    l1: L1Settings = field(default_factory=L1Settings)
    """The ``l1_discovered`` method's discovery run (``scaleup.method_mask``)."""
    tol: float = 1e-5
    lrs_full: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    lrs_sparse: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    lrs_lora: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    lr_tie: float = 0.01
    eval_every: int = 0
    """Evaluate the graded metrics every this many steps of each run (its ``trace``: the points of the
    learning-forgetting frontier along training); 0 evaluates only at the end."""
    """Validation accuracies within this of the best count as tied; the smallest tied lr is chosen."""
    sweep_all_seeds: bool = False
    pretrain_steps: int = 2000
    world: Any = None
    """The world's config: a ``tasks.WorldConfig`` for the GPT world, ``bench_modular.ModularConfig``, ..."""
    world_kind: str = "gpt"
    model: str = hf_model.LAB_GPT
    """The GPT world's model: ``"gpt"`` (the lab's), ``"hf-gpt2"``, ``"hf-llama"``, ``"hf-gpt_neox"``, or the
    path of a local folder or config.json (``scaleup.hf_model``)."""

    def __post_init__(self) -> None:
        spec = bw.kind(self.world_kind)
        hf_model.check_model(self.model, "BenchConfig.model")
        if hf_model.is_hf(self.model) and self.world_kind != "gpt":
            raise ValueError(f"BenchConfig.model {self.model!r} is a model of the GPT world's token tasks, "
                             f"not of world_kind {self.world_kind!r}")
        if self.preset is None:
            object.__setattr__(self, "preset", spec.default_preset)
        if self.world is None:
            object.__setattr__(self, "world", spec.config())
        if not isinstance(self.world, spec.config):
            raise TypeError(f"BenchConfig.world must be a {spec.config.__name__} for world_kind "
                            f"{self.world_kind!r}, got {type(self.world).__name__}")
        if self.preset not in spec.presets:
            raise ValueError(f"preset must be one of {spec.presets} for world_kind {self.world_kind!r}, "
                             f"got {self.preset!r}")
        known_targets = tuple(spec.targets(self.world))
        if self.target is None:
            object.__setattr__(self, "target", known_targets[0])
        if self.target not in known_targets:
            raise ValueError(f"target must be one of {known_targets}, got {self.target!r}")
        for name, settings in (("lift", LiftSettings), ("rigl", RigLSettings), ("l1", L1Settings)):
            if not isinstance(getattr(self, name), settings):
                raise TypeError(f"BenchConfig.{name} must be a {settings.__name__}, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "seeds", "lora_rank", "score_batches", "pretrain_steps"):
            check_positive_int(getattr(self, name), f"BenchConfig.{name}")
        if check_nonnegative_int(self.warmup, "BenchConfig.warmup") >= self.steps:
            raise ValueError(f"BenchConfig.warmup must be an int in [0, steps), got {self.warmup!r}")
        for d in self.densities:
            check_density(d, "density")
        for name in ("lrs_full", "lrs_sparse", "lrs_lora"):
            lrs = getattr(self, name)
            if not lrs or not all(isinstance(x, (int, float)) and x > 0 for x in lrs):
                raise ValueError(f"BenchConfig.{name} must be a non-empty tuple of positive learning rates, "
                                 f"got {lrs!r}")
        check_nonnegative_int(self.eval_every, "BenchConfig.eval_every")
        if not 0 <= self.lr_tie < 1:
            raise ValueError(f"BenchConfig.lr_tie must be in [0, 1), got {self.lr_tie!r}")

    @property
    def pretrain(self) -> pt.PretrainConfig:
        """The GPT world's pretraining config (the toy worlds pretrain in their own modules)."""
        if self.world_kind != "gpt":
            raise ValueError(f"BenchConfig.pretrain is the GPT world's; this config's world_kind is "
                             f"{self.world_kind!r}")
        return pt.default_config(self.preset, world=self.world, steps=self.pretrain_steps, model=self.model)

    @property
    def model_name(self) -> str:
        """The model as a report names it: "GPT tiny", "hf-gpt2 (tiny shape)", a config's path, or the
        toy world's name and size."""
        if self.world_kind != "gpt":
            spec = bw.kind(self.world_kind)
            return spec.title if len(spec.presets) == 1 else f"{spec.title} {self.preset}"
        if not hf_model.is_hf(self.model):
            return f"GPT {self.preset}"
        return f"{self.model} ({self.preset} shape)" if self.model in hf_model.BUILTIN else self.model

    def lrs(self, method: str) -> tuple[float, ...]:
        """The learning-rate grid of a method (the field its ``Method.lr_grid`` names)."""
        return getattr(self, get_method(method).lr_grid)

    def lr_edge(self, method: str, lr: float) -> str | None:
        """"top" or "bottom" when ``lr`` is the largest or smallest of a method's grid (of two or more
        values), else None: a best value at the edge says the optimum may lie outside the grid."""
        grid = self.lrs(method)
        if len(grid) < 2:
            return None
        return "top" if lr == max(grid) else "bottom" if lr == min(grid) else None

    def budgets(self, method: str) -> list[str]:
        """The keys of the budgets a method runs at (``Method.budgets``): "all", "lora_equal", "d0.05", "2:4"."""
        return [b.key for b in get_method(method).budgets(self)]

    def budget(self, method: str, key: str) -> Budget:
        """The budget of a method called ``key`` in results rows; one it does not run at is an error."""
        found = {b.key: b for b in get_method(method).budgets(self)}
        if key not in found:
            raise ValueError(f"method {method!r} runs at budgets {list(found)}, got {key!r}")
        return found[key]

    def budget_of(self, key: str) -> Budget:
        """The budget any known method of this config runs at under ``key`` (for labels of stored rows)."""
        for method in known_methods():
            for b in get_method(method).budgets(self):
                if b.key == key:
                    return b
        raise ValueError(f"no method of this config runs at a budget {key!r}")

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON data (what a results folder's config.json holds). The methods'
        settings are flat keys (``lift_rank``, ``rigl_every``, ``l1_lam``: :data:`SETTINGS_KEYS`), as before
        they moved into the methods; ``model`` is left out for the lab's GPT, ``world_kind`` for the GPT
        world, ``lift_eps`` when None and RigL's schedule (``rigl_end``, ``rigl_update_on_swap``,
        ``rigl_rounding``) at the lab's first RigL (``sparsity.train.RIGL_LAB_2025``), so folders written before
        those fields still hold this config."""
        data = asdict(self)
        for name, prefix in SETTINGS_KEYS.items():
            data.update({f"{prefix}{key}": value for key, value in data.pop(name).items()})
        if self.rigl.options() == RIGL_LAB_2025:
            for key in RIGL_LAB_2025:
                del data[f"rigl_{key}"]
        if not hf_model.is_hf(self.model):
            del data["model"]
        if self.world_kind == "gpt":  # likewise world_kind for the GPT world, and lift_eps when unset
            del data["world_kind"]
        if self.lift.eps is None:
            del data["lift_eps"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchConfig:
        """The config a results folder's config.json holds (the methods' settings from their flat keys;
        a folder without the RigL schedule keys ran with ``RIGL_LAB_2025``)."""
        data = {**{f"rigl_{k}": v for k, v in RIGL_LAB_2025.items()}, **data}  # older folders: the lab's first RigL
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        world_cls = bw.kind(d.get("world_kind", "gpt")).config
        d["world"] = world_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["world"].items()})
        for name, settings in (("lift", LiftSettings), ("rigl", RigLSettings), ("l1", L1Settings)):
            prefix = SETTINGS_KEYS[name]
            d[name] = settings(**{f.name: d.pop(prefix + f.name) for f in fields(settings) if prefix + f.name in d})
        return cls(**d)


SETTINGS_KEYS = {"lift": "lift_", "rigl": "rigl_", "l1": "l1_"}
"""BenchConfig field holding a method's settings -> the prefix of their flat keys in config.json."""


def default_config(preset: str | None = None, *, fast: bool = False, **overrides: Any) -> BenchConfig:
    """The benchmark's defaults (preset None: the world's default); ``fast`` (the lab's fast mode, passed down
    by an entry point) runs 30 steps, one seed, one lr per method."""
    if fast:
        base: dict[str, Any] = dict(steps=30, warmup=3, seeds=1, pretrain_steps=300, l1=L1Settings(lam=1e-4),
                                    lrs_full=(1e-3,), lrs_sparse=(1e-2,), lrs_lora=(1e-2,))
    else:
        base = {}
    base.update(overrides)
    return BenchConfig(preset=preset, **base)


MICRO_WORLD = tk.WorldConfig(n_symbols=5, length=3, n_facts=6, n_eval=64)
"""A small task world the micro preset learns in a couple of hundred pretraining steps, and whose
add2 it learns in a few dozen fine-tuning steps: the CI-sized setting of the demo and the tests."""


def demo_config(fast: bool = False) -> BenchConfig:
    """The ``make demo`` comparison: one seed, one learning rate per method, traced every few steps
    (so its report has frontiers), the tiny preset; ``fast``: the micro preset in :data:`MICRO_WORLD`."""
    if fast:
        return BenchConfig(preset="micro", world=MICRO_WORLD, steps=40, warmup=4, seeds=1, densities=(),
                           pretrain_steps=200, lrs_full=(3e-3,), lrs_sparse=(3e-2,), lrs_lora=(3e-2,), eval_every=10)
    return BenchConfig(preset="tiny", steps=150, warmup=15, seeds=1, densities=(), lrs_full=(3e-4,),
                       lrs_sparse=(1e-2,), lrs_lora=(3e-3,), eval_every=25)


@dataclass
class Setup:
    """The pretrained model, its snapshot, the task world (its data, and the benchmark's seam to it)
    and a cache of criterion scores."""

    cfg: BenchConfig
    world: Any
    """The world's data: a ``tasks.World`` for the GPT world (``bench.data``)."""
    pretrained: nn.Module
    reference: dict[str, torch.Tensor]
    device: str
    before: dict[str, float]
    bench: bw.BenchWorld
    """What the benchmark calls: batches, loss, evaluation, layer types, blocks (``scaleup.bench_world``)."""
    cache: dict[tuple[str, int], tuple[Any, float]] = field(default_factory=dict)
    """(method, seed) -> (the criterion's scores or Selection, the seconds scoring took)."""
    fingerprint: str = ""
    """``scaleup.pretrain.fingerprint`` of the pretrained model: every row records it."""

    @property
    def n_weights(self) -> int:
        params = named_params(self.pretrained)
        return sum(params[n].numel() for n in eligible(self.pretrained, INCLUDE))


def prepare(cfg: BenchConfig, *, cache_dir: str | Path | None = None, device: str = "cpu",
            progress: bool = True) -> Setup:
    """Load (or pretrain and cache) the model, and measure it before any fine-tuning (exact scores)."""
    if not isinstance(cfg, BenchConfig):
        raise TypeError(f"cfg must be a BenchConfig, got {type(cfg).__name__}")
    bench = bw.make_world(cfg, device)
    model = bench.pretrained(cache_dir, progress)
    val, test, source = bench.evaluate(model)
    before = {"target_val": val.exact, "target_test": test.exact,
              "retention": sum(s.exact for s in source.values()) / len(source)}
    return Setup(cfg, bench.data, model, snapshot(model), device, before, bench, fingerprint=pt.fingerprint(model))
