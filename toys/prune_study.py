"""Prune, then recover: every pruning recipe of ``sparsity.prune`` on the classification toy.

A common claim about pruning: fine-tuning the surviving weights with the sparsity pattern
held fixed recovers "95-100% of dense accuracy". This module measures it on
``toys.classification``: train a dense student once, then, at a ladder of sparsities,

* ``one-shot``: magnitude-prune the trained student, no retraining;
* ``one-shot + recovery``: the same, then fine-tune the survivors (pattern fixed);
* ``IMP, rewind``: iterative magnitude pruning, survivors rewound to an early checkpoint
  of the dense run and retrained every round (Frankle et al. 2020);
* ``IMP, no rewind``: iterative pruning, survivors fine-tuned from where they are each
  round (Han et al. 2015);
* ``2:4 + recovery``: N:M structure, 2 of every 4 consecutive inputs kept (sparsity 50%).

The ladder is IMP's own: round r of IMP at ``rate`` sits at sparsity ``1 - (1 - rate)**r``,
so one IMP run gives every rung and all methods are compared at the same sparsities.
Training budgets differ (IMP retrains every round): :func:`format_table` prints them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsity import prune
from sparsity.optim import MaskedAdamW
from sparsity.regularize import snapshot
from sparsity.sweep import markdown_table
from sparsity.validate import Mask, TensorDict, check_positive_int
from toys import classification as tc
from toys.figures import panels
from toys.optimizer_pitfall import PitfallRow, frozen_drift

METHODS = ("one-shot", "one-shot + recovery", "IMP, rewind", "IMP, no rewind", "2:4 + recovery")


@dataclass(frozen=True)
class StudyConfig:
    """The sparsity ladder, IMP's schedule and the recovery budget.

    ``rewind_step``: the early checkpoint IMP rewinds to (a few percent of training, as in
    Frankle et al. 2020). ``recovery_steps`` / ``recovery_lr``: the fine-tuning budget of
    one recovery (one-shot, and each round of IMP without rewinding); None = the world's
    training ``steps`` / ``lr``.
    """

    world: tc.Config = field(default_factory=tc.Config)
    rate: float = 0.5
    rounds: int = 6
    rewind_step: int = 100
    recovery_steps: int | None = None
    recovery_lr: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.rate < 1:
            raise ValueError(f"rate must be in (0, 1), got {self.rate!r}")
        check_positive_int(self.rounds, "rounds")
        if isinstance(self.rewind_step, bool) or not isinstance(self.rewind_step, int) \
                or not 0 <= self.rewind_step <= self.world.steps:
            raise ValueError(f"rewind_step must be an int in [0, world.steps], got {self.rewind_step!r}")

    @property
    def sparsities(self) -> list[float]:
        """The ladder: the sparsity of every IMP round, 1 - (1 - rate)**r for r = 1..rounds."""
        return [1 - (1 - self.rate) ** r for r in range(1, self.rounds + 1)]

    @property
    def recovery(self) -> dict[str, object]:
        """Keyword arguments of ``tc.train`` for one recovery fine-tuning."""
        return {"steps": self.recovery_steps, "lr": self.recovery_lr}


def default_study(*, fast: bool = False, **overrides: object) -> StudyConfig:
    """The full study, or a CI-sized one with ``fast`` (fast mode, passed down by the entry point)."""
    world = tc.default_config(fast=fast)
    base = StudyConfig(world=world, rounds=4, rewind_step=25) if fast else StudyConfig(world=world)
    return replace(base, **overrides)


@dataclass
class Dense:
    """The trained dense student, the world it learned, and the weights IMP may rewind to."""

    world: tc.World
    model: nn.Module
    init: TensorDict
    early: TensorDict
    accuracy: float


def train_dense(study: StudyConfig, progress: bool = True) -> Dense:
    """Train the dense student once; keep its init and its early checkpoint (step ``rewind_step``)."""
    world = tc.make_world(study.world)
    model = tc.make_student(study.world)
    init = snapshot(model)
    early = tc.train(model, world, snapshot_at=study.rewind_step, progress=progress, desc="dense training")
    assert early is not None
    return Dense(world, model, init, early, tc.accuracy(model, world))


def one_shot(dense: Dense, sparsity: float, study: StudyConfig, recover: bool) -> float:
    """Accuracy after one-shot magnitude pruning of the dense student, optionally recovered."""
    model = copy.deepcopy(dense.model)
    keep = prune.prune_(model, sparsity)
    if recover:
        prune.recover(model, keep, tc.trainer(dense.world, **study.recovery))
    return tc.accuracy(model, dense.world)


def two_four(dense: Dense, study: StudyConfig) -> tuple[float, float]:
    """2:4 pruning of the dense student: accuracy right after pruning and after recovery."""
    model = copy.deepcopy(dense.model)
    keep = prune.prune_(model, structure=(2, 4))
    before = tc.accuracy(model, dense.world)
    prune.recover(model, keep, tc.trainer(dense.world, **study.recovery))
    return before, tc.accuracy(model, dense.world)


def regrowth(
    pruned: nn.Module,
    keep: Mask,
    world: tc.World,
    *,
    steps: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    n: int = 256,
    evaluate: Callable[[nn.Module], float] | None = None,
) -> list[PitfallRow]:
    """Does a pruned entry stay zero? Fine-tune a pruned student ``steps`` full-batch steps on its
    first ``n`` training inputs with strong weight decay, with ``MaskedAdamW(mask=keep)`` and with
    a plain ``torch.optim.AdamW``, and count the pruned entries each one moved (regrew).

    The score is ``evaluate(model)`` (default: test accuracy).
    """
    check_positive_int(n, "n")
    x, y = world.x_train[:n], world.y_train[:n]
    ways = {
        "MaskedAdamW(mask=keep)": lambda m: (MaskedAdamW(m.named_parameters(), mask=keep, lr=lr,
                                                         weight_decay=weight_decay), []),
        "torch.optim.AdamW": lambda m: (torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=weight_decay), []),
    }
    return frozen_drift(pruned, keep, ways, lambda m, _: nn.functional.cross_entropy(m(x), y), steps,
                        evaluate=evaluate or (lambda m: tc.accuracy(m, world)))


def imp(dense: Dense, study: StudyConfig, rewind: bool, rate: float | None = None,
        rounds: int | None = None) -> prune.ImpResult:
    """IMP from the trained dense student, rewinding to the early checkpoint or not.

    With rewinding each round retrains for the full ``world.steps`` from the checkpoint;
    without, each round fine-tunes for the recovery budget from the current weights.
    """
    train_fn = tc.trainer(dense.world) if rewind else tc.trainer(dense.world, **study.recovery)
    return prune.iterative_magnitude_pruning(
        copy.deepcopy(dense.model),
        train_fn,
        rounds=study.rounds if rounds is None else rounds,
        rate=study.rate if rate is None else rate,
        rewind_to=dense.early if rewind else None,
        train_first=False,
        evaluate=lambda m: tc.accuracy(m, dense.world),
        progress=False,
    )


def run_method(dense: Dense, method: str, sparsity: float, study: StudyConfig, imp_rounds: int = 3) -> float:
    """Accuracy of one method at one sparsity (the widget's unit of work).

    IMP reaches ``sparsity`` in ``imp_rounds`` rounds (rate = 1 - (1 - sparsity)**(1/rounds));
    ``2:4 + recovery`` ignores ``sparsity`` (it is always 50%).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method in ("one-shot", "one-shot + recovery"):
        return one_shot(dense, sparsity, study, recover=method == "one-shot + recovery")
    if method == "2:4 + recovery":
        return two_four(dense, study)[1]
    if not 0 < sparsity < 1:
        raise ValueError(f"IMP needs a sparsity in (0, 1), got {sparsity!r}")
    rate = 1 - (1 - sparsity) ** (1 / imp_rounds)
    score = imp(dense, study, rewind=method == "IMP, rewind", rate=rate, rounds=imp_rounds).rounds[-1].score
    assert score is not None
    return score


@dataclass
class Study:
    """Accuracy of every method at every sparsity of the ladder, and the dense reference."""

    config: StudyConfig
    dense: float
    chance: float
    accuracy: dict[str, dict[float, float]]
    two_four_one_shot: float

    def ratio(self, method: str, sparsity: float) -> float:
        """Accuracy as a share of dense accuracy: the glossary's "95-100% of dense"."""
        return self.accuracy[method][sparsity] / self.dense

    def highest_sparsity_within(self, method: str, share: float = 0.95) -> float | None:
        """The highest sparsity of the ladder at which ``method`` keeps ``share`` of dense accuracy."""
        ok = [s for s, acc in self.accuracy[method].items() if acc >= share * self.dense]
        return max(ok) if ok else None


def run_study(study: StudyConfig, dense: Dense | None = None, progress: bool = True) -> Study:
    """Every method on the ladder, from one dense run (trained here unless given)."""
    dense = train_dense(study, progress) if dense is None else dense
    ladder = study.sparsities
    accuracy: dict[str, dict[float, float]] = {m: {} for m in METHODS}
    jobs = len(ladder) * 2 + 3
    with tqdm(total=jobs, desc="prune-and-recover study", disable=not progress, leave=False) as bar:
        for s in ladder:
            accuracy["one-shot"][s] = one_shot(dense, s, study, recover=False)
            accuracy["one-shot + recovery"][s] = one_shot(dense, s, study, recover=True)
            bar.update(2)
        for method, rewind in (("IMP, rewind", True), ("IMP, no rewind", False)):
            for record, s in zip(imp(dense, study, rewind).rounds, ladder):
                accuracy[method][s] = record.score  # type: ignore[assignment]
            bar.update(1)
        before, after = two_four(dense, study)
        accuracy["2:4 + recovery"][0.5] = after
        bar.update(1)
    return Study(study, dense.accuracy, dense.world.chance, accuracy, before)


def budgets(study: StudyConfig) -> dict[str, str]:
    """Training steps each method spends after the dense run, to reach the r-th rung."""
    full = study.world.steps
    rec = full if study.recovery_steps is None else study.recovery_steps
    return {
        "one-shot": "0",
        "one-shot + recovery": f"{rec}",
        "IMP, rewind": f"r x {full}",
        "IMP, no rewind": f"r x {rec}",
        "2:4 + recovery": f"{rec}",
    }


def format_table(study: Study) -> str:
    """Markdown table: accuracy (and share of dense) of every method at every sparsity, and the steps it spent."""
    rows = []
    for s in study.config.sparsities:
        cells = [study.accuracy[m].get(s) for m in METHODS]
        rows.append([f"{s:.1%}"] + ["" if a is None else f"{a:.3f} ({a / study.dense:.0%})" for a in cells])
    spent = budgets(study.config)
    rows.append(["training steps"] + [spent[m] for m in METHODS])
    return markdown_table(["sparsity", *METHODS], rows, "r" * (len(METHODS) + 1))


def verdict(study: Study) -> str:
    """The study's answer to the "95-100% of dense" claim, in a few sentences."""
    lines = [f"Dense accuracy {study.dense:.3f} (chance {study.chance:.3f})."]
    for method in ("one-shot", "one-shot + recovery", "IMP, rewind", "IMP, no rewind"):
        best = study.highest_sparsity_within(method)
        where = f"up to {best:.1%} sparsity" if best is not None else "at no sparsity of the ladder"
        lines.append(f"{method}: keeps >= 95% of dense accuracy {where}.")
    tf = study.accuracy["2:4 + recovery"][0.5]
    unstructured = study.accuracy["one-shot + recovery"].get(0.5, float("nan"))
    lines.append(f"2:4: {study.two_four_one_shot:.3f} right after pruning, {tf:.3f} ({tf / study.dense:.0%} of dense) "
                 f"after recovery; unstructured 50% recovers to {unstructured:.3f}.")
    return "\n".join(lines)


def plot_study(study: Study, fig: object = None, highlight: tuple[str, float, float] | None = None) -> object:
    """Accuracy against the share of weights remaining (log scale), one line per method.

    ``highlight=(label, sparsity, accuracy)`` adds one extra point, e.g. a run of the widget.
    """
    fig, ax = panels(fig, (8, 4.8))
    markers = {"one-shot": "x", "one-shot + recovery": "o", "IMP, rewind": "s", "IMP, no rewind": "^"}
    for method, marker in markers.items():
        points = sorted(study.accuracy[method].items())
        ax.plot([100 * (1 - s) for s, _ in points], [a for _, a in points], marker=marker, label=method)
    ax.plot([50], [study.accuracy["2:4 + recovery"][0.5]], "D", color="black", markersize=8, label="2:4 + recovery")
    ax.axhline(study.dense, color="grey", linestyle="-", linewidth=1, label=f"dense ({study.dense:.3f})")
    ax.axhline(0.95 * study.dense, color="grey", linestyle="--", linewidth=1, label="95% of dense")
    ax.axhline(study.chance, color="grey", linestyle=":", linewidth=1, label="chance")
    if highlight is not None:
        label, sparsity, acc = highlight
        ax.plot([100 * (1 - sparsity)], [acc], "*", color="red", markersize=16,
                label=f"{label} at {sparsity:.0%}: {acc:.3f}")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = [100 * (1 - s) for s in study.config.sparsities]
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel="weights remaining (%), log scale", ylabel="test accuracy",
           title=f"Prune, then recover: student {study.config.world.hidden}, {study.config.world.steps} training steps")
    ax.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    return fig
