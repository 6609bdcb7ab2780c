"""Which criterion finds the right *module*? Mask criteria compared on the modular toy.

On the teacher-student toy the weights that need to change are a whole layer
(``toys.teacher_student_criteria``); on the modular toy (``toys.modular``) they are a module:
a trunk pretrained on the *related* tasks already computes every input group's features, so
fine-tuning it on task ``t1`` should need the first-layer weights reading ``t1``'s own input
group. Each criterion scores the pretrained trunk's weight matrices; its top share plus the
task's own head is trained (``MaskedAdamW``). Does the criterion find the module (the share of
the mask's fc1 entries reading the group), and does training the mask learn the task while
keeping the related tasks?

Every criterion of ``sparsity.registry`` runs here by name; two only this toy can define:
``update`` (abs(delta) of a full fine-tuning run on the task: what it actually changed) and
``module`` (the ground truth: the module's entries, in random order).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsity import criteria as crit
from sparsity import registry
from sparsity.registry import Criterion, CriterionInputs, Scores, Selection
from sparsity.sweep import markdown_table
from sparsity.validate import Mask, check_density, check_positive_int, named_params
from toys.criterion_masks import DENSITIES, INCLUDE, check_choice, criterion_mask, resolve
from toys.figures import panels

MODULAR_CRITERIA = ("random", "magnitude", "gradient", "snip", "fisher", "movement", "lift", "update", "module")
"""The criteria compared by default: the registry's ranking criteria, ``update`` and ``module``."""

TOY_CRITERIA = ("update", "module")
"""The criteria only this toy defines (the others resolve through ``sparsity.registry``)."""


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
        """A markdown table: before and full fine-tuning first, then every criterion x budget."""
        header = ["criterion", "budget", "entries", "target acc", "retained", "in module", "in fc1"]
        rows = [["before FT", "-", "-", f"{self.before_target:.3f}", f"{self.before_retained:.3f}", "", ""],
                ["full FT", "100%", "all", f"{self.full_target:.3f}", f"{self.full_retained:.3f}", "", ""]]
        rows += [[r.criterion, f"{r.density:.0%}", r.selected, f"{r.target_acc:.3f}", f"{r.retained_acc:.3f}",
                  f"{r.share_in_module:.0%}", f"{r.fc1_share:.0%}"] for r in self.rows]
        return (markdown_table(header, rows) + f"\n\ntask {self.task} on a trunk pretrained on the related tasks, "
                f"{self.steps} steps; budgets are shares of the trunk's weights (+ the task's head); a random mask "
                f"puts {self.chance_share:.0%} of its fc1 entries in the module")


def _toy_criteria(trunk: list[str], module: Mask, full: nn.Module, pretrained: nn.Module) -> dict[str, Criterion]:
    params = named_params(pretrained)

    def update(model: nn.Module, inputs: CriterionInputs) -> Scores:
        """abs(delta) of the full fine-tuning run on the task."""
        return {n: (full.get_parameter(n) - params[n]).detach().abs() for n in trunk}

    def module_oracle(model: nn.Module, inputs: CriterionInputs) -> Selection:
        """The module's entries (fc1 weights reading the task's group), in random order."""
        return Selection(crit.random(model, inputs.seed, inputs.include), module)

    return {"update": update, "module": module_oracle}


