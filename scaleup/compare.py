"""The controlled benchmark: full fine-tuning vs sparse fine-tuning (every criterion) vs LoRA.

One pretrained GPT (``scaleup.pretrain``), one target task (``scaleup.tasks``), and every
method fine-tunes a copy of it under the same conditions: the same steps, the same data
in the same order (batch ``s`` of seed ``k`` is a function of (k, s) only), the same
learning-rate schedule shape (warm-up, cosine), AdamW without weight decay (decay toward
zero would pull sparse methods and LoRA to different places), and a learning-rate sweep
per method whose value is chosen on the target's *validation* split (the smallest rate within
``lr_tie`` of the best accuracy: see ``best_lr``); the test split is only reported. Each run
measures what the question needs:

* ``target_test``: exact-match accuracy on the target's test split (learning);
* ``retention``: mean test accuracy on the source tasks (forgetting);
* update sparsity and relative update rank per layer type (``sparsity.metrics``);
* trainable count, optimizer-state bytes, wall time (selection and training), peak memory.

Methods (``METHODS``):

``full``           every parameter trains.
``lora``           LoRA of rank r on every block matrix (``scaleup.lora``).
``random`` ... ``lift``  a ``sparsity.criteria`` score on the pretrained model, turned into a
                   mask at the budget: random, magnitude, gradient, fisher, snip, movement,
                   lift (LIFT principal weights, Liu et al. 2025).
``l1_discovered``  the entries an L1-to-init run moved (proximal AdamW, Liu 2026's probe):
                   ranked by how far they moved, never chosen outside that set.
``middle_blocks``  random entries of the middle blocks' matrices only (a layer-wise choice).
``2:4``            the 2:4 pattern (``sparsity.masks.n_m``) chosen by magnitude: 50% of every
                   matrix, the structure sparse tensor cores accelerate.

Budgets (trainable entries of the block matrices; embeddings and LayerNorms stay frozen
in sparse runs): ``lora_equal`` gives each matrix LoRA's ``r * (m + n)`` entries
(``masks.lora_equal``); a density ``d`` gives every matrix the same share
(``top_k(scope="per_tensor")``). Set-criteria spend the same total within their set.

Results: each finished run is appended to ``results.jsonl`` in the output folder at once,
so a killed benchmark loses no finished run and a restarted one skips them; the summary
(``summary.csv``, ``summary.json``, ``report.md``, figures) is rebuilt from that file,
also without running anything (``--report``; ``--md FILE`` writes the markdown elsewhere too,
keeping a hand-written ``## Notes`` section). The report also lists the whole seed-0 sweep
(target validation accuracy and retention per learning rate): the choice on the target
alone hides how much each learning rate forgets.

The learning rate is chosen on seed 0 and reused for the other seeds unless
``sweep_all_seeds`` (then the mean over seeds decides): the sweep costs
``len(lrs)`` runs per method instead of ``len(lrs) * seeds``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from scaleup import gpt, lora
from scaleup import pretrain as pt
from scaleup import tasks as tk
from scaleup.memory import PeakMemory
from sparsity import criteria as crit
from sparsity import masks
from sparsity.compact import CompactAdamW
from sparsity.eligibility import eligible
from sparsity.fastmode import fast_mode
from sparsity.metrics import update_rank, update_sparsity
from sparsity.optim import MaskedAdamW
from sparsity.regularize import prox_l1_to_init_, snapshot
from sparsity.validate import Mask, check_density, named_params

RANKING = ("random", "magnitude", "gradient", "fisher", "snip", "movement", "lift")
"""Criteria that score every entry (``sparsity.criteria``)."""
SETS = ("l1_discovered", "middle_blocks")
"""Criteria that name a set of entries; the budget is spent inside it."""
CRITERIA = RANKING + SETS
METHODS = ("full", "lora", "lift", "random", "magnitude", "l1_discovered", "gradient", "fisher", "snip", "movement",
           "middle_blocks", "2:4")
"""Every method, in the order a run does them (the headline comparison first, so a partial run already answers it)."""
LAYER_TYPES = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj", "embedding", "norm")
INCLUDE = "weight"
"""Sparse budgets are spent on the block matrices (``parameter_kinds`` "weight")."""
RESULTS = "results.jsonl"


@dataclass(frozen=True)
class BenchConfig:
    """Everything a benchmark run depends on. A results folder belongs to one config."""

    preset: str = "tiny"
    target: str = "add2"
    steps: int = 300
    batch_size: int = 32
    warmup: int = 30
    seeds: int = 3
    densities: tuple[float, ...] = (0.01, 0.05)
    lora_equal: bool = True
    lora_rank: int = 4
    lora_alpha: float = 8.0
    lift_rank: int = 4
    score_batches: int = 4
    l1_lam: float = 2e-3
    l1_lr: float = 1e-3
    tol: float = 1e-5
    lrs_full: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    lrs_sparse: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    lrs_lora: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    lr_tie: float = 0.01
    """Validation accuracies within this of the best count as tied; the smallest tied lr is chosen."""
    sweep_all_seeds: bool = False
    pretrain_steps: int = 2000
    world: tk.WorldConfig = field(default_factory=tk.WorldConfig)

    def __post_init__(self) -> None:
        gpt.config(self.preset)
        if self.target not in tk.TARGET_TASKS:
            raise ValueError(f"target must be one of {tuple(tk.TARGET_TASKS)}, got {self.target!r}")
        for name in ("steps", "batch_size", "seeds", "lora_rank", "lift_rank", "score_batches", "pretrain_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BenchConfig.{name} must be a positive int, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or not 0 <= self.warmup < self.steps:
            raise ValueError(f"BenchConfig.warmup must be an int in [0, steps), got {self.warmup!r}")
        for d in self.densities:
            check_density(d, "density")
        for name in ("lrs_full", "lrs_sparse", "lrs_lora"):
            lrs = getattr(self, name)
            if not lrs or not all(isinstance(x, (int, float)) and x > 0 for x in lrs):
                raise ValueError(f"BenchConfig.{name} must be a non-empty tuple of positive learning rates, got {lrs!r}")
        if not 0 <= self.lr_tie < 1:
            raise ValueError(f"BenchConfig.lr_tie must be in [0, 1), got {self.lr_tie!r}")
        if not self.l1_lam > 0 or not self.l1_lr > 0:
            raise ValueError("l1_lam and l1_lr must be > 0")

    @property
    def pretrain(self) -> pt.PretrainConfig:
        return pt.default_config(self.preset, world=self.world, steps=self.pretrain_steps)

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
        if method == "2:4":
            return ["2:4"]
        return (["lora_equal"] if self.lora_equal else []) + [f"d{d:g}" for d in self.densities]


def default_config(preset: str = "tiny", **overrides: Any) -> BenchConfig:
    """The benchmark's defaults; fast mode (``LAB_FAST=1``) runs 30 steps, one seed, one lr per method."""
    if fast_mode():
        base: dict[str, Any] = dict(steps=30, warmup=3, seeds=1, pretrain_steps=300, l1_lam=1e-4, lrs_full=(1e-3,),
                                    lrs_sparse=(1e-2,), lrs_lora=(1e-2,))
    else:
        base = {}
    base.update(overrides)
    return BenchConfig(preset=preset, **base)


