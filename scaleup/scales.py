"""A benchmark folder as one scale of the lab's answer: its frontier numbers, its model size, how finished it is.

Each results folder of the controlled benchmark (``scaleup.compare --sweep-all-seeds --eval-every N``)
answers the lab's question at one scale: a toy MLP, the tiny or small GPT, a Hugging Face GPT-2 at the
tiny shape. Whether an answer holds as the model grows is a *trend* across folders. :func:`load_scale`
reads one folder (``scaleup.results``) and computes its numbers with ``scaleup.frontier`` (area under
the learning-forgetting frontier, retention at a matched target; Biderman et al. 2024); it trains nothing.

A folder still being filled is read as it stands, never as if complete: a seed counts toward a method's
numbers only when the method's whole learning-rate grid is stored for it (a frontier over part of the
grid is a different frontier), and a :class:`Scale` keeps how many seeds each method has of the planned
ones, the seeds with part of the grid, and the methods the folder's command names with no run yet.
"""

from __future__ import annotations

import math
import shlex
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaleup import frontier as fr
from scaleup.bench_config import BenchConfig
from scaleup.grid import total_runs
from scaleup.method_base import LORA_EQUAL
from scaleup.methods import get_method, known_methods
from scaleup.results import best_lr, checkpoints, load_config, load_results
from sparsity.sweep import CONFIG


@dataclass(frozen=True)
class Scale:
    """One folder as a column of the cross-scale tables.

    ``model``: the model in words (``BenchConfig.model_name``); ``kind``: the model family a figure joins
    across sizes by one line (the world, and for the GPT world the model: the lab's GPT or ``hf-gpt2``);
    ``parameters``: full fine-tuning's trainable count, i.e. the model's size (None without a full FT run);
    ``seeds``: the seeds the folder plans; ``entries``: per method, ``scaleup.frontier.summary``'s entry
    at its compared budget (:func:`compared_budget`) over the seeds with the whole learning-rate grid;
    ``partial``: per method, the seeds with part of the grid stored; ``pending``: methods the folder's
    command names (``--methods``) with no run stored; ``runs`` / ``planned_runs``: stored and planned
    runs at the compared budgets; ``lr_edge``: per method with its grid stored, ``"top"`` or ``"bottom"``
    where the learning rate the benchmark chooses (``results.best_lr``) is the grid's largest or smallest
    (the method's best may lie outside the grid, so its rank may move with a wider one).
    """

    folder: Path
    model: str
    kind: str
    target: str
    parameters: int | None
    seeds: int
    entries: Mapping[str, Mapping[str, Any]]
    partial: Mapping[str, int]
    pending: tuple[str, ...]
    runs: int
    planned_runs: int
    lr_edge: Mapping[str, str] = field(default_factory=dict)
    checkpoints: Mapping[str, list[str]] = field(default_factory=dict)
    """Pretrained-model fingerprint -> methods with rows from it (``scaleup.results.checkpoints``)."""

    @property
    def label(self) -> str:
        """The model and the target: "GPT tiny, add2"."""
        return f"{self.model}, {self.target}"

    def seeds_of(self, method: str) -> int:
        """Seeds of ``method`` with the whole learning-rate grid stored (0 where none is)."""
        entry = self.entries.get(method)
        return entry["seeds"] if entry else 0

    def finished(self, method: str) -> bool:
        """Whether ``method`` has every planned seed with its whole grid."""
        return self.seeds_of(method) == self.seeds and not self.partial.get(method)

    @property
    def complete(self) -> bool:
        """Whether every method of the folder has every planned seed and no named method is pending."""
        return not self.pending and all(self.finished(m) for m in {*self.entries, *self.partial})

    @property
    def has_reference(self) -> bool:
        """Whether full fine-tuning (the matched targets' reference) has a finished seed here."""
        return any(get_method(m).reference for m in self.entries)


