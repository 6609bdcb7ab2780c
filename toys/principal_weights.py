"""Principal weights (LIFT) vs plain magnitude on the teacher-student toy: lesson 7's study.

LIFT (Liu et al. 2025) scores every entry of a weight matrix by the magnitude of the matrix's
rank-r approximation and fine-tunes the top few percent: the *principal weights*. Two facts
follow from the definition (at full rank LIFT *is* magnitude selection; below, the masks can
differ completely), and one claim needs measuring: do the principal weights learn a new task
better and forget the old one less?

The setting (:class:`TransferConfig`): the teacher-student student plays the pretrained model;
its *source skill* is its own function on source inputs, the *target task* the teacher's
function on inputs confined to a random subspace U that the source inputs do not touch, so
the drift on the source measures a fine-tune's collateral damage, not a necessary price.
Each selector's mask is chosen and trained with the lab's entry point
(``sparsify`` + ``fit``); criteria resolve through ``sparsity.registry``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsity import criteria, masks
from sparsity.config import SparseConfig
from sparsity.metrics import mask_overlap
from sparsity.optim import MaskedAdamW
from sparsity.registry import Criterion, CriterionInputs, Scores
from sparsity.sweep import markdown_table, mean_spread
from sparsity.train import LossOfBatch, cosine, fit
from sparsity.validate import Mask, check_density, check_positive_int, named_params
from sparsity.wrap import sparsify
from toys import teacher_student as ts
from toys.criterion_masks import INCLUDE, SCOPES, check_choice, criterion_mask, selected
from toys.figures import panels

RANKS: tuple[int | None, ...] = (1, 2, 4, 8, None)
"""Ranks of the LIFT approximation compared in lesson 7; None = full rank (LIFT == magnitude)."""

SELECTORS = ("full FT", "random", "magnitude", "lift")
"""What the study fine-tunes: every entry, or the entries a criterion picks (LIFT at each rank)."""


def rank_label(rank: int | None) -> str:
    """How tables and plots name a rank: the number, or "full" for None."""
    return "full" if rank is None else str(rank)


def full_rank_lift(model: nn.Module, inputs: CriterionInputs) -> Scores:
    """LIFT at each matrix's own full rank: the approximation is the matrix itself, so the scores
    equal plain magnitude up to float rounding (the low-rank step is all that separates them)."""
    params = named_params(model)
    return {n: criteria.low_rank_approximation(params[n], min(params[n].shape)).abs().to(params[n].dtype)
            for n in inputs.names(model)}


def lift_criterion(rank: int | None) -> tuple[str | Criterion, dict[str, int]]:
    """The registry's ``lift`` with its rank option, or :func:`full_rank_lift` for ``rank=None``."""
    if rank is None:
        return full_rank_lift, {}
    return "lift", {"rank": check_positive_int(rank, "rank")}


def selector_config(selector: str, rank: int | None, density: float, scope: str, seed: int,
                    lr: float) -> SparseConfig:
    """The ``SparseConfig`` of one sparse selector (random, magnitude, or LIFT at ``rank``)."""
    check_choice(selector, SELECTORS[1:], "selector")
    criterion, options = lift_criterion(rank) if selector == "lift" else (selector, {})
    return SparseConfig(criterion=criterion, density=density, scope=scope, options=options, lr=lr, seed=seed)


@dataclass(frozen=True)
class OverlapRow:
    """How LIFT's mask at one rank overlaps the plain-magnitude mask at the same budget."""

    rank: int | None
    jaccard: float
    chance_jaccard: float
    lift_in_magnitude: float
    identical: bool


def lift_magnitude_overlap(
    model: nn.Module,
    density: float = 0.05,
    ranks: Iterable[int | None] = RANKS,
    scope: str = "per_tensor",
) -> list[OverlapRow]:
    """Mask overlap (``metrics.mask_overlap``) of LIFT at each rank with magnitude, vs chance.

    At low rank LIFT keeps only the matrix's dominant directions, so its largest entries
    need not be the largest entries of W; as the rank grows the approximation approaches W
    and at full rank the two masks coincide.
    """
    magnitude = criterion_mask(model, "magnitude", density, scope, CriterionInputs(include=INCLUDE))
    rows = []
    for rank in ranks:
        criterion, options = lift_criterion(rank)
        lift = criterion_mask(model, criterion, density, scope, CriterionInputs(include=INCLUDE, options=options))
        o = mask_overlap(lift, magnitude)
        rows.append(OverlapRow(rank, o.jaccard, o.chance_jaccard, o.a_in_b,
                               all(torch.equal(lift[n], magnitude[n]) for n in lift)))
    return rows


