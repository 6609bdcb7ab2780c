"""Which weights should a sparse fine-tune train? Mask criteria compared on the teacher-student toy.

The teacher-student toy (``toys.teacher_student``, Liu 2026) knows the answer: the student
copies W1 and W3 from the teacher and has W2 re-drawn, so only W2 *needs* to change. That
makes it a test bench for mask criteria: build a mask on the student at its start with a
criterion, train only the masked entries (``MaskedAdamW``), and ask two questions:

* does the sparse fine-tune reach full fine-tuning's loss? (``Row.test_loss`` vs the full
  run's, and ``Row.recovery``: the share of full fine-tuning's loss reduction it achieves);
* does the criterion *find W2*? (``Row.share_needed``: the share of the mask lying in the
  re-drawn layer's weights, against ``chance_share`` for a random mask).

The criteria (``sparsity.criteria``), each scoring every weight entry at the student's start:

``random``     uniform scores: the baseline.
``magnitude``  abs(w): the classic pruning score (Han et al. 2015) used as a selector.
``gradient``   abs(summed gradient): where the loss wants change first.
``snip``       abs(w * g): SNIP's connection sensitivity (Lee et al. 2019).
``fisher``     summed squared batch gradients: the FISH mask (Sung et al. 2021).
``movement``   -w * g: movement pruning's score, read at the start (Sanh et al. 2020).
``lift``       abs of each matrix's rank-r approximation: LIFT's principal weights (Liu et al. 2025).
``l1_update``  abs(delta) of a run with an L1 penalty toward the start (lambda = 1e-3, as a
               proximal step so unneeded entries sit exactly at zero): the subnetwork an
               observed sparse update discovered (``masks.from_update``, ``criteria.update``).
``layer``      the re-drawn layer itself ("fc2"): an oracle that knows the layer but not
               which of its entries matter.

Every criterion turns into a mask with the ``top_k`` policy at a density (share of the
weight entries), over all matrices at once (``scope="global"``) or with the same density
in every matrix (``scope="per_tensor"``). Two criteria name a *set* rather than a ranking:
``l1_update`` (the entries the L1 run moved) and ``layer`` (the layer's entries, ranked at
random inside it). They never spend budget outside their set: when the budget exceeds the
set they take all of it, and the row reports the smaller actual density honestly.

Fixed-pattern sparse training after selection is what RigL (Evci et al. 2020) makes
dynamic; here the mask is chosen once, at the start.

Also here: the masked-optimizer pitfall (:func:`masked_optimizer_pitfall`: AdamW with the
gradient zeroed outside the mask still moves frozen entries through weight decay), the
principal-weights study of lesson 7 (:func:`lift_magnitude_overlap`, :func:`principal_weights`)
and the same comparison on the modular toy, where the known answer is a *module* (the
first-layer weights reading a task's input group) instead of a layer (:func:`compare_modular`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsity import criteria as crit
from sparsity import masks
from sparsity.eligibility import eligible
from sparsity.fastmode import fast_mode
from sparsity.metrics import mask_overlap
from sparsity.optim import MaskedAdamW
from sparsity.validate import Mask, check_density, check_mask, named_params
from toys import teacher_student as ts

CRITERIA = ("random", "magnitude", "gradient", "snip", "fisher", "movement", "lift", "l1_update", "layer")
"""Every criterion :func:`select` knows, in the order tables list them."""

DENSITIES = (0.01, 0.05, 0.2)
"""Budgets compared by default: 1%, 5% and 20% of the weight entries."""

SCOPES = masks.SCOPES
"""top_k over all matrices at once ("global") or the same share of every matrix ("per_tensor")."""

RANKS: tuple[int | None, ...] = (1, 2, 4, 8, None)
"""Ranks of the LIFT approximation compared in lesson 7; None = full rank (LIFT == magnitude)."""

L1_MIN_STEPS = 600
"""The L1 discovery run trains at least this long: at 300 steps part of Adam's early transient
(W1 and W3 entries moved before the penalty pulls them back) is still in its support (measured:
83% of it in W2 at 300 steps, 92% at 600 and at 1,000)."""

INCLUDE = "weight"
"""Budgets are spent on weight matrices only (biases stay frozen in sparse runs): LIFT needs matrices."""


def default_config(**overrides: object) -> ts.Config:
    """The toy config of the comparison: plain MSE (lam = 0), fewer steps in fast mode (``LAB_FAST=1``).

    Full mode trains 3,000 steps (every masked run has flattened by then); fast mode 300,
    enough for the criteria's ranking at 5% to show but not for full convergence.
    """
    base = ts.default_config(lam=0.0, steps=300 if fast_mode() else 3000)
    return replace(base, **overrides)


def _check_choice(value: object, allowed: Sequence[object], arg: str) -> None:
    if value not in allowed:
        raise ValueError(f"{arg} must be one of {tuple(allowed)}, got {value!r}")


def _check_rank(rank: object, arg: str = "rank", allow_full: bool = False) -> None:
    if allow_full and rank is None:
        return
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"{arg} must be a positive int{' or None (full rank)' if allow_full else ''}, got {rank!r}")


def redrawn_layers(cfg: ts.Config) -> list[str]:
    """Module names of the layers the student re-draws (the ones that need fine-tuning): ["fc2"] by default."""
    return [f"fc{i}" for i in range(1, len(cfg.widths)) if i not in cfg.copy_layers]


def weight_count(model: nn.Module) -> int:
    """Number of entries a density is a share of: all weight-matrix entries."""
    params = named_params(model)
    return sum(params[n].numel() for n in eligible(model, INCLUDE))


# --------------------------------------------------------------------------------------
# The setting every criterion shares, built once
# --------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What every criterion needs, computed once: the student at its start, data, the reference runs.

    ``full`` is full fine-tuning (every parameter, lam = 0): the bar to match. ``l1`` is the
    discovery run (L1 toward the start as a proximal step) whose update ``l1_update`` reads.
    ``needed`` marks the weights of the re-drawn layer(s), W2 by default.
    """

    config: ts.Config
    teacher: nn.Module
    student: nn.Module
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    full: ts.Result
    l1: ts.Result
    l1_tol: float
    start_test_loss: float
    needed: Mask
    needed_label: str

    @property
    def n_weights(self) -> int:
        return weight_count(self.student)

    @property
    def needed_count(self) -> int:
        return sum(int(m.sum()) for m in self.needed.values())

    @property
    def chance_share(self) -> float:
        """Share of the needed weights among all weights: what a random mask puts there."""
        return self.needed_count / self.n_weights