def compare_modular(
    cfg: object = None,
    task: str = "t1",
    criteria: Iterable[str] = MODULAR_CRITERIA,
    densities: Iterable[float] = DENSITIES,
    *,
    lift_rank: int = 4,
    n_batches: int = 4,
    options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> ModularComparison:
    """The criterion comparison on ``toys.modular``: pretrain a trunk on the related tasks, fine-tune on ``task``.

    Each criterion scores the pretrained model's weight matrices (gradient criteria on
    ``task``'s cross-entropy over ``n_batches`` training batches; LIFT at ``lift_rank``, which
    must fit every matrix, heads included; ``options`` add criterion settings); the scores of
    the trunk are cut to the top ``density`` of it, and those entries plus ``task``'s own head
    are trained with ``modular_training.train(mask=...)``.
    """
    from toys import modular_consistency, modular_training, modular_world

    cfg = modular_world.default_config() if cfg is None else cfg
    if not isinstance(cfg, modular_world.Config):
        raise TypeError(f"cfg must be a toys.modular.Config, got {type(cfg).__name__}")
    criteria, densities = list(criteria), list(densities)
    for c in criteria:
        if c not in TOY_CRITERIA:
            resolve(c)
    for d in densities:
        check_density(d)
    if not (criteria and densities):
        raise ValueError("criteria and densities must each name at least one value")
    check_positive_int(lift_rank, "lift_rank")
    check_positive_int(n_batches, "n_batches")
    world = modular_world.make_world(cfg)
    check_choice(task, world.targets, "task")
    pretrained = modular_consistency.pretrain(world, progress=progress)
    params = named_params(pretrained)
    trunk = [n for n in pretrained.trunk_names() if params[n].ndim == 2]
    head = {n for n in params if n.startswith(f"heads.{task}.")}
    module = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
    module["fc1.weight"][:, cfg.window(int(task[1:]))] = True

    def loss_fn(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(world.x_train[idx])[task], world.y_train[task][idx])

    def finetune(mask: Mask | None) -> nn.Module:
        model = copy.deepcopy(pretrained)
        modular_training.train(model, world, [task], steps=cfg.steps, seed=cfg.seed + 3000, mask=mask, progress=False)
        return model

    def retained(model: nn.Module) -> float:
        return sum(modular_training.accuracy(model, world, r) for r in world.related) / len(world.related)

    full = finetune(None)
    local = _toy_criteria(trunk, module, full, pretrained)
    data = list(torch.arange(n_batches * cfg.batch).remainder(cfg.n_train).chunk(n_batches))
    inputs = CriterionInputs(loss_fn=loss_fn, batches=data, include=INCLUDE, seed=0,
                             options={"rank": lift_rank, **(options or {})})

    def trunk_only(criterion: str | Criterion) -> Criterion:
        """The criterion's output on the pretrained model, restricted to the trunk's matrices."""

        def scored(model: nn.Module, inputs: CriterionInputs) -> Scores | Selection:
            out = registry.score(criterion, model, inputs)
            if isinstance(out, Selection):
                return Selection({n: out.scores[n] for n in trunk}, out.support)
            return {n: out[n] for n in trunk}

        return scored

    rows = []
    for c, d in tqdm([(c, d) for d in densities for c in criteria], desc="modular: criteria x budgets",
                     disable=not progress):
        mask = criterion_mask(pretrained, trunk_only(resolve(c, local)), d, "global", inputs)
        mask = {n: m | (n in head) for n, m in mask.items()}
        model = finetune(mask)
        fc1 = mask["fc1.weight"]
        in_trunk = sum(int(mask[n].sum()) for n in trunk)
        rows.append(ModularRow(
            criterion=c,
            density=d,
            selected=in_trunk,
            target_acc=modular_training.accuracy(model, world, task),
            retained_acc=retained(model),
            share_in_module=int((fc1 & module["fc1.weight"]).sum()) / max(int(fc1.sum()), 1),
            fc1_share=int(fc1.sum()) / max(in_trunk, 1),
        ))
    return ModularComparison(
        task=task, steps=cfg.steps, rows=rows, chance_share=cfg.group_size / cfg.in_dim,
        before_target=modular_training.accuracy(pretrained, world, task), before_retained=retained(pretrained),
        full_target=modular_training.accuracy(full, world, task), full_retained=retained(full),
    )


def plot_modular(comparison: ModularComparison, density: float | None = None, fig: object = None) -> object:
    """Two panels at one budget (default: the first): share of fc1 in the module, and target vs retained accuracy."""
    density = comparison.rows[0].density if density is None else density
    rows = [r for r in comparison.rows if r.density == density]
    if not rows:
        raise ValueError(f"the comparison has no rows at density {density}")
    fig, (ax_module, ax_acc) = panels(fig, (13, 4.2), 2)
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