# --------------------------------------------------------------------------------------
# The source/target setting
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferConfig:
    """The source/target setting of lesson 7, on the teacher-student student.

    The *pretrained* model is the student at its start; its *source skill* is its own
    function on source inputs. The *target task* is the teacher's function on target inputs
    confined to a random ``target_dim``-dimensional subspace U of input space; the source
    inputs fill the orthogonal complement. Both are scaled to the norm of the toy's
    standard-normal inputs. Why the split: on the same inputs the two tasks contradict
    each other (fitting the teacher *is* forgetting the student), so forgetting would only
    mirror learning. Here a change of W1 along U alone (delta W1 = A U^T) could fit the
    target without touching a single source output, so the drift on the source inputs
    measures a fine-tune's collateral damage, not a necessary price.
    """

    toy: ts.Config = field(default_factory=lambda: ts.Config(lam=0.0))
    target_dim: int = 10
    n_source: int = 2000
    steps: int = 1000
    lr: float = 1e-2

    def __post_init__(self) -> None:
        if not isinstance(self.toy, ts.Config):
            raise TypeError(f"toy must be a toys.teacher_student.Config, got {type(self.toy).__name__}")
        d = self.toy.widths[0]
        if isinstance(self.target_dim, bool) or not isinstance(self.target_dim, int) or not 1 <= self.target_dim < d:
            raise ValueError(f"target_dim must be an int in [1, {d - 1}] (the source needs the rest), "
                             f"got {self.target_dim!r}")
        check_positive_int(self.n_source, "n_source")
        check_positive_int(self.steps, "steps")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")


def default_transfer_config(*, fast: bool = False, **overrides: object) -> TransferConfig:
    """Lesson 7's setting; ``fast`` (fast mode, passed down by the entry point) trains 250 steps instead of 1,000."""
    base = TransferConfig(steps=250) if fast else TransferConfig()
    return replace(base, **overrides)


@dataclass
class TransferTask:
    """Data of one source/target setting: the pretrained student, the target and source sets."""

    config: TransferConfig
    student: nn.Module
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_source: torch.Tensor
    y_source: torch.Tensor
    teacher_drift: float

    def loss_of_batch(self) -> LossOfBatch:
        """The target task's full-batch training MSE, as ``fit``'s ``loss_of_batch``."""
        return lambda model, _: nn.functional.mse_loss(model(self.x_train), self.y_train)

    @torch.no_grad()
    def measure(self, model: nn.Module) -> tuple[float, float, float]:
        """(target test MSE, source drift = MSE between ``model``'s source outputs and the pretrained
        ones, L2 norm of the whole parameter change from the pretrained student)."""
        target = nn.functional.mse_loss(model(self.x_test), self.y_test).item()
        drift = nn.functional.mse_loss(model(self.x_source), self.y_source).item()
        update = math.sqrt(sum(float((p - q).square().sum()) for p, q in zip(model.parameters(),
                                                                              self.student.parameters())))
        return target, drift, update


def make_transfer_task(cfg: TransferConfig, seed: int = 0) -> TransferTask:
    """Teacher, student and data for one seed (the toy's seed is offset by ``seed``)."""
    toy = replace(cfg.toy, seed=cfg.toy.seed + seed)
    teacher, student = ts.make_teacher_student(toy)
    d, k = toy.widths[0], cfg.target_dim
    gen = torch.Generator().manual_seed(toy.seed + 30_000)
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=gen))
    x_target = torch.randn(toy.n_train + toy.n_test, k, generator=gen) @ basis.T * math.sqrt(d / k)
    noise = torch.randn(cfg.n_source, d, generator=gen)
    x_source = (noise - noise @ basis @ basis.T) * math.sqrt(d / (d - k))
    with torch.no_grad():
        y_target, y_source = teacher(x_target), student(x_source)
        teacher_drift = nn.functional.mse_loss(teacher(x_source), y_source).item()
    n = toy.n_train
    return TransferTask(cfg, student, x_target[:n], y_target[:n], x_target[n:], y_target[n:], x_source, y_source,
                        teacher_drift)


def finetune(task: TransferTask, config: SparseConfig | None) -> tuple[Mask | None, tuple[float, float, float]]:
    """Fine-tune a copy of the pretrained student on the target (cosine lr, full batch) and measure it.

    ``config=None`` trains every entry (``MaskedAdamW`` without a mask); otherwise ``sparsify``
    selects ``config``'s mask and builds its optimizer. Returns the mask (None for full
    fine-tuning) and :meth:`TransferTask.measure`'s numbers. The pretrained student is untouched.
    """
    cfg = task.config
    student = copy.deepcopy(task.student)
    if config is None:
        mask, optimizer = None, MaskedAdamW(student.named_parameters(), lr=cfg.lr, weight_decay=0.0)
    else:
        run = sparsify(student, config)
        mask, optimizer = run.mask, run.optimizer
    fit(student, optimizer, task.loss_of_batch(), cfg.steps, schedule=cosine(cfg.lr, cfg.steps))
    return mask, task.measure(student)