def prepare(
    cfg: ts.Config | None = None,
    *,
    l1_lam: float = 1e-3,
    l1_tol: float = 1e-5,
    l1_steps: int | None = None,
    n_batches: int = 4,
    progress: bool = True,
) -> Setup:
    """Build the student at its start and run full fine-tuning and the L1 discovery run.

    ``cfg`` must have lam = 0 (the comparison's runs are plain MSE); the discovery run uses
    ``l1_lam`` with the penalty as a proximal step, so entries the task does not need end
    *exactly* at their start and ``masks.from_update(tol=l1_tol)`` reads a clean support.
    It trains ``l1_steps`` steps (default: ``cfg.steps``, at least ``L1_MIN_STEPS``).
    """
    cfg = default_config() if cfg is None else cfg
    if not isinstance(cfg, ts.Config):
        raise TypeError(f"cfg must be a toys.teacher_student.Config, got {type(cfg).__name__}")
    if cfg.lam != 0:
        raise ValueError(f"cfg.lam must be 0 (the compared runs are plain fine-tuning), got {cfg.lam}")
    if not l1_lam > 0:
        raise ValueError(f"l1_lam must be > 0 (it is the discovery run's penalty), got {l1_lam}")
    if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 1:
        raise ValueError(f"n_batches must be a positive int, got {n_batches!r}")
    needed_layers = redrawn_layers(cfg)
    if not needed_layers:
        raise ValueError("cfg.copy_layers copies every layer: no layer needs fine-tuning, nothing to find")
    teacher, student = ts.make_teacher_student(cfg)
    _, _, x_test, y_test = ts.make_data(cfg, teacher)
    with torch.no_grad():
        start_test = nn.functional.mse_loss(student(x_test), y_test).item()
    full = ts.train(cfg, progress=progress)
    l1_steps = max(cfg.steps, L1_MIN_STEPS) if l1_steps is None else l1_steps
    l1 = ts.train(replace(cfg, lam=l1_lam, penalty="prox", steps=l1_steps), progress=progress)
    weights = set(eligible(student, INCLUDE))
    needed = masks.layers(student, needed_layers)
    needed = {n: m & (n in weights) for n, m in needed.items()}
    label = "+".join(ts.label(n) for n, m in needed.items() if m.any())
    return Setup(
        config=cfg, teacher=teacher, student=student, batches=ts.batches(cfg, teacher, n_batches),
        full=full, l1=l1, l1_tol=l1_tol, start_test_loss=start_test,
        needed=needed, needed_label=label,
    )


# --------------------------------------------------------------------------------------
# Criterion -> mask
# --------------------------------------------------------------------------------------


def scores(setup: Setup, criterion: str, *, lift_rank: int = 4, seed: int = 0) -> tuple[crit.Scores, Mask | None]:
    """A criterion's scores on the student at its start, and its set (None for pure rankings).

    The set limits where a set-criterion may select (``l1_update``, ``layer``); see the module doc.
    """
    _check_choice(criterion, CRITERIA, "criterion")
    model, loss, data = setup.student, ts.mse_loss, setup.batches
    if criterion == "random":
        return crit.random(model, seed, INCLUDE), None
    if criterion == "magnitude":
        return crit.magnitude(model, INCLUDE), None
    if criterion == "gradient":
        return crit.gradient(model, loss, data, INCLUDE), None
    if criterion == "snip":
        return crit.snip(model, loss, data, INCLUDE), None
    if criterion == "fisher":
        return crit.fisher(model, loss, data, INCLUDE), None
    if criterion == "movement":
        return crit.movement(model, loss, data, INCLUDE), None
    if criterion == "lift":
        _check_rank(lift_rank, "lift_rank")
        return lift_scores(model, lift_rank), None
    if criterion == "l1_update":
        l1 = setup.l1
        support = masks.from_update(l1.student, l1.init, setup.l1_tol, include=INCLUDE)
        return crit.update(l1.student, l1.init, include=INCLUDE), support
    # layer: random order inside the needed layer(s), nothing outside
    return crit.random(model, seed, INCLUDE), setup.needed


