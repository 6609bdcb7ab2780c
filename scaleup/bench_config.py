"""What a run of the GPT fine-tuning benchmark depends on: its methods, its config, its setting.

The model is the lab's GPT at a preset (the default) or a Hugging Face architecture
(``BenchConfig.model``: a built-in family at the preset's shape, or a local folder or config.json;
``scaleup.hf_model``), built for the task world's vocabulary and pretrained the same way.

A *method* is how a copy of the pretrained model is fine-tuned: ``full`` (every parameter),
``lora`` (adapters, ``scaleup.lora``), ``2:4`` (the N:M pattern sparse tensor cores
accelerate, chosen by magnitude) or a sparse mask chosen by any criterion registered in
``sparsity.registry``; the registry's ``layers`` criterion runs as ``middle_blocks`` (the
middle half of the blocks). A criterion registered after this module was imported is a
method too: :func:`known_methods` reads the registry when it is asked.

:class:`BenchConfig` holds every setting a result depends on (a results folder belongs to
one config); :class:`Setup` is what every run of one config shares: the pretrained model,
its snapshot, the task world, the accuracies before fine-tuning and a cache of criterion
scores. Which world the benchmark runs in (the GPT's token tasks, or a toy MLP's) is
``BenchConfig.world_kind``; what a world provides is the seam of ``scaleup.bench_world``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scaleup import bench_world as bw
from scaleup import hf_model
from scaleup import pretrain as pt
from scaleup import tasks as tk
from sparsity import registry
from sparsity.dynamic import ROUNDINGS
from sparsity.eligibility import eligible
from sparsity.fastmode import fast_mode
from sparsity.regularize import snapshot
from sparsity.train import RIGL_LAB_2025
from sparsity.validate import (check_density, check_finite_nonnegative, check_nonnegative_int, check_positive_int,
                               named_params)

DENSE_METHODS = ("full", "lora")
"""Methods without a mask: every parameter, or LoRA's adapters."""
TWO_FOUR = "2:4"
MIDDLE_BLOCKS = "middle_blocks"
"""The benchmark's name for the registry's ``layers`` criterion, with the middle blocks as its layers."""
LIFT_RESELECT = "lift_reselect"
"""LIFT as its authors run it (Liu et al. 2025): principal weights re-selected every
``BenchConfig.lift_reselect_every`` steps, AdamW betas (0.9, 0.95), and with ``BenchConfig.lift_eps`` their
epsilon placement (added before the bias correction); plain ``lift`` selects once."""
RIGL = "rigl"
"""Dynamic sparsity (RigL, Evci et al. 2020): a random mask at the budget, then every
``BenchConfig.rigl_every`` steps the entries that moved least are dropped and as many with the
largest gradient grown (``sparsity.train.RigL``), on the paper's schedule by default (``BenchConfig.rigl_end``,
``rigl_update_on_swap``, ``rigl_rounding``)."""
METHODS = ("full", "lora", "lift", LIFT_RESELECT, RIGL, "random", "magnitude", "l1_discovered", "gradient", "fisher",
           "snip", "movement",
           MIDDLE_BLOCKS, TWO_FOUR)
"""The default run, in the order a run does them (the headline comparison first, so a partial run
already answers it). :func:`known_methods` adds every other registered criterion."""
DEMO_METHODS = ("full", "lora", "lift", "magnitude", "random")
"""What ``make demo`` compares: the CLI example's methods at the LoRA-equal budget."""
INCLUDE = "weight"
"""Sparse budgets are spent on the block matrices (``parameter_kinds`` "weight")."""


def criterion_of(method: str) -> str | None:
    """The registry criterion a method selects its mask with (None for full and LoRA)."""
    if method in DENSE_METHODS:
        return None
    if method == TWO_FOUR:
        return "magnitude"
    if method == MIDDLE_BLOCKS:
        return "layers"
    if method == LIFT_RESELECT:
        return "lift"
    if method == RIGL:
        return "random"
    if method in registry.CRITERIA and method != "layers":
        return method
    raise ValueError(f"method must be one of {known_methods()}, got {method!r}")


def known_methods() -> tuple[str, ...]:
    """Every method the benchmark runs now: :data:`METHODS`, then the criteria registered since."""
    extra = tuple(n for n in registry.CRITERIA if n not in METHODS and n != "layers")
    return METHODS + extra


def is_sparse_criterion(method: str) -> bool:
    """A method whose mask a criterion chooses within the benchmark's budgets (not full, LoRA or 2:4)."""
    return method not in DENSE_METHODS and method != TWO_FOUR and method in known_methods()