# --------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrincipalRow:
    """One selector in lesson 7's study, averaged over seeds.

    ``selector``: "full FT", "random", "magnitude" or "lift" (then ``rank``; None = full
    rank). ``jaccard_magnitude``: overlap of its mask with magnitude's (1 for magnitude).
    ``target_loss``: target test MSE; ``source_drift``: MSE to the pretrained outputs on the
    source inputs (lower = more retained); ``update_norm``: L2 norm of the whole parameter
    change (how far the fine-tune moved the model), over ``trained`` trainable entries;
    ``*_std``: sample standard deviation over seeds (``sparsity.sweep.mean_spread``).
    """

    selector: str
    rank: int | None
    jaccard_magnitude: float
    target_loss: float
    target_loss_std: float
    source_drift: float
    source_drift_std: float
    update_norm: float
    trained: int

    @property
    def rms_step(self) -> float:
        """Root-mean-square change per trainable entry: how far each trained weight moved."""
        return self.update_norm / math.sqrt(self.trained)

    @property
    def name(self) -> str:
        return f"LIFT r={rank_label(self.rank)}" if self.selector == "lift" else self.selector


@dataclass
class PrincipalStudy:
    """Lesson 7's table: every selector's target loss and source drift, and the references."""

    config: TransferConfig
    density: float
    scope: str
    seeds: tuple[int, ...]
    rows: list[PrincipalRow]
    start_target_loss: float
    teacher_drift: float

    def get(self, name: str) -> PrincipalRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row {name!r}; rows: {[r.name for r in self.rows]}")

    def table(self) -> str:
        """A markdown table of every selector, and the references below it."""
        header = ["selector", "overlap w/ magnitude", "target MSE", "source drift", "update norm", "trained",
                  "rms step"]
        rows = [[r.name, f"{r.jaccard_magnitude:.2f}", f"{r.target_loss:.2e}", f"{r.source_drift:.3f}",
                 f"{r.update_norm:.2f}", r.trained, f"{r.rms_step:.3f}"] for r in self.rows]
        return (markdown_table(header, rows) + f"\n\nstart: target MSE {self.start_target_loss:.3g}; a student that "
                f"became the teacher would drift {self.teacher_drift:.3f} on the source; budget {self.density:.0%} "
                f"({self.scope}), {self.config.steps} steps, mean of {len(self.seeds)} seed(s)")


