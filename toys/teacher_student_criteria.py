"""Which weights should a sparse fine-tune train? Mask criteria compared on the teacher-student toy.

The teacher-student toy (``toys.teacher_student``, Liu 2026) knows the answer: the student
copies W1 and W3 from the teacher and has W2 re-drawn, so only W2 *needs* to change. That
makes it a test bench for mask criteria: build a mask on the student at its start with a
criterion, train only the masked entries (``MaskedAdamW``), and ask two questions:

* does the sparse fine-tune reach full fine-tuning's loss? (``Row.test_loss`` vs the full
  run's, and ``Row.recovery``: the share of full fine-tuning's loss reduction it achieves);
* does the criterion *find W2*? (``Row.share_needed``: the share of the mask lying in the
  re-drawn layer's weights, against ``chance_share`` for a random mask).

Every criterion of ``sparsity.registry`` runs here by name (random, magnitude, gradient,
SNIP, Fisher, movement, LIFT, ...), two of them with this toy's own knowledge:

``l1_discovered``  abs(delta) of a run with an L1 penalty toward the start (as a proximal step, so
                   unneeded entries sit exactly at zero), inside the entries it moved: the subnetwork
                   an observed sparse update discovered (``masks.from_update``, ``criteria.update``).
                   The registry's criterion, read from the setup's discovery run (trained once).
``layers``         the re-drawn layer itself (the registry's ``layers``, given "fc2"): an oracle that
                   knows the layer but not which of its entries matter.

Names are the registry's (``sparsity.registry``); the study's former names (``l1_update``,
``layer``) are refused with an error naming the new one (``toys.criterion_masks.RENAMED``).

Selection is ``toys.criterion_masks``'s: ``top_k`` at a density of the weight entries, global or
per tensor; set criteria never spend budget outside their set. Fixed-pattern sparse training
after selection is what RigL (Evci et al. 2020) makes dynamic; here the mask is chosen once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsity import criteria, masks, registry
from sparsity.eligibility import eligible
from sparsity.metrics import mask_overlap
from sparsity.registry import Criterion, CriterionInputs, Selection
from sparsity.sweep import markdown_table
from sparsity.train import cosine, fit
from sparsity.validate import Mask, check_density, check_positive_int
from toys import teacher_student as ts
from toys.criterion_masks import DENSITIES, INCLUDE, SCOPES, check_choice, criterion_mask, resolve, selected, \
    weight_count
from toys.figures import panels

CRITERIA = ("random", "magnitude", "gradient", "snip", "fisher", "movement", "lift", "l1_discovered", "layers")
"""The criteria compared by default, in the order tables list them (any registered name also runs)."""

SET_CRITERIA = ("l1_discovered", "layers")
"""The criteria of :data:`CRITERIA` that name a set (drawn dashed): they need the toy's knowledge or a run."""

L1_MIN_STEPS = 600
"""The L1 discovery run trains at least this long: shorter, part of Adam's early transient (W1 and
W3 entries moved before the penalty pulls them back) is still in its support."""


def default_config(*, fast: bool = False, **overrides: object) -> ts.Config:
    """The toy config of the comparison: plain MSE (lam = 0), fewer steps with ``fast`` (fast mode, passed
    down by the entry point).

    Full mode trains 3,000 steps (every masked run has flattened by then); fast mode 300,
    enough for the criteria's ranking at 5% to show but not for full convergence.
    """
    base = ts.default_config(fast=fast, lam=0.0, steps=300 if fast else 3000)
    return replace(base, **overrides)


def redrawn_layers(cfg: ts.Config) -> list[str]:
    """Module names of the layers the student re-draws (the ones that need fine-tuning): ["fc2"] by default."""
    return [f"fc{i}" for i in range(1, len(cfg.widths)) if i not in cfg.copy_layers]


# --------------------------------------------------------------------------------------
# The setting every criterion shares, built once
# --------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What every criterion needs, computed once: the student at its start, data, the reference runs.

    ``full`` is full fine-tuning (every parameter, lam = 0): the bar to match. ``l1`` is the
    discovery run (L1 toward the start as a proximal step) whose update ``l1_discovered`` reads.
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
        return selected(self.needed)

    @property
    def chance_share(self) -> float:
        """Share of the needed weights among all weights: what a random mask puts there."""
        return self.needed_count / self.n_weights

    def train_on_task(self, model: nn.Module, optimizer: torch.optim.Optimizer, hooks: list[Any]) -> None:
        """Full-batch MSE on the teacher's data for the discovery run's steps, cosine lr: the
        training run of criteria that learn their set (``inputs.train`` of ``l1_discovered``)."""
        x, y, _, _ = ts.make_data(self.config, self.teacher)
        cfg = self.l1.config
        fit(model, optimizer, lambda m, _: nn.functional.mse_loss(m(x), y), cfg.steps,
            schedule=cosine(cfg.learning_rate, cfg.steps), hooks=hooks)


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
    check_positive_int(n_batches, "n_batches")
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