def check_methods(methods: Iterable[str]) -> list[str]:
    """The methods, deduplicated in order; unknown names are an error listing the known ones."""
    methods = list(methods)
    known = known_methods()
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty list from {known}; unknown: {unknown}")
    return list(dict.fromkeys(methods))


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
    lift_rank: int = 4
    lift_reselect_every: int = 50
    lift_betas: tuple[float, float] = (0.9, 0.95)
    lift_eps: float | None = None
    """``lift_reselect``'s Adam epsilon added before the bias correction, as LIFT's optimizer does (1e-6
    in its configs; ``sparsity.train.EpsBeforeBiasCorrection``); None keeps PyTorch's AdamW (eps 1e-8 after it)."""
    rigl_every: int = 50
    rigl_fraction: float = 0.3
    rigl_end: float = 0.75
    """RigL swaps at steps up to this share of ``steps`` (the paper's 0.75; 1.0 to the last step)."""
    rigl_update_on_swap: bool = False
    """Whether the optimizer also steps on a swap step (RigL does not: the mask changes instead)."""
    rigl_rounding: str = "floor"
    """How RigL's swap counts are made whole: "floor" (RigL's code) or "round" (``sparsity.dynamic.ROUNDINGS``).
    The three ``rigl_*`` options default to the paper's settings (``sparsity.train.RIGL_PAPER``); the committed
    RigL rows ran with ``sparsity.train.RIGL_LAB_2025``, which a folder without these keys holds."""
    score_batches: int = 4
    l1_lam: float = 2e-3
    l1_lr: float = 1e-3
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
        for name in ("steps", "batch_size", "seeds", "lora_rank", "lift_rank", "lift_reselect_every", "rigl_every",
                     "score_batches",
                     "pretrain_steps"):
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
        if self.lift_eps is not None:
            check_finite_nonnegative(self.lift_eps, "BenchConfig.lift_eps")
            if self.lift_eps == 0:
                raise ValueError("BenchConfig.lift_eps must be > 0 (or None for PyTorch's placement), got 0")
        if not 0 < self.rigl_fraction <= 1:
            raise ValueError(f"BenchConfig.rigl_fraction must be in (0, 1], got {self.rigl_fraction!r}")
        if isinstance(self.rigl_end, bool) or not isinstance(self.rigl_end, (int, float)) \
                or not 0 < self.rigl_end <= 1:
            raise ValueError(f"BenchConfig.rigl_end must be a share of the steps in (0, 1], got {self.rigl_end!r}")
        if not isinstance(self.rigl_update_on_swap, bool):
            raise TypeError(f"BenchConfig.rigl_update_on_swap must be a bool, got {self.rigl_update_on_swap!r}")
        if self.rigl_rounding not in ROUNDINGS:
            raise ValueError(f"BenchConfig.rigl_rounding must be one of {ROUNDINGS}, got {self.rigl_rounding!r}")
        if not 0 <= self.lr_tie < 1:
            raise ValueError(f"BenchConfig.lr_tie must be in [0, 1), got {self.lr_tie!r}")
        if not self.l1_lam > 0 or not self.l1_lr > 0:
            raise ValueError("l1_lam and l1_lr must be > 0")

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

    def rigl_options(self) -> dict[str, Any]:
        """The keyword options of ``sparsity.train.RigL`` this config sets (end, update_on_swap, rounding)."""
        return dict(end=self.rigl_end, update_on_swap=self.rigl_update_on_swap, rounding=self.rigl_rounding)

    def lrs(self, method: str) -> tuple[float, ...]:
        return self.lrs_full if method == "full" else self.lrs_lora if method == "lora" else self.lrs_sparse

    def lr_edge(self, method: str, lr: float) -> str | None:
        """"top" or "bottom" when ``lr`` is the largest or smallest of a method's grid (of two or more
        values), else None: a best value at the edge says the optimum may lie outside the grid."""
        grid = self.lrs(method)
        if len(grid) < 2:
            return None
        return "top" if lr == max(grid) else "bottom" if lr == min(grid) else None

    def budgets(self, method: str) -> list[str]:
        """Budget labels a method runs at: "all" (full), "lora_equal", "d0.05" (a density), "2:4"."""
        if method == "full":
            return ["all"]
        if method == "lora":
            return ["lora_equal"]
        if method == TWO_FOUR:
            return [TWO_FOUR]
        return (["lora_equal"] if self.lora_equal else []) + [f"d{d:g}" for d in self.densities]

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON data (what a results folder's config.json holds). ``model`` is left
        out for the lab's GPT, ``world_kind`` for the GPT world, ``lift_eps`` when None and the ``rigl_*``
        options at the lab's first RigL (``RIGL_LAB_2025``), so folders written before those fields still
        hold this config."""
        data = asdict(self)
        if self.rigl_options() == RIGL_LAB_2025:
            for key in RIGL_LAB_2025:
                del data[f"rigl_{key}"]
        if not hf_model.is_hf(self.model):
            del data["model"]
        if self.world_kind == "gpt":  # likewise world_kind for the GPT world, and lift_eps when unset
            del data["world_kind"]
        if self.lift_eps is None:
            del data["lift_eps"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchConfig:
        """The config a results folder's config.json holds."""
        d = {**{f"rigl_{k}": v for k, v in RIGL_LAB_2025.items()}, **data}  # older folders: the lab's first RigL
        world_cls = bw.kind(d.get("world_kind", "gpt")).config
        d["world"] = world_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["world"].items()})
        for f in fields(cls):
            if isinstance(d.get(f.name), list):
                d[f.name] = tuple(d[f.name])
        return cls(**d)


def default_config(preset: str | None = None, **overrides: Any) -> BenchConfig:
    """The benchmark's defaults (preset None: the world's default); fast mode (``LAB_FAST=1``) runs 30 steps,
    one seed, one lr per method."""
    if fast_mode():
        base: dict[str, Any] = dict(steps=30, warmup=3, seeds=1, pretrain_steps=300, l1_lam=1e-4, lrs_full=(1e-3,),
                                    lrs_sparse=(1e-2,), lrs_lora=(1e-2,))
    else:
        base = {}
    base.update(overrides)
    return BenchConfig(preset=preset, **base)


MICRO_WORLD = tk.WorldConfig(n_symbols=5, length=3, n_facts=6, n_eval=64)
"""A small task world the micro preset learns in a couple of hundred pretraining steps, and whose
add2 it learns in a few dozen fine-tuning steps: the CI-sized setting of the demo and the tests."""


def demo_config() -> BenchConfig:
    """The ``make demo`` comparison: one seed, one learning rate per method, traced every few steps
    (so its report has frontiers), the tiny preset; fast mode the micro preset in :data:`MICRO_WORLD`."""
    if fast_mode():
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
    return Setup(cfg, bench.data, model, snapshot(model), device, before, bench)