def select(
    setup: Setup,
    criterion: str,
    density: float,
    scope: str = "global",
    *,
    lift_rank: int = 4,
    seed: int = 0,
) -> Mask:
    """The mask a criterion picks at a budget: top ``density`` of the weight entries (``masks.top_k``).

    A set-criterion ranks its set first and is then cut to it, so it never spends budget
    outside the set (its mask may be smaller than the budget).
    """
    check_density(density)
    _check_choice(scope, SCOPES, "scope")
    s, support = scores(setup, criterion, lift_rank=lift_rank, seed=seed)
    if support is None:
        return masks.top_k(setup.student, s, density, scope)
    return masks.top_k_within(setup.student, s, support, density, scope)


# --------------------------------------------------------------------------------------
# Train a mask, compare
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One criterion at one budget: the mask's placement and the fine-tune's losses.

    ``recovery`` = (start - test) / (start - full test): 1 matches full fine-tuning, 0 learned
    nothing. ``share_needed`` = share of the mask in the needed weights (W2), against
    ``chance_share``; ``needed_coverage`` = share of the needed weights the mask covers;
    ``jaccard_needed`` = mask_overlap's Jaccard index with the needed weights; ``where`` =
    selected entries per weight tensor (W1, W2, W3).
    """

    criterion: str
    scope: str
    density: float
    selected: int
    actual_density: float
    train_loss: float
    test_loss: float
    recovery: float
    share_needed: float
    needed_coverage: float
    jaccard_needed: float
    chance_share: float
    where: dict[str, int] = field(default_factory=dict)


def evaluate(
    setup: Setup,
    criterion: str,
    density: float,
    scope: str = "global",
    *,
    lift_rank: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Row, ts.Result]:
    """Select with a criterion, train only the mask (``ts.train(cfg, mask=...)``), and measure."""
    mask = select(setup, criterion, density, scope, lift_rank=lift_rank, seed=seed)
    result = ts.train(setup.config, progress=progress, mask=mask)
    overlap = mask_overlap(mask, setup.needed)
    selected = sum(int(m.sum()) for m in mask.values())
    gain_full = setup.start_test_loss - setup.full.test_loss
    row = Row(
        criterion=criterion,
        scope=scope,
        density=density,
        selected=selected,
        actual_density=selected / setup.n_weights,
        train_loss=result.final_loss,
        test_loss=result.test_loss,
        recovery=(setup.start_test_loss - result.test_loss) / gain_full if gain_full > 0 else float("nan"),
        share_needed=overlap.a_in_b,
        needed_coverage=overlap.b_in_a,
        jaccard_needed=overlap.jaccard,
        chance_share=setup.chance_share,
        where={ts.label(n): int(mask[n].sum()) for n in eligible(setup.student, INCLUDE)},
    )
    return row, result


@dataclass
class Comparison:
    """The rows of a criterion comparison, and the setting they share (full FT's losses among it)."""

    setup: Setup
    rows: list[Row]
    lift_rank: int

    def get(self, criterion: str, density: float, scope: str = "global") -> Row:
        for row in self.rows:
            if (row.criterion, row.density, row.scope) == (criterion, density, scope):
                return row
        raise KeyError(f"no row for criterion={criterion!r}, density={density}, scope={scope!r}")

    def table(self) -> str:
        """A plain-text table: one line per criterion x budget x scope, full fine-tuning first."""
        s = self.setup
        need = s.needed_label
        head = (f"{'criterion':<11}{'scope':<11}{'budget':>7}{'actual':>8}{'train MSE':>11}{'test MSE':>10}"
                f"{'x full':>8}{'recovery':>9}{'in ' + need:>8}{'covers ' + need:>11}")
        lines = [head, "-" * len(head)]
        lines.append(f"{'full FT':<11}{'-':<11}{'100%':>7}{'100%':>8}{s.full.final_loss:>11.2e}"
                     f"{s.full.test_loss:>10.2e}{1:>8.1f}{1:>9.2f}{s.chance_share:>8.0%}{1:>11.0%}")
        for r in self.rows:
            name = f"lift r={self.lift_rank}" if r.criterion == "lift" else r.criterion
            lines.append(
                f"{name:<11}{r.scope:<11}{r.density:>7.0%}{r.actual_density:>8.1%}{r.train_loss:>11.2e}"
                f"{r.test_loss:>10.2e}{r.test_loss / s.full.test_loss:>8.1f}{r.recovery:>9.2f}"
                f"{r.share_needed:>8.0%}{r.needed_coverage:>11.0%}"
            )
        lines.append(f"start: test MSE {s.start_test_loss:.3g}; a random mask puts {s.chance_share:.0%} of itself "
                     f"in {need}; {s.config.steps} steps each")
        return "\n".join(lines)


def compare(
    setup: Setup | None = None,
    criteria: Iterable[str] = CRITERIA,
    densities: Iterable[float] = DENSITIES,
    scopes: Iterable[str] = ("global",),
    *,
    lift_rank: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> Comparison:
    """Every criterion x density x scope: build the mask at the start, train it, measure (one run each)."""
    setup = prepare(progress=progress) if setup is None else setup
    if not isinstance(setup, Setup):
        raise TypeError(f"setup must come from prepare(), got {type(setup).__name__}")
    criteria, densities, scopes = list(criteria), list(densities), list(scopes)
    for c in criteria:
        _check_choice(c, CRITERIA, "criterion")
    for d in densities:
        check_density(d)
    for sc in scopes:
        _check_choice(sc, SCOPES, "scope")
    if not (criteria and densities and scopes):
        raise ValueError("criteria, densities and scopes must each name at least one value")
    _check_rank(lift_rank, "lift_rank")
    jobs = [(c, d, sc) for sc in scopes for d in densities for c in criteria]
    rows = []
    for c, d, sc in tqdm(jobs, desc="criteria x budgets", disable=not progress):
        rows.append(evaluate(setup, c, d, sc, lift_rank=lift_rank, seed=seed)[0])
    return Comparison(setup=setup, rows=rows, lift_rank=lift_rank)


def plot_comparison(comparison: Comparison, scope: str = "global", fig: object = None) -> object:
    """Two panels over the budget: test MSE per criterion (full FT as a line), and the share in W2."""
    import matplotlib.pyplot as plt

    rows = [r for r in comparison.rows if r.scope == scope]
    if not rows:
        raise ValueError(f"the comparison has no rows with scope={scope!r}")
    s = comparison.setup
    if fig is None:
        fig = plt.figure(figsize=(13, 4.5))
    fig.clear()
    ax_loss, ax_share = fig.subplots(1, 2)
    names = list(dict.fromkeys(r.criterion for r in rows))
    for name in names:
        own = sorted((r for r in rows if r.criterion == name), key=lambda r: r.density)
        label = f"lift r={comparison.lift_rank}" if name == "lift" else name
        style = dict(marker="o", linestyle="-" if name not in ("l1_update", "layer") else "--", label=label)
        ax_loss.plot([r.density for r in own], [r.test_loss for r in own], **style)
        ax_share.plot([r.density for r in own], [r.share_needed for r in own], **style)
    ax_loss.axhline(s.full.test_loss, color="black", linewidth=2, label="full fine-tuning")
    ax_loss.axhline(s.start_test_loss, color="gray", linestyle=":", label="start (no training)")
    ax_loss.set(xscale="log", yscale="log", xlabel="budget (share of weight entries)", ylabel="test MSE after training",
                title="Sparse fine-tuning vs full fine-tuning")
    ax_share.axhline(s.chance_share, color="gray", linestyle=":", label="chance (random mask)")
    ax_share.set(xscale="log", ylim=(0, 1.05), xlabel="budget (share of weight entries)",
                 ylabel=f"share of the mask in {s.needed_label}", title=f"Which criteria find {s.needed_label}?")
    budgets = sorted({r.density for r in rows})
    for ax in (ax_loss, ax_share):
        ax.set_xticks(budgets, [f"{d:.0%}" for d in budgets])
        ax.minorticks_off()
    ax_loss.legend(fontsize="small", ncol=2, loc="lower left")
    ax_share.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"Mask criteria on the teacher-student toy {s.config.widths}, top_k {scope}, {s.config.steps} steps")
    fig.tight_layout()
    return fig


def plot_run(row: Row, result: ts.Result, setup: Setup, fig: object = None) -> object:
    """One masked run: its loss curve against full fine-tuning's, and where its mask lies per tensor."""
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(13, 4))
    fig.clear()
    ax_loss, ax_where = fig.subplots(1, 2)
    ax_loss.plot(setup.full.history.task_loss, color="black", label="full fine-tuning")
    ax_loss.plot(result.history.task_loss, label=f"{row.criterion}, {row.density:.0%} {row.scope}")
    ax_loss.set(yscale="log", xlabel="step", ylabel="train MSE", title="Training curves")
    ax_loss.legend()
    keys = list(row.where)
    needed = {ts.label(n) for n, m in setup.needed.items() if m.any()}
    ax_where.bar(keys, [row.where[k] for k in keys], color=["tab:red" if k in needed else "tab:blue" for k in keys])
    ax_where.set(xlabel="tensor (red: needs fine-tuning)", ylabel="entries in the mask",
                 title=f"Where the mask lies ({row.selected} entries)")
    fig.suptitle(f"{row.criterion} at {row.density:.0%} ({row.scope}): test MSE {row.test_loss:.2e} "
                 f"vs full {setup.full.test_loss:.2e}; {row.share_needed:.0%} of the mask in {setup.needed_label}")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# The masked-optimizer pitfall
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PitfallRow:
    """How one way of "training only the mask" treated the entries outside it."""

    method: str
    frozen: int
    moved: int
    max_abs_delta: float
    test_loss: float