def toy_criteria(setup: Setup) -> dict[str, Criterion]:
    """This toy's own reading of a registry criterion: ``l1_discovered`` from the setup's discovery run
    (already trained; ``layers`` needs no override: :func:`criterion_inputs` names the re-drawn layers)."""

    def l1_discovered(model: nn.Module, inputs: CriterionInputs) -> Selection:
        """abs(delta) of the L1 discovery run, inside the entries it moved by more than ``l1_tol``."""
        run = setup.l1
        support = masks.from_update(run.student, run.init, setup.l1_tol, include=inputs.include)
        return Selection(criteria.update(run.student, run.init, include=inputs.include), support)

    return {"l1_discovered": l1_discovered}


def criterion_inputs(setup: Setup, *, lift_rank: int = 4, seed: int = 0,
                     options: Mapping[str, Any] | None = None) -> CriterionInputs:
    """What a criterion may read on this toy: the MSE on the training batches, the LIFT rank, the
    layers that need to change, the L1 run's settings and training loop; ``options`` add or override."""
    defaults = {"rank": lift_rank, "layers": redrawn_layers(setup.config), "lam": setup.l1.config.lam,
                "lr": setup.config.learning_rate}
    return CriterionInputs(loss_fn=ts.mse_loss, batches=setup.batches, include=INCLUDE, seed=seed,
                           options={**defaults, **(options or {})}, train=setup.train_on_task)


def select(
    setup: Setup,
    criterion: str,
    density: float,
    scope: str = "global",
    *,
    lift_rank: int = 4,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
) -> Mask:
    """The mask a criterion picks on the student at its start: top ``density`` of the weight entries.

    A set criterion ranks its set first and is then cut to it, so it never spends budget
    outside the set (its mask may be smaller than the budget).
    """
    check_density(density)
    check_choice(scope, SCOPES, "scope")
    inputs = criterion_inputs(setup, lift_rank=lift_rank, seed=seed, options=options)
    return criterion_mask(setup.student, resolve(criterion, toy_criteria(setup)), density, scope, inputs)


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