MICRO_WORLD = tk.WorldConfig(n_symbols=5, length=3, n_facts=6, n_eval=64)
"""A small task world the micro preset learns in 200 pretraining steps (retention ~0.5) and whose
add2 it learns in 40 fine-tuning steps: the CI-sized setting of the demo and the tests."""

DEMO_METHODS = ("full", "lora", "lift", "magnitude", "random")
"""What ``make demo`` compares: the CLI example's methods at the LoRA-equal budget."""


def demo_config() -> BenchConfig:
    """The ``make demo`` comparison: one seed, one learning rate per method (the committed tiny
    sweep's choices), 150 steps on the tiny preset; fast mode the micro preset for 30 steps."""
    if fast_mode():
        return BenchConfig(preset="micro", world=MICRO_WORLD, steps=40, warmup=4, seeds=1, densities=(),
                           pretrain_steps=200, lrs_full=(3e-3,), lrs_sparse=(3e-2,), lrs_lora=(3e-2,))
    return BenchConfig(preset="tiny", steps=150, warmup=15, seeds=1, densities=(), lrs_full=(3e-4,),
                       lrs_sparse=(1e-2,), lrs_lora=(3e-3,))


# --------------------------------------------------------------------------------------
# Setting shared by every run
# --------------------------------------------------------------------------------------


@dataclass
class Setup:
    """The pretrained model, its snapshot, the task world and a cache of criterion scores."""

    cfg: BenchConfig
    world: tk.World
    pretrained: gpt.GPT
    reference: dict[str, torch.Tensor]
    device: str
    before: dict[str, float]
    cache: dict[tuple[str, int], tuple[crit.Scores, Mask | None, float]] = field(default_factory=dict)

    @property
    def n_weights(self) -> int:
        params = named_params(self.pretrained)
        return sum(params[n].numel() for n in eligible(self.pretrained, INCLUDE))


def prepare(cfg: BenchConfig, *, cache_dir: str | Path | None = None, device: str = "cpu",
            progress: bool = True) -> Setup:
    """Load (or pretrain and cache) the model, and measure it before any fine-tuning."""
    if not isinstance(cfg, BenchConfig):
        raise TypeError(f"cfg must be a BenchConfig, got {type(cfg).__name__}")
    world = tk.World(cfg.world)
    model = pt.pretrained(cfg.pretrain, cache_dir=cache_dir, device=device, progress=progress)
    before = {"target_val": tk.accuracy(model, world, cfg.target, "val"),
              "target_test": tk.accuracy(model, world, cfg.target, "test"),
              "retention": tk.retention(model, world)}
    return Setup(cfg, world, model, snapshot(model), device, before)


def middle_blocks(n_layer: int) -> list[int]:
    """Indices of the middle half of the blocks, [n/4, 3n/4): 1, 2 of 4; 2, 3, 4 of 6; 1 of 2."""
    return [i for i in range(n_layer) if n_layer / 4 <= i < 3 * n_layer / 4]