def principal_weights(
    cfg: TransferConfig | None = None,
    *,
    density: float = 0.05,
    ranks: Iterable[int | None] = RANKS,
    scope: str = "per_tensor",
    seeds: Iterable[int] = (0,),
    include_random: bool = True,
    progress: bool = True,
) -> PrincipalStudy:
    """Full FT, random, magnitude and LIFT at each rank: target loss and source drift, over seeds.

    LIFT's claim (Liu et al. 2025): the top 5% of a low-rank approximation's entries are
    the weights to fine-tune, better than plain magnitude, and they forget less of the
    source. ``scope="per_tensor"`` gives every matrix the same share, as LIFT does.
    """
    cfg = default_transfer_config() if cfg is None else cfg
    if not isinstance(cfg, TransferConfig):
        raise TypeError(f"cfg must be a TransferConfig, got {type(cfg).__name__}")
    check_density(density)
    check_choice(scope, SCOPES, "scope")
    ranks, seeds = list(ranks), tuple(seeds)
    for r in ranks:
        if r is not None:
            check_positive_int(r, "ranks entry")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of ints, got {seeds!r}")
    selectors: list[tuple[str, int | None]] = [("full FT", None)] + ([("random", None)] if include_random else [])
    selectors += [("magnitude", None)] + [("lift", r) for r in ranks]
    results: dict[tuple[str, int | None], list[tuple[float, float, float, float]]] = {s: [] for s in selectors}
    trained: dict[tuple[str, int | None], int] = {}
    tasks = {seed: make_transfer_task(cfg, seed) for seed in seeds}
    for seed, (selector, rank) in tqdm([(seed, s) for seed in seeds for s in selectors], desc="selectors x seeds",
                                       disable=not progress):
        task = tasks[seed]
        if selector == "full FT":
            _, numbers = finetune(task, None)
            jaccard, trained[(selector, rank)] = 1.0, sum(p.numel() for p in task.student.parameters())
        else:
            magnitude = criterion_mask(task.student, "magnitude", density, scope, CriterionInputs(include=INCLUDE))
            mask, numbers = finetune(task, selector_config(selector, rank, density, scope, seed, cfg.lr))
            jaccard, trained[(selector, rank)] = mask_overlap(mask, magnitude).jaccard, selected(mask)
        results[(selector, rank)].append((jaccard, *numbers))
    rows = []
    for (selector, rank), values in results.items():
        (jac, _), (target, target_sd), (drift, drift_sd), (update, _) = (mean_spread(v) for v in zip(*values))
        rows.append(PrincipalRow(selector, rank, jac, target, target_sd, drift, drift_sd, update,
                                 trained[(selector, rank)]))
    with torch.no_grad():
        start = [nn.functional.mse_loss(t.student(t.x_test), t.y_test).item() for t in tasks.values()]
    return PrincipalStudy(cfg, density, scope, seeds, rows, sum(start) / len(start),
                          sum(t.teacher_drift for t in tasks.values()) / len(tasks))


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def plot_spectra(model: nn.Module, fig: object = None) -> object:
    """The share of each weight matrix's squared Frobenius norm a rank-r approximation keeps, by r."""
    fig, ax = panels(fig, (6.5, 3.8))
    for name, p in model.named_parameters():
        if p.ndim == 2:
            s = torch.linalg.svdvals(p.detach())
            ax.plot(range(1, len(s) + 1), (s**2).cumsum(0) / (s**2).sum(), marker=".", label=ts.label(name))
    ax.set(xlabel="rank r", ylabel="share of ||W||^2 kept by W_r", ylim=(0, 1.02),
           title="How much of each matrix a rank-r approximation keeps")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_selected_entries(model: nn.Module, name: str = "fc2.weight", ranks: Sequence[int] = (1, 4),
                          density: float = 0.1, fig: object = None) -> object:
    """Where the top ``density`` of one matrix's entries lie, by magnitude and by LIFT at each rank."""
    weight, label = named_params(model)[name], ts.label(name)
    scored = [(f"magnitude: abs({label})", weight.detach().abs())]
    scored += [(f"LIFT r={r}: abs(({label})_{r})", criteria.low_rank_approximation(weight, r).abs()) for r in ranks]
    fig, axes = panels(fig, (4 * len(scored), 3.6), len(scored))
    for ax, (title, scores) in zip(axes, scored):
        chosen = masks.top_k(model, {name: scores}, density)[name]
        ax.imshow(chosen.float(), cmap="Greys", interpolation="nearest")
        ax.set(title=title, xlabel="input unit", ylabel="output unit")
    fig.suptitle(f"The top {density:.0%} of {label}'s entries by each score (black = selected)")
    fig.tight_layout()
    return fig


def plot_overlap(rows: Sequence[OverlapRow], density: float, fig: object = None) -> object:
    """Jaccard overlap of LIFT's mask with magnitude's, by rank, against chance."""
    fig, ax = panels(fig, (6.5, 4))
    labels = [rank_label(r.rank) for r in rows]
    ax.plot(labels, [r.jaccard for r in rows], marker="o", label="LIFT vs magnitude")
    ax.plot(labels, [r.chance_jaccard for r in rows], linestyle=":", color="gray", label="chance (independent masks)")
    ax.set(ylim=(0, 1.05), xlabel="rank of the approximation", ylabel="Jaccard overlap of the masks",
           title=f"Principal weights vs plain magnitude ({density:.0%} budget)")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_principal(study: PrincipalStudy, fig: object = None) -> object:
    """Target MSE and source drift per selector (bars, seed spread as error bars)."""
    fig, (ax_target, ax_source) = panels(fig, (13, 4.2), 2)
    names = [r.name for r in study.rows]
    colors = ["black" if r.selector == "full FT" else "gray" if r.selector == "random"
              else "tab:orange" if r.selector == "magnitude" else "tab:blue" for r in study.rows]
    ax_target.bar(names, [r.target_loss for r in study.rows], yerr=[r.target_loss_std for r in study.rows],
                  color=colors)
    ax_target.axhline(study.start_target_loss, color="gray", linestyle=":", label="before fine-tuning")
    ax_target.set(yscale="log", ylabel="target test MSE (lower = learned)", title="Target task")
    ax_target.legend()
    ax_source.bar(names, [r.source_drift for r in study.rows], yerr=[r.source_drift_std for r in study.rows],
                  color=colors)
    ax_source.axhline(study.teacher_drift, color="gray", linestyle=":", label="drift of becoming the teacher")
    ax_source.set(ylabel="MSE to the pretrained outputs (lower = retained)", title="Source task: forgetting")
    ax_source.legend()
    for ax in (ax_target, ax_source):
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(f"Fine-tuning {study.density:.0%} of the weights ({study.scope}) vs all of them; "
                 f"{study.config.steps} steps, {len(study.seeds)} seed(s)")
    fig.tight_layout()
    return fig
