"""The modular toy's figures: the ablation matrix, consistency across seeds, forgetting against
the target score, the mask learner's curves and a task-score bar chart (for the lesson's widgets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sparsity.ablate import AblationMatrix
from toys.modular_consistency import ARMS, SeedRun
from toys.modular_isolation import WAYS, Isolation
from toys.modular_report import Report


def plot_ablation_matrix(matrix: AblationMatrix, chance: float, ax: object = None, title: str = "") -> object:
    """Heatmap of accuracy (task j | subnetwork i ablated), the unablated row on top, numbers in the cells."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    rows = [matrix.baseline, *matrix.scores]
    image = ax.imshow(rows, vmin=chance, vmax=1.0, cmap="viridis")
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    ax.set_xticks(range(len(matrix.tasks)), matrix.tasks)
    ax.set_yticks(range(len(rows)), ["none", *matrix.subnetworks])
    ax.set(xlabel="task scored", ylabel="subnetwork ablated", title=title or "Accuracy after ablation")
    ax.figure.colorbar(image, ax=ax, label=f"accuracy (chance {chance:.2f})")
    return ax


def plot_consistency(report: Report, fig: object = None) -> object:
    """Modularity per seed in each arm, and the cross-seed mask overlap against its chance level."""
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(11, 4))
    fig.clear()
    ax_mod, ax_overlap = fig.subplots(1, 2)
    for i, arm in enumerate(ARMS):
        values = [r.modularity for r in report.runs[arm]]
        ax_mod.scatter([i] * len(values), values, s=40, label=arm)
    ax_mod.set(xticks=range(len(ARMS)), xticklabels=ARMS, xlim=(-0.5, len(ARMS) - 0.5), ylim=(0, 1.05),
               xlabel="how the seeds' networks differ", ylabel="modularity score",
               title="Modularity of each seed's network")
    if report.overlaps:
        arms = list(report.overlaps)
        width = 0.38
        ax_overlap.bar([i - width / 2 for i in range(len(arms))], [report.overlaps[a].jaccard for a in arms], width,
                       label="measured")
        ax_overlap.bar([i + width / 2 for i in range(len(arms))], [report.overlaps[a].chance for a in arms], width,
                       label="chance (random masks, same densities)")
        ax_overlap.set(xticks=range(len(arms)), xticklabels=arms, xlabel="how the seeds' networks differ",
                       ylabel="Jaccard overlap", title="Same task's subnetwork, across seeds")
        ax_overlap.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def plot_isolation(iso: Isolation, extra: Sequence[tuple[str, float, float]] = (), ax: object = None) -> object:
    """Forgetting of A (accuracy lost) against the target score on B, one point per fine-tuning way.

    ``extra`` adds points (label, B score, A score), e.g. runs from the lesson's widget.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    points = [(w, iso.target[w], iso.retained[w]) for w in WAYS] + list(extra)
    for label, b, a in points:
        ax.scatter(b, iso.a_before - a, s=60)
        ax.annotate(label, (b, iso.a_before - a), textcoords="offset points", xytext=(6, 4), fontsize="small")
    ax.set(xlabel="B accuracy (target)", ylabel="A accuracy lost (forgetting)",
           title=f"Fine-tuning on B after A: forgetting vs target (A was {iso.a_before:.2f})")
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.margins(x=0.25, y=0.1)
    return ax


def plot_mask_learning(run: SeedRun, fig: object = None) -> object:
    """The mask learner's curves for each task of one network: the masked network's task loss and
    the expected share of the trunk kept, step by step (the density is negotiated, not set)."""
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(11, 3.5))
    fig.clear()
    ax_loss, ax_density = fig.subplots(1, 2)
    for task, learned in run.masks.items():
        ax_loss.plot(learned.task_loss, label=task, alpha=0.8)
        ax_density.plot(learned.expected_density, label=f"{task}: ends at {learned.density:.1%}")
    ax_loss.set(yscale="log", xlabel="mask-learning step", ylabel="task loss (masked network)",
                title="Task loss while the mask is learned")
    ax_density.set(xlabel="mask-learning step", ylabel="expected share of trunk kept", title="Mask density")
    ax_loss.legend()
    ax_density.legend()
    fig.tight_layout()
    return fig


def plot_task_scores(scores: Mapping[str, float], chance: float, highlight: str | None = None, ax: object = None,
                     title: str = "") -> object:
    """One bar per task's accuracy (``highlight``'s in red), chance as a dashed line."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    ax.bar(list(scores), list(scores.values()), color=["tab:red" if t == highlight else "tab:blue" for t in scores])
    ax.axhline(chance, color="gray", linestyle="--", label="chance")
    ax.set(ylim=(0, 1), xlabel="task", ylabel="accuracy", title=title or "Accuracy per task")
    ax.legend()
    return ax