def layer_type(name: str) -> str:
    """The layer type of a GPT parameter: "attn.qkv", "attn.proj", "mlp.fc", "mlp.proj", "embedding" or "norm"."""
    if name.endswith("_emb.weight"):
        return "embedding"
    parts = name.split(".")
    if name.startswith("blocks.") and parts[2] in ("attn", "mlp"):
        return f"{parts[2]}.{parts[3]}"
    if parts[0] == "ln_f" or (name.startswith("blocks.") and parts[2].startswith("ln")):
        return "norm"
    raise ValueError(f"'{name}' is not a parameter name of scaleup.gpt.GPT")


def _score_batches(setup: Setup, seed: int) -> list[tk.Batch]:
    gen = torch.Generator().manual_seed(5000 + seed)
    n, size = setup.cfg.score_batches, setup.cfg.batch_size
    return [setup.world.batch(setup.cfg.target, "train", size, gen).to(setup.device) for _ in range(n)]


def train_step(setup: Setup, model: nn.Module, opt: torch.optim.Optimizer, step: int, peak_lr: float,
               seed: int) -> float:
    """One fine-tuning step on the target: the schedule's lr, batch ``step`` of ``seed``, AdamW. Returns the loss."""
    cfg = setup.cfg
    for group in opt.param_groups:
        group["lr"] = pt.lr_at(step, cfg.steps, peak_lr, cfg.warmup)
    batch = setup.world.train_batch(cfg.target, step, cfg.batch_size, seed).to(setup.device)
    with gpt.autocast(setup.device):
        loss = tk.loss(model, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _l1_discovery(setup: Setup, seed: int) -> crit.Scores:
    """Fine-tune the block matrices with an L1 pull to the start (AdamW + proximal step, ProxGen):
    entries the task does not push hard enough end exactly at their start. Returns abs(delta)."""
    cfg, model = setup.cfg, copy.deepcopy(setup.pretrained).train()
    names = set(eligible(model, INCLUDE))
    mask = {n: torch.full_like(p, n in names, dtype=torch.bool) for n, p in model.named_parameters()}
    opt = MaskedAdamW(model.named_parameters(), mask=mask, lr=cfg.l1_lr, weight_decay=0.0)
    ref = {n: setup.reference[n] for n in names}
    for step in range(cfg.steps):
        train_step(setup, model, opt, step, cfg.l1_lr, seed)
        thresholds = {n: cfg.l1_lam * a for n, a in opt.adaptive_lr().items() if n in names}
        prox_l1_to_init_(model, ref, thresholds)
    return crit.update(model, ref, include=INCLUDE)


def scores(setup: Setup, criterion: str, seed: int) -> tuple[crit.Scores, Mask | None, float]:
    """A criterion's scores on the pretrained model, its set (None for rankings), and the seconds it took.

    Cached per (criterion, seed): the learning-rate sweep reuses them.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    key = (criterion, seed)
    if key in setup.cache:
        return setup.cache[key]
    model, cfg = setup.pretrained, setup.cfg
    start = time.perf_counter()
    support = None
    if criterion == "random":
        s = crit.random(model, seed, INCLUDE)
    elif criterion == "magnitude":
        s = crit.magnitude(model, INCLUDE)
    elif criterion == "lift":
        s = crit.lift(model, cfg.lift_rank, INCLUDE)
    elif criterion in ("gradient", "fisher", "snip", "movement"):
        s = getattr(crit, criterion)(model, tk.loss, _score_batches(setup, seed), INCLUDE)
    elif criterion == "l1_discovered":
        s = _l1_discovery(setup, seed)
        support = {n: v > 0 for n, v in s.items()}
    else:  # middle_blocks: random order inside the middle blocks' matrices
        s = crit.random(model, seed, INCLUDE)
        middle = {f"blocks.{i}" for i in middle_blocks(model.config.n_layer)}
        support = {n: torch.full_like(v, ".".join(n.split(".")[:2]) in middle, dtype=torch.bool) for n, v in s.items()}
    setup.cache[key] = (s, support, time.perf_counter() - start)
    return setup.cache[key]


def budget_count(setup: Setup, budget: str) -> int:
    """Trainable entries a budget allows in the block matrices."""
    params = named_params(setup.pretrained)
    names = eligible(setup.pretrained, INCLUDE)
    if budget == "lora_equal":
        r = setup.cfg.lora_rank
        return sum(min(r * sum(params[n].shape), params[n].numel()) for n in names)
    if budget.startswith("d"):
        return sum(max(1, round(float(budget[1:]) * params[n].numel())) for n in names)
    raise ValueError(f"budget must be 'lora_equal' or 'd<density>', got {budget!r}")


def select(setup: Setup, method: str, budget: str, seed: int) -> tuple[Mask | None, float]:
    """The mask a sparse method trains (None for full and LoRA) and the seconds selection took."""
    if method in ("full", "lora"):
        return None, 0.0
    model = setup.pretrained
    if method == "2:4":
        start = time.perf_counter()
        return masks.n_m(model, crit.magnitude(model, INCLUDE), 2, 4), time.perf_counter() - start
    s, support, seconds = scores(setup, method, seed)
    start = time.perf_counter()
    if support is not None:
        mask = masks.top_k_within(model, s, support, budget_count(setup, budget) / setup.n_weights, "global")
    elif budget == "lora_equal":
        mask = masks.lora_equal(model, s, setup.cfg.lora_rank)
    else:
        mask = masks.top_k(model, s, float(budget[1:]), "per_tensor")
    if not any(m.any() for m in mask.values()):
        raise ValueError(f"{method} selected no entry to train (for l1_discovered: the L1 run moved nothing; "
                         "lower l1_lam)")
    return mask, seconds + time.perf_counter() - start


# --------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------


def _optimizer(model: nn.Module, method: str, mask: Mask | None, lr: float) -> CompactAdamW:
    """AdamW (no decay) on what the method trains; frozen tensors get no gradient at all."""
    if method == "lora":
        return CompactAdamW([(n, p) for n, p in model.named_parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    if mask is not None:
        for n, p in model.named_parameters():
            p.requires_grad_(bool(mask[n].any()))
    return CompactAdamW(model.named_parameters(), mask=mask, lr=lr, weight_decay=0.0)


def finetune(setup: Setup, method: str, budget: str, lr: float, seed: int,
             progress: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune a copy of the pretrained model with one method; return it (LoRA merged) and its costs."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if budget not in setup.cfg.budgets(method):
        raise ValueError(f"method {method!r} runs at budgets {setup.cfg.budgets(method)}, got {budget!r}")
    cfg = setup.cfg
    mask, select_s = select(setup, method, budget, seed)
    model = copy.deepcopy(setup.pretrained).train()
    if method == "lora":
        lora.add_lora(model, lora.LoraConfig(r=cfg.lora_rank, alpha=cfg.lora_alpha), seed=seed)
    opt = _optimizer(model, method, mask, lr)
    trainable = (lora.trainable_count(model) if method == "lora" else
                 sum(p.numel() for p in model.parameters()) if mask is None else
                 sum(int(m.sum()) for m in mask.values()))
    losses = []
    with PeakMemory(setup.device) as peak:
        start = time.perf_counter()
        for step in tqdm(range(cfg.steps), desc=f"{method} {budget} lr={lr:g} seed={seed}", leave=False,
                         disable=not progress):
            losses.append(train_step(setup, model, opt, step, lr, seed))
        train_s = time.perf_counter() - start
    if method == "lora":
        lora.merge_lora(model)
    for p in model.parameters():
        p.requires_grad_(True)
    costs = dict(trainable=trainable, select_s=select_s, train_s=train_s, peak_mb=peak.mb,
                 optimizer_state_bytes=opt.state_bytes(), final_train_loss=sum(losses[-10:]) / len(losses[-10:]))
    return model.eval(), costs


def update_profile(model: nn.Module, reference: dict[str, torch.Tensor], tol: float) -> dict[str, dict[str, float]]:
    """Per layer type: update sparsity (share of entries with abs(delta) <= tol) and the mean relative
    rank of the block matrices' updates (numerical rank / min(m, n))."""
    sparsity_per = update_sparsity(model, reference, tol).per_tensor
    params = named_params(model)
    unchanged: dict[str, list[float]] = {t: [0.0, 0.0] for t in LAYER_TYPES}
    ranks: dict[str, list[float]] = {t: [] for t in LAYER_TYPES}
    for name, share in sparsity_per.items():
        t, n = layer_type(name), params[name].numel()
        unchanged[t][0] += share * n
        unchanged[t][1] += n
        if name.startswith("blocks.") and params[name].ndim == 2:
            delta = (params[name] - reference[name]).detach().float()
            ranks[t].append(update_rank(delta) / min(delta.shape))
    return {
        "update_sparsity": {t: u / n for t, (u, n) in unchanged.items() if n},
        "update_rank": {t: sum(r) / len(r) for t, r in ranks.items() if r},
    }


def run_cell(setup: Setup, method: str, budget: str, lr: float, seed: int, progress: bool = False) -> dict[str, Any]:
    """One fine-tuning run, measured: a row of ``results.jsonl``."""
    model, costs = finetune(setup, method, budget, lr, seed, progress)
    world, target = setup.world, setup.cfg.target
    with torch.no_grad():
        val_loss = tk.loss(model, world.eval_set(target, "val").to(setup.device)).item()
    row: dict[str, Any] = dict(
        method=method, budget=budget, lr=lr, seed=seed,
        target_val=tk.accuracy(model, world, target, "val"),
        target_val_loss=val_loss,
        target_test=tk.accuracy(model, world, target, "test"),
        retention=tk.retention(model, world),
        source={t: tk.accuracy(model, world, t, "test") for t in tk.SOURCE_TASKS},
        **costs,
    )
    row.update(update_profile(model, setup.reference, setup.cfg.tol))
    return row


# --------------------------------------------------------------------------------------
# The benchmark: plan, resumable results, summary
# --------------------------------------------------------------------------------------


def cell_key(method: str, budget: str, lr: float, seed: int) -> str:
    return f"{method}|{budget}|{lr:g}|{seed}"


def load_results(out: str | Path) -> dict[str, dict[str, Any]]:
    """Finished runs by cell key. A last line cut off by a kill is ignored (that run is redone)."""
    path = Path(out) / RESULTS
    rows: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return rows
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise ValueError(f"{path} line {i + 1} is not JSON (only the last line may be cut off by a kill)")
        rows[cell_key(row["method"], row["budget"], row["lr"], row["seed"])] = row
    return rows


def _append(out: Path, row: dict[str, Any]) -> None:
    path = out / RESULTS
    text = path.read_text() if path.exists() else ""
    if text and not text.endswith("\n"):  # a line cut off by a kill: drop it (its run was redone)
        path.write_text(text[: text.rfind("\n") + 1])
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _config_json(cfg: BenchConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg)))