def masked_optimizer_pitfall(
    mask: Mask,
    cfg: ts.Config | None = None,
    *,
    weight_decay: float = 0.01,
    progress: bool = True,
) -> list[PitfallRow]:
    """Train the same mask two ways and count the frozen entries that moved anyway.

    1. the naive way: ``torch.optim.AdamW(weight_decay > 0)`` with the gradient zeroed
       outside the mask. Decoupled weight decay (Loshchilov & Hutter 2019) shrinks *every*
       entry by ``lr * weight_decay`` per step whatever its gradient, so every frozen
       nonzero entry drifts toward zero;
    2. ``MaskedAdamW`` with the same mask: the step is written back only where the mask is
       True, so the frozen entries stay bit-identical.

    Both run ``cfg.steps`` full-batch steps at ``cfg.learning_rate`` (constant) on the
    toy's MSE, from the same student.
    """
    cfg = default_config() if cfg is None else cfg
    if not isinstance(cfg, ts.Config):
        raise TypeError(f"cfg must be a toys.teacher_student.Config, got {type(cfg).__name__}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay > 0:
        raise ValueError(f"weight_decay must be > 0 (the pitfall is weight decay), got {weight_decay!r}")
    teacher, start = ts.make_teacher_student(cfg)
    mask = check_mask(named_params(start), mask)
    mask = {n: mask.get(n, torch.ones_like(p, dtype=torch.bool)) for n, p in start.named_parameters()}
    x, y, x_test, y_test = ts.make_data(cfg, teacher)
    rows = []
    for method in ("AdamW, gradient zeroed", "MaskedAdamW"):
        student = copy.deepcopy(start)
        if method == "MaskedAdamW":
            opt = MaskedAdamW(student.named_parameters(), mask=mask, lr=cfg.learning_rate, weight_decay=weight_decay)
        else:
            opt = torch.optim.AdamW(student.parameters(), lr=cfg.learning_rate, weight_decay=weight_decay,
                                    foreach=False)
        for _ in tqdm(range(cfg.steps), desc=method, disable=not progress, leave=False):
            opt.zero_grad(set_to_none=True)
            nn.functional.mse_loss(student(x), y).backward()
            if method != "MaskedAdamW":
                for n, p in student.named_parameters():
                    p.grad.mul_(mask[n])
            opt.step()
        with torch.no_grad():
            frozen_deltas = torch.cat([(p - start.get_parameter(n))[~mask[n]].flatten()
                                       for n, p in student.named_parameters()])
            test_loss = nn.functional.mse_loss(student(x_test), y_test).item()
        rows.append(PitfallRow(
            method=method,
            frozen=frozen_deltas.numel(),
            moved=int((frozen_deltas != 0).sum()),
            max_abs_delta=frozen_deltas.abs().max().item() if frozen_deltas.numel() else 0.0,
            test_loss=test_loss,
        ))
    return rows


def format_pitfall(rows: Sequence[PitfallRow]) -> str:
    """The pitfall's rows as a plain-text table."""
    lines = [f"{'method':<24}{'frozen entries':>15}{'of them moved':>15}{'max |delta|':>13}{'test MSE':>10}"]
    for r in rows:
        lines.append(f"{r.method:<24}{r.frozen:>15}{r.moved:>15}{r.max_abs_delta:>13.2e}{r.test_loss:>10.2e}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Lesson 7: principal weights (LIFT) vs magnitude
# --------------------------------------------------------------------------------------


def rank_label(rank: int | None) -> str:
    """How tables and plots name a rank: the number, or "full" for None."""
    return "full" if rank is None else str(rank)


def lift_scores(model: nn.Module, rank: int | None, names: Iterable[str] | None = None) -> crit.Scores:
    """LIFT's principal-weight scores (Liu et al. 2025): abs of each matrix's rank-r approximation.

    ``rank=None`` uses each matrix's full rank, where the approximation *is* the matrix and
    the scores equal plain magnitude (up to float rounding): LIFT's low-rank step is the
    only thing that separates it from magnitude selection. ``names``: the matrices to
    score (default: every weight matrix).
    """
    _check_rank(rank, allow_full=True)
    params = named_params(model)
    names = eligible(model, INCLUDE) if names is None else list(names)
    unknown = [n for n in names if n not in params or params[n].ndim != 2]
    if unknown:
        raise ValueError(f"names must be 2-D parameters of the model; not: {unknown}")
    too_big = [n for n in names if rank is not None and rank > min(params[n].shape)]
    if too_big:
        raise ValueError(f"rank {rank} exceeds min(m, n) of {too_big}; use rank <= "
                         f"{min(min(params[n].shape) for n in names)} or None for full rank")
    return {
        n: crit.low_rank_approximation(params[n], min(params[n].shape) if rank is None else rank)
        .abs().to(params[n].dtype)
        for n in names
    }


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
    check_density(density)
    _check_choice(scope, SCOPES, "scope")
    magnitude = masks.top_k(model, crit.magnitude(model, INCLUDE), density, scope)
    rows = []
    for rank in ranks:
        lift = masks.top_k(model, lift_scores(model, rank), density, scope)
        o = mask_overlap(lift, magnitude)
        same = all(torch.equal(lift[n], magnitude[n]) for n in lift)
        rows.append(OverlapRow(rank, o.jaccard, o.chance_jaccard, o.a_in_b, same))
    return rows


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
        for name in ("n_source", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")


def default_transfer_config(**overrides: object) -> TransferConfig:
    """Lesson 7's setting; fast mode (``LAB_FAST=1``) trains 250 steps instead of 1,000."""
    base = TransferConfig(steps=250) if fast_mode() else TransferConfig()
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


def finetune(task: TransferTask, mask: Mask | None) -> tuple[float, float, float]:
    """Fine-tune a copy of the pretrained student on the target (MaskedAdamW, cosine lr).

    Returns (target test MSE, source drift = MSE between its source outputs and the
    pretrained ones, L2 norm of the whole parameter update). The pretrained student itself
    is left untouched.
    """
    cfg = task.config
    student = copy.deepcopy(task.student)
    opt = MaskedAdamW(student.named_parameters(), mask=mask, lr=cfg.lr, weight_decay=0.0)
    for t in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * t / cfg.steps))
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(student(task.x_train), task.y_train).backward()
        opt.step()
    with torch.no_grad():
        target = nn.functional.mse_loss(student(task.x_test), task.y_test).item()
        drift = nn.functional.mse_loss(student(task.x_source), task.y_source).item()
        pairs = zip(student.parameters(), task.student.parameters())
        update = math.sqrt(sum(float((p - q).square().sum()) for p, q in pairs))
    return target, drift, update


@dataclass(frozen=True)
class PrincipalRow:
    """One selector in lesson 7's study, averaged over seeds.

    ``selector``: "full FT", "random", "magnitude" or "lift" (then ``rank``; None = full
    rank). ``jaccard_magnitude``: overlap of its mask with magnitude's (1 for magnitude).
    ``target_loss``: target test MSE; ``source_drift``: MSE to the pretrained outputs on the
    source inputs (lower = more retained); ``update_norm``: L2 norm of the whole parameter
    change (how far the fine-tune moved the model), over ``trained`` trainable entries;
    ``*_std``: spread over seeds.
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
        head = (f"{'selector':<14}{'overlap w/ magnitude':>21}{'target MSE':>12}{'source drift':>14}{'|update|':>10}"
                f"{'trained':>9}{'rms step':>10}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.name:<14}{r.jaccard_magnitude:>21.2f}{r.target_loss:>12.2e}{r.source_drift:>14.3f}"
                         f"{r.update_norm:>10.2f}{r.trained:>9}{r.rms_step:>10.3f}")
        lines.append(f"start: target MSE {self.start_target_loss:.3g}; a student that became the teacher would drift "
                     f"{self.teacher_drift:.3f} on the source; budget {self.density:.0%} ({self.scope}), "
                     f"{self.config.steps} steps, mean of {len(self.seeds)} seed(s)")
        return "\n".join(lines)


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
    _check_choice(scope, SCOPES, "scope")
    ranks, seeds = list(ranks), tuple(seeds)
    for r in ranks:
        _check_rank(r, "ranks entry", allow_full=True)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of ints, got {seeds!r}")
    selectors: list[tuple[str, int | None]] = [("full FT", None)] + ([("random", None)] if include_random else [])
    selectors += [("magnitude", None)] + [("lift", r) for r in ranks]
    results: dict[tuple[str, int | None], list[tuple[float, float, float, float]]] = {s: [] for s in selectors}
    trained: dict[tuple[str, int | None], int] = {}
    start, teacher_drift = [], []
    jobs = [(seed, s) for seed in seeds for s in selectors]
    tasks: dict[int, TransferTask] = {}
    for seed, (selector, rank) in tqdm(jobs, desc="selectors x seeds", disable=not progress):
        if seed not in tasks:
            tasks[seed] = task = make_transfer_task(cfg, seed)
            with torch.no_grad():
                start.append(nn.functional.mse_loss(task.student(task.x_test), task.y_test).item())
            teacher_drift.append(task.teacher_drift)
        task = tasks[seed]
        model = task.student
        magnitude = masks.top_k(model, crit.magnitude(model, INCLUDE), density, scope)
        if selector == "full FT":
            mask = None
        elif selector == "random":
            mask = masks.top_k(model, crit.random(model, seed, INCLUDE), density, scope)
        elif selector == "magnitude":
            mask = magnitude
        else:
            mask = masks.top_k(model, lift_scores(model, rank), density, scope)
        jaccard = 1.0 if mask is None else mask_overlap(mask, magnitude).jaccard
        trained[(selector, rank)] = sum(p.numel() for p in model.parameters()) if mask is None else \
            sum(int(m.sum()) for m in mask.values())
        results[(selector, rank)].append((jaccard, *finetune(task, mask)))
    rows = []
    for (selector, rank), values in results.items():
        v = torch.tensor(values, dtype=torch.float64)
        std = v.std(0, correction=0)
        mean = v.mean(0).tolist()
        rows.append(PrincipalRow(selector, rank, mean[0], mean[1], std[1].item(), mean[2], std[2].item(), mean[3],
                                 trained[(selector, rank)]))
    return PrincipalStudy(cfg, density, scope, seeds, rows, sum(start) / len(start),
                          sum(teacher_drift) / len(teacher_drift))


def plot_overlap(rows: Sequence[OverlapRow], density: float, fig: object = None) -> object:
    """Jaccard overlap of LIFT's mask with magnitude's, by rank, against chance."""
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(6.5, 4))
    fig.clear()
    ax = fig.subplots()
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
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(13, 4.2))
    fig.clear()
    ax_target, ax_source = fig.subplots(1, 2)
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


# --------------------------------------------------------------------------------------
# The same comparison on the modular toy: which criterion finds the right module?
# --------------------------------------------------------------------------------------

MODULAR_CRITERIA = ("random", "magnitude", "gradient", "snip", "fisher", "movement", "lift", "update", "module")
"""Criteria of :func:`compare_modular`: the ranking criteria above, ``update`` (abs(delta) of a
full fine-tuning run on the task, the "what did it actually change" mask) and ``module`` (the
ground truth: first-layer weights reading the task's own input group, in random order)."""


@dataclass(frozen=True)
class ModularRow:
    """One criterion at one budget on the modular toy.

    ``target_acc``: test accuracy of the fine-tuned task; ``retained_acc``: mean accuracy of
    the related tasks the trunk was pretrained on (forgetting shows here); ``share_in_module``:
    share of the mask's fc1 entries reading the task's input group (the known module; chance
    = group size / input size); ``fc1_share``: share of the mask in fc1.
    """

    criterion: str
    density: float
    selected: int
    target_acc: float
    retained_acc: float
    share_in_module: float
    fc1_share: float


@dataclass
class ModularComparison:
    """The rows of :func:`compare_modular`, with the pretrained model's and full fine-tuning's scores."""

    task: str
    steps: int
    rows: list[ModularRow]
    chance_share: float
    before_target: float
    before_retained: float
    full_target: float
    full_retained: float

    def table(self) -> str:
        head = (f"{'criterion':<11}{'budget':>7}{'entries':>9}{'target acc':>12}{'retained':>10}"
                f"{'in module':>11}{'in fc1':>8}")
        lines = [head, "-" * len(head),
                 f"{'before FT':<11}{'-':>7}{'-':>9}{self.before_target:>12.3f}{self.before_retained:>10.3f}",
                 f"{'full FT':<11}{'100%':>7}{'all':>9}{self.full_target:>12.3f}{self.full_retained:>10.3f}"]
        for r in self.rows:
            lines.append(f"{r.criterion:<11}{r.density:>7.0%}{r.selected:>9}{r.target_acc:>12.3f}"
                         f"{r.retained_acc:>10.3f}{r.share_in_module:>11.0%}{r.fc1_share:>8.0%}")
        lines.append(f"task {self.task} on a trunk pretrained on the related tasks, {self.steps} steps; budgets are "
                     f"shares of the trunk's weights (+ the task's head); a random mask puts {self.chance_share:.0%} "
                     "of its fc1 entries in the module")
        return "\n".join(lines)


def compare_modular(
    cfg: object = None,
    task: str = "t1",
    criteria: Iterable[str] = MODULAR_CRITERIA,
    densities: Iterable[float] = DENSITIES,
    *,
    lift_rank: int = 4,
    n_batches: int = 4,
    progress: bool = True,
) -> ModularComparison:
    """The criterion comparison on ``toys.modular``: pretrain a trunk on the related tasks, fine-tune on ``task``.

    Each criterion scores the pretrained trunk's weight matrices (gradient criteria on
    ``task``'s cross-entropy over ``n_batches`` training batches); the top ``density`` of them,
    plus ``task``'s own head, are trained with ``modular.train(mask=...)`` (MaskedAdamW). The
    known module is the fc1 columns reading ``task``'s input group: does the criterion find
    it, and does training it learn the task while keeping the related tasks?
    """
    from toys import modular

    cfg = modular.default_config() if cfg is None else cfg
    if not isinstance(cfg, modular.Config):
        raise TypeError(f"cfg must be a toys.modular.Config, got {type(cfg).__name__}")
    criteria, densities = list(criteria), list(densities)
    for c in criteria:
        _check_choice(c, MODULAR_CRITERIA, "criterion")
    for d in densities:
        check_density(d)
    if not (criteria and densities):
        raise ValueError("criteria and densities must each name at least one value")
    _check_rank(lift_rank, "lift_rank")
    world = modular.make_world(cfg)
    _check_choice(task, world.targets, "task")
    pretrained = modular.pretrain(world, progress=progress)
    params = named_params(pretrained)
    trunk = [n for n in pretrained.trunk_names() if params[n].ndim == 2]
    head = {n for n in params if n.startswith(f"heads.{task}.")}
    module = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
    module["fc1.weight"][:, cfg.window(int(task[1:]))] = True

    def loss_fn(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(world.x_train[idx])[task], world.y_train[task][idx])

    def finetune(mask: Mask | None) -> nn.Module:
        model = copy.deepcopy(pretrained)
        modular.train(model, world, [task], steps=cfg.steps, seed=cfg.seed + 3000, mask=mask, progress=False)
        return model

    def scores_of(criterion: str) -> tuple[crit.Scores, Mask | None]:
        if criterion == "lift":
            return lift_scores(pretrained, lift_rank, trunk), None
        if criterion == "update":
            return {n: (full.get_parameter(n) - params[n]).detach().abs() for n in trunk}, None
        if criterion == "module":
            return {n: v for n, v in crit.random(pretrained, 0, INCLUDE).items() if n in trunk}, module
        if criterion in ("random", "magnitude"):
            s = crit.random(pretrained, 0, INCLUDE) if criterion == "random" else crit.magnitude(pretrained, INCLUDE)
        else:
            data = list(torch.arange(n_batches * cfg.batch).remainder(cfg.n_train).chunk(n_batches))
            s = getattr(crit, criterion)(pretrained, loss_fn, data, INCLUDE)
        return {n: v for n, v in s.items() if n in trunk}, None

    def retained(model: nn.Module) -> float:
        return sum(modular.accuracy(model, world, r) for r in world.related) / len(world.related)

    full = finetune(None)
    rows = []
    for c, d in tqdm([(c, d) for d in densities for c in criteria], desc="modular: criteria x budgets",
                     disable=not progress):
        s, support = scores_of(c)
        mask = masks.top_k(pretrained, s, d) if support is None else masks.top_k_within(pretrained, s, support, d)
        mask = {n: m | (n in head) for n, m in mask.items()}
        model = finetune(mask)
        fc1 = mask["fc1.weight"]
        in_trunk = sum(int(mask[n].sum()) for n in trunk)
        rows.append(ModularRow(
            criterion=c,
            density=d,
            selected=in_trunk,
            target_acc=modular.accuracy(model, world, task),
            retained_acc=retained(model),
            share_in_module=int((fc1 & module["fc1.weight"]).sum()) / max(int(fc1.sum()), 1),
            fc1_share=int(fc1.sum()) / max(in_trunk, 1),
        ))
    return ModularComparison(
        task=task, steps=cfg.steps, rows=rows, chance_share=cfg.group_size / cfg.in_dim,
        before_target=modular.accuracy(pretrained, world, task), before_retained=retained(pretrained),
        full_target=modular.accuracy(full, world, task), full_retained=retained(full),
    )


def plot_modular(comparison: ModularComparison, density: float | None = None, fig: object = None) -> object:
    """Two panels at one budget (default: the first): share of fc1 in the module, and target vs retained accuracy."""
    import matplotlib.pyplot as plt

    density = comparison.rows[0].density if density is None else density
    rows = [r for r in comparison.rows if r.density == density]
    if not rows:
        raise ValueError(f"the comparison has no rows at density {density}")
    if fig is None:
        fig = plt.figure(figsize=(13, 4.2))
    fig.clear()
    ax_module, ax_acc = fig.subplots(1, 2)
    names = [r.criterion for r in rows]
    xs = list(range(len(rows)))
    ax_module.bar(names, [r.share_in_module for r in rows], color="tab:purple")
    ax_module.axhline(comparison.chance_share, color="gray", linestyle=":", label="chance")
    ax_module.set(ylim=(0, 1.05), ylabel="share of the mask's fc1 entries in the module",
                  title=f"Which criteria find task {comparison.task}'s module?")
    ax_module.legend()
    ax_acc.bar([x - 0.2 for x in xs], [r.target_acc for r in rows], 0.4, label=f"target ({comparison.task})")
    ax_acc.bar([x + 0.2 for x in xs], [r.retained_acc for r in rows], 0.4, label="retained (related tasks)")
    ax_acc.axhline(comparison.full_target, color="tab:blue", linestyle="--", label="full FT: target")
    ax_acc.axhline(comparison.full_retained, color="tab:orange", linestyle="--", label="full FT: retained")
    ax_acc.set(xticks=xs, xticklabels=names, ylim=(0, 1.05), ylabel="test accuracy", title="Learning vs forgetting")
    ax_acc.legend(fontsize="small")
    for ax in (ax_module, ax_acc):
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"Modular toy: {density:.0%} of the trunk's weights (+ the task's head), {comparison.steps} steps")
    fig.tight_layout()
    return fig