def evaluate(setup: Setup, criterion: str, density: float, scope: str = "global", *, progress: bool = False,
             **choice: Any) -> tuple[Row, ts.Result]:
    """Select with a criterion (``choice``: :func:`select`'s ``lift_rank``, ``seed``, ``options``), train
    only the mask (``ts.train(cfg, mask=...)``), and measure."""
    mask = select(setup, criterion, density, scope, **choice)
    result = ts.train(setup.config, progress=progress, mask=mask)
    overlap = mask_overlap(mask, setup.needed)
    count = selected(mask)
    gain_full = setup.start_test_loss - setup.full.test_loss
    row = Row(
        criterion=criterion,
        scope=scope,
        density=density,
        selected=count,
        actual_density=count / setup.n_weights,
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

    def name(self, criterion: str) -> str:
        """How tables and plots name a criterion: the registry's label ("LIFT r=4" for LIFT, with its rank)."""
        label = registry.CRITERIA[criterion].label if criterion in registry.CRITERIA else criterion
        return f"{label} r={self.lift_rank}" if criterion == "lift" else label

    def table(self) -> str:
        """A markdown table: one line per criterion x budget x scope, full fine-tuning first."""
        s = self.setup
        need = s.needed_label
        header = ["criterion", "scope", "budget", "actual", "train MSE", "test MSE", "x full", "recovery",
                  f"in {need}", f"covers {need}"]
        lines = [["full FT", "-", "100%", "100%", f"{s.full.final_loss:.2e}", f"{s.full.test_loss:.2e}", "1.0",
                  "1.00", f"{s.chance_share:.0%}", "100%"]]
        lines += [[self.name(r.criterion), r.scope, f"{r.density:.0%}", f"{r.actual_density:.1%}",
                   f"{r.train_loss:.2e}", f"{r.test_loss:.2e}", f"{r.test_loss / s.full.test_loss:.1f}",
                   f"{r.recovery:.2f}", f"{r.share_needed:.0%}", f"{r.needed_coverage:.0%}"] for r in self.rows]
        note = (f"start: test MSE {s.start_test_loss:.3g}; a random mask puts {s.chance_share:.0%} of itself "
                f"in {need}; {s.config.steps} steps each")
        return markdown_table(header, lines, "ll" + "r" * 8) + "\n\n" + note


def compare(
    setup: Setup | None = None,
    criteria: Iterable[str] = CRITERIA,
    densities: Iterable[float] = DENSITIES,
    scopes: Iterable[str] = ("global",),
    *,
    lift_rank: int = 4,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Comparison:
    """Every criterion x density x scope: build the mask at the start, train it, measure (one run each).

    ``criteria`` may name any criterion of ``sparsity.registry`` besides this toy's own;
    ``options`` are passed to them (see :func:`criterion_inputs`).
    """
    setup = prepare(progress=progress) if setup is None else setup
    if not isinstance(setup, Setup):
        raise TypeError(f"setup must come from prepare(), got {type(setup).__name__}")
    criteria, densities, scopes = list(criteria), list(densities), list(scopes)
    local = toy_criteria(setup)
    for c in criteria:
        resolve(c, local)
    for d in densities:
        check_density(d)
    for sc in scopes:
        check_choice(sc, SCOPES, "scope")
    if not (criteria and densities and scopes):
        raise ValueError("criteria, densities and scopes must each name at least one value")
    check_positive_int(lift_rank, "lift_rank")
    jobs = [(c, d, sc) for sc in scopes for d in densities for c in criteria]
    rows = [evaluate(setup, c, d, sc, lift_rank=lift_rank, seed=seed, options=options)[0]
            for c, d, sc in tqdm(jobs, desc="criteria x budgets", disable=not progress)]
    return Comparison(setup=setup, rows=rows, lift_rank=lift_rank)


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def plot_comparison(comparison: Comparison, scope: str = "global", fig: object = None) -> object:
    """Two panels over the budget: test MSE per criterion (full FT as a line), and the share in W2."""
    rows = [r for r in comparison.rows if r.scope == scope]
    if not rows:
        raise ValueError(f"the comparison has no rows with scope={scope!r}")
    s = comparison.setup
    fig, (ax_loss, ax_share) = panels(fig, (13, 4.5), 2)
    for name in dict.fromkeys(r.criterion for r in rows):
        own = sorted((r for r in rows if r.criterion == name), key=lambda r: r.density)
        style = dict(marker="o", linestyle="-" if name not in SET_CRITERIA else "--",
                     label=comparison.name(name))
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


def plot_scopes(global_rows: Comparison, per_tensor: Comparison, density: float, fig: object = None) -> object:
    """The same criteria at one budget with a global and a per-tensor budget: share in W2 and test MSE."""
    pairs = [(global_rows.get(r.criterion, density), r) for r in per_tensor.rows if r.density == density]
    if not pairs:
        raise ValueError(f"the per-tensor comparison has no rows at density {density}")
    fig, (ax_share, ax_loss) = panels(fig, (12, 3.8), 2)
    xs = list(range(len(pairs)))
    need = global_rows.setup.needed_label
    for ax, attr, ylabel in [(ax_share, "share_needed", f"share of the mask in {need}"),
                             (ax_loss, "test_loss", "test MSE")]:
        ax.bar([x - 0.2 for x in xs], [getattr(g, attr) for g, _ in pairs], 0.4, label="global")
        ax.bar([x + 0.2 for x in xs], [getattr(r, attr) for _, r in pairs], 0.4, label="per tensor")
        ax.set(xticks=xs, xticklabels=[r.criterion for _, r in pairs], ylabel=ylabel,
               title=f"{ylabel} at {density:.0%}: global vs per-tensor budget")
        ax.tick_params(axis="x", rotation=30)
        ax.legend()
    ax_share.axhline(global_rows.setup.chance_share, color="gray", linestyle=":")
    ax_loss.set_yscale("log")
    fig.tight_layout()
    return fig


def plot_run(row: Row, result: ts.Result, setup: Setup, fig: object = None) -> object:
    """One masked run: its loss curve against full fine-tuning's, and where its mask lies per tensor."""
    fig, (ax_loss, ax_where) = panels(fig, (13, 4), 2)
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