def _check_out(out: Path, cfg: BenchConfig) -> None:
    """A results folder belongs to one config: refuse to mix runs of different configs."""
    path = out / "config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        want = _config_json(cfg)
        diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
        if diff:
            raise ValueError(f"{out} holds results of another config (differs in {diff}); use another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_config_json(cfg), indent=1))


def check_methods(methods: Iterable[str]) -> list[str]:
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty list from {METHODS}; unknown: {unknown}")
    return list(dict.fromkeys(methods))


def best_lr(cfg: BenchConfig, rows: dict[str, dict[str, Any]], method: str, budget: str) -> float | None:
    """The smallest learning rate whose target *validation* accuracy is within ``cfg.lr_tie`` of the
    grid's best, over seed 0 (or the mean over seeds with ``sweep_all_seeds``). None until the sweep is done.

    Why the smallest: once a target saturates, several rates learn it equally well and the larger
    ones only move the weights further (and forget more); a tie-break on validation loss would walk
    to the largest stable rate and make every method forget everything. Test data never enter.
    """
    seeds = range(cfg.seeds) if cfg.sweep_all_seeds else [0]
    accuracy = {}
    for lr in cfg.lrs(method):
        found = [rows.get(cell_key(method, budget, lr, s)) for s in seeds]
        if any(r is None for r in found):
            return None
        accuracy[lr] = statistics.mean(r["target_val"] for r in found)
    best = max(accuracy.values())
    return min(lr for lr, acc in accuracy.items() if acc >= best - cfg.lr_tie)


def run(cfg: BenchConfig, out: str | Path, methods: Sequence[str] = METHODS, *, cache_dir: str | Path | None = None,
        device: str = "cpu", progress: bool = True, stop_after: int | None = None) -> int:
    """Run every missing cell of the benchmark, appending each to ``out/results.jsonl``; write the summary.

    Returns the number of runs done by this call. ``stop_after`` stops after that many runs
    (a stand-in for a kill, for tests).
    """
    methods = check_methods(methods)
    sparse = [m for m in methods if m in CRITERIA]
    if sparse and not cfg.densities and not cfg.lora_equal:
        raise ValueError(f"no budget for the sparse methods {sparse}: give a density or lora_equal=True")
    out = Path(out)
    _check_out(out, cfg)
    rows = load_results(out)
    setup = prepare(cfg, cache_dir=cache_dir, device=device, progress=progress)
    (out / "before.json").write_text(json.dumps(setup.before))
    pairs = [(m, b) for m in methods for b in cfg.budgets(m)]
    sweep_seeds = range(cfg.seeds) if cfg.sweep_all_seeds else [0]
    total = sum(len(cfg.lrs(m)) * len(sweep_seeds) + (0 if cfg.sweep_all_seeds else cfg.seeds - 1) for m, _ in pairs)
    done = 0
    bar = tqdm(total=total, desc=f"benchmark {cfg.preset}/{cfg.target}", disable=not progress)

    def do(cell: tuple[str, str, float, int]) -> bool:
        nonlocal done
        key = cell_key(*cell)
        if key not in rows:
            if stop_after is not None and done >= stop_after:
                return False
            rows[key] = run_cell(setup, *cell, progress=progress)
            _append(out, rows[key])
            done += 1
        bar.update(1)
        return True

    for m, b in pairs:  # one (method, budget) completed at a time: a partial run has whole rows
        for lr in cfg.lrs(m):
            for s in sweep_seeds:
                if not do((m, b, lr, s)):
                    return done
        if not cfg.sweep_all_seeds:
            lr = best_lr(cfg, rows, m, b)
            for s in range(1, cfg.seeds):
                if not do((m, b, lr, s)):
                    return done
    bar.close()
    write_summary(out, methods)
    return done


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(out: str | Path, methods: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per (method, budget) at its chosen learning rate: mean and std over seeds."""
    out = Path(out)
    cfg_dict = json.loads((out / "config.json").read_text())
    cfg = _config_from_json(cfg_dict)
    rows = load_results(out)
    methods = METHODS if methods is None else check_methods(methods)
    table = []
    for m in methods:
        for b in cfg.budgets(m):
            lr = best_lr(cfg, rows, m, b)
            if lr is None:
                continue
            runs = [rows[k] for s in range(cfg.seeds) if (k := cell_key(m, b, lr, s)) in rows]
            entry: dict[str, Any] = dict(method=m, budget=b, lr=lr, lr_edge=cfg.lr_edge(m, lr), n_seeds=len(runs),
                                         trainable=runs[0]["trainable"])
            for metric in ("target_test", "target_val", "retention", "train_s", "select_s", "peak_mb",
                           "optimizer_state_bytes"):
                entry[metric], entry[metric + "_std"] = _mean_std([float(r[metric]) for r in runs])
            for kind in ("update_sparsity", "update_rank"):
                entry[kind] = {t: statistics.mean(r[kind][t] for r in runs) for t in runs[0][kind]}
            table.append(entry)
    return table


def _config_from_json(d: dict[str, Any]) -> BenchConfig:
    d = dict(d)
    d["world"] = tk.WorldConfig(**d["world"])
    for f in fields(BenchConfig):
        if isinstance(d.get(f.name), list):
            d[f.name] = tuple(d[f.name])
    return BenchConfig(**d)


def budget_label(budget: str, cfg: BenchConfig) -> str:
    if budget.startswith("d"):
        return f"{float(budget[1:]):.0%}"
    return {"lora_equal": f"LoRA-equal (r={cfg.lora_rank})", "all": "100%", "2:4": "2:4 (50%)"}[budget]


def verdict(table: list[dict[str, Any]]) -> str:
    """Does a sparse method match full fine-tuning on the target within one spread, and which retains most?

    "Within one spread": the intervals mean +- std over seeds of the two methods overlap.
    """
    full = next((r for r in table if r["method"] == "full"), None)
    if full is None:
        return "Full fine-tuning was not run: nothing to compare against."
    low = full["target_test"] - full["target_test_std"]
    others = [r for r in table if r["method"] != "full"]
    match = [r for r in others if r["target_test"] + r["target_test_std"] >= low]

    def names(rs: list[dict[str, Any]]) -> str:
        return ", ".join(f"{r['method']} @ {r['budget']}" for r in rs) or "none"

    sparse_match = [r for r in match if r["method"] in CRITERIA]
    lora_match = [r for r in match if r["method"] == "lora"]
    lines = [f"Full fine-tuning: target {full['target_test']:.3f} +- {full['target_test_std']:.3f}, "
             f"retention {full['retention']:.3f} +- {full['retention_std']:.3f}.",
             "Sparse criteria matching full FT on the target within one spread (mean + std reaches full FT's "
             f"mean - std): {names(sparse_match)}.",
             f"LoRA matches full FT: {'yes' if lora_match else 'no'}."]
    if others:
        best = max(table, key=lambda r: r["retention"])
        lines.append(f"Best retention overall: {best['method']} @ {best['budget']} ({best['retention']:.3f}, "
                     f"target {best['target_test']:.3f}).")
    if match:
        best = max(match, key=lambda r: r["retention"])
        lines.append(f"Best retention among the methods that match full FT: {best['method']} @ {best['budget']} "
                     f"({best['retention']:.3f} vs full FT's {full['retention']:.3f}).")
    edge = [r for r in table if r.get("lr_edge")]
    lines.append("Learning rate chosen at the edge of its grid (the best may lie outside it; widen the grid): "
                 + (", ".join(f"{r['method']} @ {r['budget']} ({r['lr']:g}, {r['lr_edge']})" for r in edge)
                    if edge else "none") + ".")
    return "\n".join(lines)


def report_markdown(out: str | Path, command: str | None = None) -> str:
    """The results table (mean +- std over seeds) and the verdict, as markdown."""
    out = Path(out)
    cfg = _config_from_json(json.loads((out / "config.json").read_text()))
    table = summarize(out)
    before = json.loads((out / "before.json").read_text()) if (out / "before.json").exists() else None
    lines = ["| method | budget | trainable | lr | target acc (test) | retention (source) | train s | select s | "
             "peak MB | upd. sparsity attn.qkv / mlp.fc | upd. rank attn.qkv / mlp.fc | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if before:
        lines.append(f"| before FT | - | 0 | - | {before['target_test']:.3f} | {before['retention']:.3f} "
                     "| - | - | - | - | - | - |")
    for r in table:
        us, ur = r["update_sparsity"], r["update_rank"]
        lines.append(
            f"| {r['method']} | {budget_label(r['budget'], cfg)} | {r['trainable']:,} | {r['lr']:g}"
            f"{' (' + r['lr_edge'] + ')' if r.get('lr_edge') else ''} "
            f"| {r['target_test']:.3f} ± {r['target_test_std']:.3f} | {r['retention']:.3f} ± {r['retention_std']:.3f} "
            f"| {r['train_s']:.1f} | {r['select_s']:.1f} | {r['peak_mb']:.0f} "
            f"| {us.get('attn.qkv', float('nan')):.2f} / {us.get('mlp.fc', float('nan')):.2f} "
            f"| {ur.get('attn.qkv', float('nan')):.2f} / {ur.get('mlp.fc', float('nan')):.2f} | {r['n_seeds']} |")
    rows = load_results(out)
    n_done = len(rows)
    parts = [f"Preset `{cfg.preset}`, target `{cfg.target}` ({tk.TARGET_TASKS[cfg.target]}), {cfg.steps} steps of "
             f"batch {cfg.batch_size}, {cfg.seeds} seed(s); learning rate: the smallest of the grid within "
             f"{cfg.lr_tie:g} of the best target validation accuracy "
             f"({'mean over seeds' if cfg.sweep_all_seeds else 'seed 0, reused for the other seeds'}); "
             f"{n_done} runs finished.", "", "\n".join(lines), "", verdict(table), "", sweep_table(cfg, rows)]
    if (out / "machine.json").exists():
        m = json.loads((out / "machine.json").read_text())
        parts[:0] = [f"Machine: {m['cpus']} CPUs, {m['torch_threads']} torch thread(s), torch {m['torch']}, "
                     f"{m['device']}{' (' + m['gpu'] + ')' if 'gpu' in m else ''}; {m['platform']}.", ""]
    if command is None and (out / "command.txt").exists():
        command = (out / "command.txt").read_text().strip()
    if command:
        parts[:0] = [f"Command: `{command}`", ""]
    return "\n".join(parts) + "\n"


def sweep_table(cfg: BenchConfig, rows: dict[str, dict[str, Any]]) -> str:
    """The learning-rate sweep of seed 0 as markdown: target validation accuracy / source retention per lr.

    Shows what the choice on the target alone hides: how much each learning rate forgets.
    """
    lrs = sorted({lr for m in METHODS for lr in cfg.lrs(m)})
    lines = ["Learning-rate sweep, seed 0: target validation accuracy / source retention (test).", "",
             "| method | budget | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
             "|---|---|" + "---|" * len(lrs)]
    for m in METHODS:
        for b in cfg.budgets(m):
            cells = [rows.get(cell_key(m, b, lr, 0)) for lr in lrs]
            if not any(cells):
                continue
            text = [f"{r['target_val']:.2f} / {r['retention']:.3f}" if r else "" for r in cells]
            lines.append(f"| {m} | {budget_label(b, cfg)} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def plot_summary(table: list[dict[str, Any]], cfg: BenchConfig, fig: Any = None,
                 rows: dict[str, dict[str, Any]] | None = None) -> Any:
    """Two panels: target accuracy vs source retention (mean +- std at the chosen lr; with ``rows``,
    the seed-0 sweep as faint points joined by a line), and per-method bars."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if fig is None:
        fig = plt.figure(figsize=(16, 5.5))
    fig.clear()
    ax_scatter, ax_bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": (1, 1.3)})
    colors = {m: plt.get_cmap("tab20")(i) for i, m in enumerate(METHODS)}  # colour: method; marker: budget
    markers = {"all": "*", "lora_equal": "s", "2:4": "D", "d0.01": "v"}
    for r in table:
        marker, color = markers.get(r["budget"], "o"), colors[r["method"]]
        ax_scatter.errorbar(r["retention"], r["target_test"], xerr=r["retention_std"], yerr=r["target_test_std"],
                            marker=marker, color=color, linestyle="none", capsize=2, markersize=7)
        sweep = [rows.get(cell_key(r["method"], r["budget"], lr, 0)) for lr in cfg.lrs(r["method"])] if rows else []
        sweep = [s for s in sweep if s]
        if len(sweep) > 1:
            ax_scatter.plot([s["retention"] for s in sweep], [s["target_val"] for s in sweep], marker=marker,
                            markersize=3, alpha=0.3, linewidth=0.7, color=color)
    ax_scatter.set(xlabel="source retention (mean test accuracy)", ylabel=f"target test accuracy ({cfg.target})",
                   xlim=(-0.05, 1.05), ylim=(-0.05, 1.05),
                   title="Learning vs forgetting (upper right is best)\nfaint: the lr sweep (seed 0, target on val)")
    shown = list(dict.fromkeys(r["method"] for r in table))
    budgets = list(dict.fromkeys(r["budget"] for r in table))
    handles = ([Line2D([], [], color=colors[m], marker="o", linestyle="none", label=m) for m in shown] +
               [Line2D([], [], color="gray", marker=markers.get(b, "o"), linestyle="none",
                       label=budget_label(b, cfg)) for b in budgets])
    ax_scatter.legend(handles=handles, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    names = [f"{r['method']}\n{budget_label(r['budget'], cfg)}" for r in table]
    xs = range(len(table))
    ax_bars.bar([x - 0.2 for x in xs], [r["target_test"] for r in table], 0.4,
                yerr=[r["target_test_std"] for r in table], label="target")
    ax_bars.bar([x + 0.2 for x in xs], [r["retention"] for r in table], 0.4,
                yerr=[r["retention_std"] for r in table], label="retention")
    ax_bars.set(xticks=list(xs), ylim=(0, 1.05), ylabel="accuracy", title="Per method and budget")
    ax_bars.set_xticklabels(names, rotation=90, fontsize="x-small")
    ax_bars.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"GPT {cfg.preset}: fine-tuning on {cfg.target}, {cfg.steps} steps, {cfg.seeds} seed(s)")
    fig.tight_layout()
    return fig


def write_summary(out: str | Path, methods: Sequence[str] | None = None, command: str | None = None) -> list[dict]:
    """Write summary.csv, summary.json, report.md and summary.png from the results file."""
    import matplotlib.pyplot as plt

    out = Path(out)
    cfg = _config_from_json(json.loads((out / "config.json").read_text()))
    table = summarize(out, methods)
    (out / "summary.json").write_text(json.dumps(table, indent=1))
    flat = [{k: v for k, v in r.items() if not isinstance(v, dict)} |
            {f"{kind}.{t}": v for kind in ("update_sparsity", "update_rank") for t, v in r[kind].items()}
            for r in table]
    if flat:
        keys = list(dict.fromkeys(k for r in flat for k in r))
        with (out / "summary.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, keys)
            writer.writeheader()
            writer.writerows(flat)
        fig = plot_summary(table, cfg, rows=load_results(out))
        fig.savefig(out / "summary.png", dpi=110)
        plt.close(fig)
    (out / "report.md").write_text(report_markdown(out, command))
    return table


def machine(device: str) -> dict[str, Any]:
    """Where a benchmark ran: CPU count, torch threads, torch version, device name."""
    import platform

    info = dict(cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                platform=platform.platform(), device=device)
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Full vs sparse (every criterion) vs LoRA fine-tuning of a small GPT.")
    p.add_argument("--preset", default="tiny", choices=tuple(gpt.PRESETS))
    p.add_argument("--target", default="add2", choices=tuple(tk.TARGET_TASKS))
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {','.join(METHODS)}")
    p.add_argument("--density", default=None, help="comma-separated densities, e.g. 0.01,0.05 (default 0.01,0.05)")
    p.add_argument("--no-lora-equal", action="store_true", help="skip the LoRA-equal budget")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    for kind in ("full", "sparse", "lora"):
        p.add_argument(f"--lrs-{kind}", default=None, metavar="LRS",
                       help=f"comma-separated learning-rate grid of {kind} fine-tuning "
                            f"(default: BenchConfig.lrs_{kind})")
    p.add_argument("--sweep-all-seeds", action="store_true", help="choose the lr on the mean over all seeds")
    p.add_argument("--report", action="store_true", help="only rebuild the summary from the results file")
    p.add_argument("--md", type=Path, default=None, help="also write the report's markdown to this file")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _numbers(text: str, flag: str) -> tuple[float, ...]:
    """A comma-separated list of numbers from the command line, or a clear exit naming the flag."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"{flag} must be comma-separated numbers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods = check_methods(m.strip() for m in args.methods.split(",") if m.strip())
    if args.report:
        if not (args.out / "config.json").exists():
            raise SystemExit(f"--report: {args.out} holds no benchmark (no config.json)")
        write_summary(args.out, methods)
        _print_report(args.out, args.md)
        return 0
    overrides: dict[str, Any] = {}
    if args.density is not None:
        overrides["densities"] = _numbers(args.density, "--density")
    for kind in ("full", "sparse", "lora"):
        if (text := getattr(args, f"lrs_{kind}")) is not None:
            overrides[f"lrs_{kind}"] = _numbers(text, f"--lrs-{kind}")
    if args.no_lora_equal:
        overrides["lora_equal"] = False
    for name in ("seeds", "steps"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.sweep_all_seeds:
        overrides["sweep_all_seeds"] = True
    if "steps" in overrides:
        overrides.setdefault("warmup", max(0, overrides["steps"] // 10))
    cfg = default_config(args.preset, target=args.target, **overrides)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "machine.json").write_text(json.dumps(machine(args.device)))
    if args.device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = True
    if not (args.out / "command.txt").exists():
        env = "LAB_FAST=1 " if fast_mode() else ""  # fast mode changes the defaults (one lr, ...)
        (args.out / "command.txt").write_text(f"{env}python -m scaleup.compare " + " ".join(argv if argv is not None
                                                                                            else sys.argv[1:]))
    run(cfg, args.out, methods, device=args.device, progress=not args.no_progress)
    _print_report(args.out, args.md)
    return 0


NOTES = "## Notes"
"""A section of the ``--md`` file written by hand: kept when the file is regenerated."""


def _print_report(out: Path, md: Path | None) -> None:
    text = report_markdown(out)
    print(text)
    if md is not None:
        old = md.read_text() if md.exists() else ""
        notes = old[old.index(NOTES):] if NOTES in old else ""
        md.write_text(f"# Scale-up benchmark: full vs sparse vs LoRA fine-tuning ({out.name})\n\n{text}\n"
                      f"![summary]({os.path.relpath(out / 'summary.png', md.parent)})\n\n{notes}")


if __name__ == "__main__":
    raise SystemExit(main())
