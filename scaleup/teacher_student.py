"""Teacher-student transformers: which blocks needed fine-tuning? Lesson 1's probe, scaled up.

Lesson 1 (``toys.teacher_student``, after Liu 2026) builds a world where the answer is
known: the student MLP differs from its teacher in W2 only, so only W2 *needs* to change.
Here the same construction on a pretrained GPT (``scaleup.pretrain``):

* **teacher** = the pretrained model fine-tuned on a target task (``scaleup.tasks``) with
  only the chosen blocks trainable (a ``sparsity.masks.layers`` mask). Fine-tuning is
  restricted on purpose: a fully fine-tuned teacher differs from the pretrained model
  everywhere (Adam moves every entry), and then no block is "the one that needed it".
* **student** = the teacher outside the chosen blocks (lesson 1's student copies W1 and
  W3 from its teacher). Inside them it has the pretrained values (``student="pretrained"``,
  the default) or re-drawn ones (``student="reinit"``, lesson 1's literal recipe).
  The default is the meaningful probe for *fine-tuning*: the gap to close is a
  fine-tuning-sized change of the chosen blocks, exactly the question "which blocks does
  fine-tuning need?". With re-initialised blocks the gap is "undo a random init", far
  larger than any fine-tuning update, and the other blocks are tempted to compensate.

The student is then trained toward the teacher, by distillation on the teacher's logits
at the target's answer positions (``objective="distill"``, KL divergence) or on the
target task's labels (``objective="task"``), once with ``lam = 0`` and once with an
L1-to-init penalty, as a proximal step (``sparsity.regularize.prox_l1_to_init_`` at
Adam's per-entry step size: exact zeros where the task does not push hard enough) or as
a loss term (``l1_to_init``). The per-block and per-layer-type shares of the L1 update
(``sparsity.metrics.update_norms``) say whether the penalty finds the chosen blocks.

Whether the penalty reveals the chosen blocks is what the study measures: lesson 5 runs it
and shows the figure; the command line prints the shares.

Run ``python -m scaleup.teacher_student --help`` for the command line.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scaleup import gpt
from scaleup import pretrain as pt
from scaleup import tasks as tk
from scaleup.layers import LAYER_TYPES, layer_type
from sparsity import masks
from sparsity.cli_args import (
    finite_nonnegative, json_ready, output_file, output_folder, positive_int, random_seed,
)
from sparsity.fastmode import fast_mode
from sparsity.metrics import update_norms, update_sparsity
from sparsity.optim import MaskedAdamW
from sparsity.regularize import l1_to_init, snapshot
from sparsity.threads import use_threads
from sparsity.train import EachStep, FitState, ProximalL1, cosine, fit
from sparsity.validate import check_finite_nonnegative, check_nonnegative_int, check_positive_int

STUDENTS = ("pretrained", "reinit")
OBJECTIVES = ("distill", "task")
PENALTIES = ("prox", "loss")


@dataclass(frozen=True)
class Config:
    """One teacher-student transformer experiment (defaults: the tiny preset, block 2 of 4, add2)."""

    preset: str = "tiny"
    target: str = "add2"
    blocks: tuple[int, ...] = (2,)
    """The blocks the teacher changes (and the student must find)."""
    student: str = "pretrained"
    objective: str = "distill"
    penalty: str = "prox"
    lam: float = 0.005
    """L1 strength of the second student. With the proximal step an entry leaves its start only
    where Adam's running gradient mean exceeds about ``lam`` (the threshold is ``lam`` times Adam's step)."""
    teacher_steps: int = 300
    teacher_lr: float = 3e-3
    steps: int = 300
    lr: float = 1e-3
    warmup: int = 30
    batch_size: int = 32
    seed: int = 0
    log_every: int = 10
    pretrain_steps: int = 2000
    world: tk.WorldConfig = field(default_factory=tk.WorldConfig)

    def __post_init__(self) -> None:
        n_layer = gpt.config(self.preset).n_layer  # validates the preset name too
        blocks = self.blocks
        if (not isinstance(blocks, tuple) or not blocks or len(set(blocks)) != len(blocks)
                or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < n_layer for b in blocks)):
            raise ValueError(f"blocks must be a non-empty tuple of distinct block indices in 0..{n_layer - 1} "
                             f"(preset {self.preset!r} has {n_layer} blocks), got {blocks!r}")
        if len(blocks) == n_layer:
            raise ValueError(f"blocks names every block of the model ({blocks}): nothing would be left to tell apart")
        if self.target not in tk.TARGET_TASKS:
            raise ValueError(f"target must be one of {tuple(tk.TARGET_TASKS)}, got {self.target!r}")
        for name, value, allowed in (("student", self.student, STUDENTS), ("objective", self.objective, OBJECTIVES),
                                     ("penalty", self.penalty, PENALTIES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name in ("teacher_steps", "steps", "batch_size", "log_every", "pretrain_steps"):
            check_positive_int(getattr(self, name), f"Config.{name}")
        if check_nonnegative_int(self.warmup, "Config.warmup") >= self.steps:
            raise ValueError(f"Config.warmup must be an int in [0, steps), got {self.warmup!r}")
        for name in ("lam", "teacher_lr", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"Config.{name} must be a number >= 0, got {value!r}")
        if not (self.lr > 0 and self.teacher_lr > 0):
            raise ValueError("Config.lr and Config.teacher_lr must be > 0")

    @property
    def pretrain(self) -> pt.PretrainConfig:
        return pt.default_config(self.preset, world=self.world, steps=self.pretrain_steps)


def default_config(preset: str = "tiny", *, fast: bool = False, **overrides: Any) -> Config:
    """The default experiment: the teacher changes the middle block (block ``n_layer // 2``).

    ``fast`` (the lab's fast mode, passed down by an entry point) uses 300 pretraining steps and 60-step runs.
    """
    base: dict[str, Any] = {"preset": preset, "blocks": (gpt.config(preset).n_layer // 2,)}
    if fast:
        base.update(pretrain_steps=300, teacher_steps=60, steps=60, warmup=6, log_every=5)
    base.update(overrides)
    return Config(**base)


# --------------------------------------------------------------------------------------
# Where a parameter lives
# --------------------------------------------------------------------------------------


def block_of(name: str) -> str:
    """The part of the GPT a parameter belongs to: "embeddings", "block i" or "final norm"."""
    if name.endswith("_emb.weight"):
        return "embeddings"
    if name.startswith("blocks."):
        return f"block {name.split('.')[1]}"
    if name.startswith("ln_f."):
        return "final norm"
    raise ValueError(f"'{name}' is not a parameter name of scaleup.gpt.GPT")


def group_sum(values: dict[str, float], key: Callable[[str], str]) -> dict[str, float]:
    """Sum per-tensor values (shares, norms, counts) into groups named by ``key(name)``, in model order."""
    out: dict[str, float] = {}
    for name, value in values.items():
        out[key(name)] = out.get(key(name), 0.0) + value
    return out


# --------------------------------------------------------------------------------------
# Teacher and student
# --------------------------------------------------------------------------------------


@dataclass
class Teacher:
    """The pretrained model, the teacher made from it, and what the teacher learnt."""

    config: Config
    world: tk.World
    pretrained: gpt.GPT
    model: gpt.GPT
    accuracy_before: float
    accuracy: float
    retention: float


def _block_patterns(blocks: tuple[int, ...]) -> list[str]:
    return [f"blocks.{b}" for b in blocks]


def teacher_mask(cfg: Config, model: gpt.GPT, world: tk.World) -> dict[str, torch.Tensor]:
    """What the teacher may change: the chosen blocks, and the embedding row of the target's task token.

    The target's task token never occurs in pretraining, so its embedding is still the
    random init; without that row, block-only fine-tuning barely learns the target.
    """
    mask = masks.layers(model, _block_patterns(cfg.blocks))
    mask["tok_emb.weight"][world.task_token(cfg.target)] = True
    return mask


def make_teacher(cfg: Config, *, cache_dir: str | Path | None = None, progress: bool = True) -> Teacher:
    """Load (or pretrain) the model and fine-tune a copy of it on the target, chosen blocks only."""
    world = tk.World(cfg.world)
    pretrained = pt.pretrained(cfg.pretrain, cache_dir=cache_dir, progress=progress)
    model = copy.deepcopy(pretrained).train()
    opt = MaskedAdamW(model.named_parameters(), mask=teacher_mask(cfg, model, world), lr=cfg.teacher_lr,
                      weight_decay=0.0)
    schedule = cosine(cfg.teacher_lr, cfg.teacher_steps, warmup=min(cfg.warmup, cfg.teacher_steps - 1), floor=0.1)
    fit(model, opt, tk.loss, cfg.teacher_steps, schedule=schedule, progress=progress,
        batches=lambda step: world.train_batch(cfg.target, step, cfg.batch_size, cfg.seed),
        desc=f"teacher: blocks {cfg.blocks} on {cfg.target}")
    model.eval()
    return Teacher(cfg, world, pretrained, model, tk.accuracy(pretrained, world, cfg.target),
                   tk.accuracy(model, world, cfg.target), tk.retention(model, world))


def make_student(teacher: Teacher) -> gpt.GPT:
    """The teacher with its chosen blocks put back to the pretrained values (or re-drawn, ``student="reinit"``).

    Everything outside the chosen blocks, the task token's embedding row included, is the
    teacher's: the student differs from the teacher in the chosen blocks only.
    """
    cfg, student = teacher.config, copy.deepcopy(teacher.model)
    source = teacher.pretrained
    if cfg.student == "reinit":
        source = gpt.build(cfg.preset, source.config.vocab_size, source.config.block_size, seed=cfg.seed + 10_000)
    with torch.no_grad():
        for b in cfg.blocks:
            student.blocks[b].load_state_dict(source.blocks[b].state_dict())
    return student


def distill_loss(student: nn.Module, teacher: nn.Module, batch: tk.Batch) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions at the answer positions (Hinton et al. 2015)."""
    answer = batch.targets != tk.IGNORE
    with torch.no_grad():
        target = F.log_softmax(teacher(batch.idx)[answer].float(), -1)
    log_p = F.log_softmax(student(batch.idx)[answer].float(), -1)
    return F.kl_div(log_p, target, log_target=True, reduction="batchmean")


# --------------------------------------------------------------------------------------
# One student run
# --------------------------------------------------------------------------------------


@dataclass
class StudentRun:
    """One student trained at one lambda: where its update went, and how well it fits the teacher."""

    lam: float
    student: gpt.GPT
    init: dict[str, torch.Tensor]
    loss: list[float]
    logged_steps: list[int]
    block_l1: dict[str, list[float]]
    tensor_share: dict[str, float]
    block_share: dict[str, float]
    type_share: dict[str, float]
    block_moved: dict[str, float]
    target_accuracy: float
    agreement: float
    retention: float

    def summary(self) -> dict[str, Any]:
        return {"lam": self.lam, "initial_loss": self.loss[0], "final_loss": self.loss[-1],
                "target_accuracy": self.target_accuracy, "agreement_with_teacher": self.agreement,
                "retention": self.retention, "block_share": self.block_share, "type_share": self.type_share,
                "block_moved": self.block_moved}


def _l1_by_block(student: nn.Module, init: dict[str, torch.Tensor]) -> dict[str, float]:
    return group_sum({n: u.l1 for n, u in update_norms(student, init).items()}, block_of)


@torch.no_grad()
def agreement(student: nn.Module, teacher: nn.Module, world: tk.World, task: str, split: str = "test") -> float:
    """Share of a task's evaluation examples on which the student's greedy answer equals the teacher's."""
    batch = world.eval_set(task, split)
    answer = batch.targets != tk.IGNORE
    teacher_says = torch.where(answer, teacher(batch.idx).argmax(-1), tk.IGNORE)
    return tk.exact_match(student, tk.Batch(batch.idx, teacher_says))


def train_student(teacher: Teacher, lam: float, progress: bool = True) -> StudentRun:
    """Train a fresh student toward the teacher with ``lam`` times the L1 distance to its start."""
    lam = check_finite_nonnegative(lam, "lam")
    cfg, world = teacher.config, teacher.world
    student = make_student(teacher).train()
    init = snapshot(student)
    logged: list[int] = []
    block_l1: dict[str, list[float]] = {}

    def loss_of_batch(model: nn.Module, batch: tk.Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        task = distill_loss(model, teacher.model, batch) if cfg.objective == "distill" else tk.loss(model, batch)
        extra = {"fit": task.detach()}
        return (task + lam * l1_to_init(model, init), extra) if cfg.penalty == "loss" and lam > 0 else (task, extra)

    def log_block_l1(state: FitState) -> None:
        if state.step % cfg.log_every == 0 or state.step == cfg.steps - 1:
            logged.append(state.step)
            for key, value in _l1_by_block(state.model, init).items():
                block_l1.setdefault(key, []).append(value)

    hooks = [ProximalL1(init, lam)] if cfg.penalty == "prox" else []
    history = fit(student, MaskedAdamW(student.named_parameters(), lr=cfg.lr, weight_decay=0.0), loss_of_batch,
                  cfg.steps, batches=lambda step: world.train_batch(cfg.target, step, cfg.batch_size, cfg.seed + 1),
                  schedule=cosine(cfg.lr, cfg.steps, warmup=cfg.warmup, floor=0.1),
                  hooks=[*hooks, EachStep(log_block_l1)], progress=progress, desc=f"student lam={lam:g}")
    losses = history["fit"]
    student.eval()
    shares = {n: u.share for n, u in update_norms(student, init).items()}
    unchanged = update_sparsity(student, init, tol=0.0).per_tensor
    sizes = {n: t.numel() for n, t in init.items()}
    moved = group_sum({n: (1 - unchanged[n]) * sizes[n] for n in init}, block_of)
    entries = group_sum({n: float(sizes[n]) for n in init}, block_of)
    return StudentRun(
        lam=lam, student=student, init=init, loss=losses, logged_steps=logged, block_l1=block_l1, tensor_share=shares,
        block_share=group_sum(shares, block_of),
        type_share=group_sum(shares, layer_type),
        block_moved={k: moved[k] / entries[k] for k in entries},
        target_accuracy=tk.accuracy(student, world, cfg.target),
        agreement=agreement(student, teacher.model, world, cfg.target),
        retention=tk.retention(student, world),
    )


# --------------------------------------------------------------------------------------
# The study: lambda = 0 against lambda > 0
# --------------------------------------------------------------------------------------


@dataclass
class Study:
    """The teacher and one student per lambda (``0`` and ``config.lam``)."""

    teacher: Teacher
    runs: dict[float, StudentRun]

    @property
    def config(self) -> Config:
        return self.teacher.config

    @property
    def chosen(self) -> list[str]:
        return [f"block {b}" for b in self.config.blocks]

    def chosen_share(self, lam: float) -> float:
        """Share of the L1 update that sits in the blocks the teacher changed."""
        return sum(self.runs[lam].block_share[b] for b in self.chosen)

    def revealed(self, lam: float) -> bool:
        """Do the chosen blocks hold the largest block shares (ranked over every part of the model)?"""
        shares = self.runs[lam].block_share
        top = sorted(shares, key=shares.get, reverse=True)[: len(self.chosen)]
        return set(top) == set(self.chosen)

    def summary(self) -> dict[str, Any]:
        """The JSON-able numbers of the study (what the CLI prints with --json)."""
        t = self.teacher
        return {
            "config": json.loads(json.dumps(asdict(self.config))),
            "teacher": {"target_accuracy_before": t.accuracy_before, "target_accuracy": t.accuracy,
                            "retention": t.retention, "retention_before": tk.retention(t.pretrained, t.world)},
            "runs": [dict(r.summary(), chosen_share=self.chosen_share(lam), revealed=self.revealed(lam))
                     for lam, r in self.runs.items()],
        }


def run(cfg: Config | None = None, *, cache_dir: str | Path | None = None, progress: bool = True) -> Study:
    """Make the teacher, then train one student with lambda = 0 and one with ``cfg.lam``."""
    cfg = default_config() if cfg is None else cfg
    if not isinstance(cfg, Config):
        raise TypeError(f"cfg must be a teacher_student.Config, got {type(cfg).__name__}")
    teacher = make_teacher(cfg, cache_dir=cache_dir, progress=progress)
    lams = dict.fromkeys((0.0, float(cfg.lam)))
    return Study(teacher, {lam: train_student(teacher, lam, progress) for lam in lams})


def format_table(study: Study) -> str:
    """Per-block and per-layer-type shares of the L1 update for every lambda, plus the fit."""
    lams = list(study.runs)
    head = "".join(f"{'lam=' + format(lam, 'g'):>12}" for lam in lams)
    first = study.runs[lams[0]]
    lines = [f"{'part':<13}{head}   (share of the L1 update; * = block the teacher changed)"]
    for part in first.block_share:
        mark = "*" if part in study.chosen else " "
        shares = "".join(f"{study.runs[lam].block_share[part]:>12.3f}" for lam in lams)
        lines.append(f"{part + ' ' + mark:<13}{shares}")
    lines.append("")
    for kind in LAYER_TYPES:
        lines.append(f"{kind:<13}" + "".join(f"{study.runs[lam].type_share.get(kind, 0.0):>12.3f}" for lam in lams))
    t = study.teacher
    lines += ["", (f"teacher: {study.config.target} accuracy {t.accuracy_before:.2f} -> {t.accuracy:.2f} "
              f"(blocks {list(study.config.blocks)} fine-tuned), source retention {t.retention:.2f}")]
    for lam, r in study.runs.items():
        lines.append(f"student lam={lam:g}: loss {r.loss[0]:.3g} -> {r.loss[-1]:.3g}, target accuracy "
                     f"{r.target_accuracy:.2f}, agrees with the teacher on {r.agreement:.0%}; chosen blocks hold "
                     f"{study.chosen_share(lam):.0%} of the update "
                     f"({'revealed' if study.revealed(lam) else 'not revealed'})")
    return "\n".join(lines)


def plot_shares(study: Study, fig: Any = None) -> Any:
    """The per-block update-share figure: shares per block and per layer type, lambda = 0 vs lambda > 0."""
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(13, 4))
    fig.clear()
    ax_block, ax_type, ax_curve = fig.subplots(1, 3)
    lams = list(study.runs)
    width = 0.8 / len(lams)
    for ax, attr, keys in [(ax_block, "block_share", list(study.runs[lams[0]].block_share)),
                           (ax_type, "type_share", list(LAYER_TYPES))]:
        for i, lam in enumerate(lams):
            values = [getattr(study.runs[lam], attr).get(k, 0.0) for k in keys]
            ax.bar([x + (i - (len(lams) - 1) / 2) * width for x in range(len(keys))], values, width,
                   label=f"lambda = {lam:g}")
        labels = [k + (" *" if k in study.chosen else "") for k in keys]
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(labels, rotation=45, ha="right")
        ax.set(ylabel="share of the total L1 update", ylim=(0, 1))
        ax.legend(fontsize="small")
    ax_block.set_title("Per block (* = changed by the teacher)")
    ax_type.set_title("Per layer type")
    run_l1 = study.runs[lams[-1]]
    for key, values in run_l1.block_l1.items():
        ax_curve.plot(run_l1.logged_steps, values, label=key, linestyle="-" if key in study.chosen else "--")
    ax_curve.set(xlabel="step", ylabel="L1 distance to the start", yscale="symlog",
                 title=f"Distance per part over training, lambda = {lams[-1]:g}")
    ax_curve.legend(fontsize="x-small", ncol=2)
    cfg = study.config
    fig.suptitle(f"Teacher-student GPT ({cfg.preset}): teacher fine-tuned blocks {list(cfg.blocks)} on "
                 f"{cfg.target}; student {cfg.student}, {cfg.objective}, L1 as {cfg.penalty}")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _parse_blocks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"blocks must be comma-separated ints, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scaleup.teacher_student",
                                description="Teacher-student GPT: does L1-to-init find the blocks that needed "
                                            "updating?")
    p.add_argument("--preset", default="tiny", choices=tuple(gpt.PRESETS), help="the GPT's size (default: %(default)s)")
    p.add_argument("--target", default="add2", choices=tuple(tk.TARGET_TASKS),
                   help="the task the teacher is fine-tuned on (default: %(default)s)")
    p.add_argument("--blocks", type=_parse_blocks, default=None,
                   help="blocks the teacher changes, e.g. 1,2 (default: the middle one)")
    p.add_argument("--student", choices=STUDENTS, default=None,
                   help="the student's start: the pretrained model, or its changed blocks re-drawn (default: pretrained)")
    p.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help="match the teacher's outputs, or learn the task itself (default: distill)")
    p.add_argument("--penalty", choices=PENALTIES, default=None,
                   help="L1 to the start as a proximal step or a loss term (default: prox)")
    p.add_argument("--lam", type=finite_nonnegative, default=None,
                   help="L1-to-init strength of the second run (default: 0.005)")
    p.add_argument("--steps", type=positive_int, default=None, help="student steps (default: 300; 60 with LAB_FAST=1)")
    p.add_argument("--teacher-steps", type=positive_int, default=None,
                   help="the teacher's fine-tuning steps (default: 300; 60 with LAB_FAST=1)")
    p.add_argument("--seed", type=random_seed, default=None, help="the runs' seed (default: 0)")
    p.add_argument("--pretrain-steps", type=positive_int, default=None,
                   help="steps of the pretrained model to load or train (default: 2000; 300 with LAB_FAST=1)")
    p.add_argument("--cache-dir", type=output_folder, default=None,
                   help="the pretrained-model cache (default: $SUBNET_LAB_CACHE, else .cache/subnet-lab/)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--plot", metavar="PATH", type=output_file, help="save the figure to PATH")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)
    use_threads()
    names = ("blocks", "student", "objective", "penalty", "lam", "steps", "teacher_steps", "seed", "target",
             "pretrain_steps")
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if "steps" in overrides:
        overrides.setdefault("warmup", overrides["steps"] // 10)
    try:
        cfg = default_config(args.preset, fast=fast_mode(), **overrides)
    except (ValueError, TypeError) as err:
        p.error(str(err))
    try:
        study = run(cfg, cache_dir=args.cache_dir, progress=not args.no_progress)
    except FloatingPointError as err:
        print(f"{p.prog}: error: {err}; try a smaller --lam or other settings", file=sys.stderr)
        return 1
    if args.plot:
        plot_shares(study).savefig(args.plot, dpi=110)
    if args.json:
        json.dump(json_ready(study.summary()), sys.stdout, indent=1, allow_nan=False)
        print()
    else:
        print(format_table(study))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