def compared_budget(cfg: BenchConfig, method: str) -> str:
    """The budget a method is compared at across scales: the LoRA-equal one where it runs at it (the
    matched trainable count of the frontier benchmarks), else its first (full FT: every entry; 2:4: its
    pattern). A toy folder's density rows stay in that folder's own report."""
    budgets = cfg.budgets(method)
    return LORA_EQUAL if LORA_EQUAL in budgets else budgets[0]


def named_methods(folder: Path) -> list[str]:
    """The methods the folder's ``command.txt`` names with ``--methods`` (known ones); [] without one."""
    path = folder / "command.txt"
    if not path.exists():
        return []
    text = path.read_text()
    try:
        words = shlex.split(text)
    except ValueError:  # prose beside the command (an apostrophe): the words as written
        words = text.split()
    value = next((w.split("=", 1)[1] for w in words if w.startswith("--methods=")), None)
    if value is None and "--methods" in words[:-1]:
        value = words[words.index("--methods") + 1]
    known = known_methods()
    return [m for m in (value or "").split(",") if m in known]


def _whole_grid_seeds(cfg: BenchConfig, rows: Mapping[str, Mapping[str, Any]]) -> tuple[set, Counter]:
    """The (method, seed) pairs with every learning rate of the method's grid stored, and per method the
    count of seeds with only part of it."""
    stored: dict[tuple[str, int], list[float]] = {}
    for row in rows.values():
        stored.setdefault((row["method"], row["seed"]), []).append(float(row["lr"]))
    whole = {key for key, lrs in stored.items()
             if all(any(math.isclose(lr, s) for s in lrs) for lr in cfg.lrs(key[0]))}
    return whole, Counter(m for m, s in stored if (m, s) not in whole)


def load_scale(folder: str | Path) -> Scale:
    """One benchmark folder as a :class:`Scale`; a folder without a benchmark, or with a row of an unknown
    method, is an error naming the folder."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"{folder} holds no benchmark (no {CONFIG}): give a folder that "
                                "`python -m scaleup.compare --out FOLDER` wrote")
    cfg = load_config(folder)
    try:
        rows = {k: r for k, r in load_results(folder).items() if r["budget"] == compared_budget(cfg, r["method"])}
    except ValueError as e:
        raise ValueError(f"{folder}: {e}") from None
    whole, partial = _whole_grid_seeds(cfg, rows)
    entries = {e["method"]: e for e in fr.summary({k: r for k, r in rows.items() if (r["method"], r["seed"]) in whole})}
    stored = list(dict.fromkeys(r["method"] for r in rows.values()))
    pending = tuple(m for m in named_methods(folder) if m not in stored)
    parameters = next((r["trainable"] for r in rows.values() if get_method(r["method"]).reference and "trainable" in r),
                      None)
    chosen = {m: best_lr(cfg, rows, m, compared_budget(cfg, m)) for m in entries}
    lr_edge = {m: edge for m, lr in chosen.items() if lr is not None and (edge := cfg.lr_edge(m, lr))}
    return Scale(folder=folder, model=cfg.model_name, kind=cfg.model if cfg.world_kind == "gpt" else cfg.world_kind,
                 target=cfg.target, parameters=parameters, seeds=cfg.seeds, entries=entries, partial=dict(partial),
                 pending=pending, runs=len(rows), lr_edge=lr_edge, checkpoints=checkpoints(rows),
                 planned_runs=total_runs(cfg, [(m, compared_budget(cfg, m)) for m in (*stored, *pending)]))


def by_target(scales: list[Scale]) -> dict[str, list[Scale]]:
    """The scales grouped by target (in the order the targets first appear), each group by model size
    (a scale of unknown size last)."""
    groups: dict[str, list[Scale]] = {}
    for scale in scales:
        groups.setdefault(scale.target, []).append(scale)
    return {t: sorted(g, key=lambda s: (s.parameters is None, s.parameters or 0)) for t, g in groups.items()}


def methods_of(scales: list[Scale]) -> list[str]:
    """Every method of the scales (finished seeds or not), in the registry's order."""
    present = {m for s in scales for m in (*s.entries, *s.partial)}
    return [m for m in known_methods() if m in present]
