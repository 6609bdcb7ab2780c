"""What does 2:4 cost in accuracy, and how much does fine-tuning with the pattern fixed win back?

2:4 sparsity (``sparsity.two_four``) keeps 2 of every 4 consecutive inputs of each
row: 50% sparse, in a pattern sparse tensor cores can skip. Unstructured pruning at the
same 50% may keep any half, so 2:4 can only cost more. This study measures how much on
``toys.classification``: train a dense student (the "pretrained" model), then give every
method the **same number of fine-tuning steps** (same optimizer, schedule and batches):

* ``dense + fine-tuning``: all weights keep training (the full fine-tuning baseline);
* ``2:4 one-shot``: ``sparsify_24`` of the chosen layers, no training (the kept 2 of every 4
  chosen by any criterion of ``sparsity.registry``; magnitude by default);
* ``2:4 + fine-tuning``: then train the kept weights only (``MaskedAdamW`` on
  ``keep_mask``; the pattern is preserved exactly and checked);
* ``unstructured 50% one-shot`` / ``+ fine-tuning``: magnitude pruning of the same
  layers at 50% per tensor (any half of each matrix), then the same fine-tuning.

Several student seeds (same world) give a spread. :func:`run_gpt_study` runs the same
comparison on a pretrained ``scaleup.gpt`` model fine-tuned on a target task (target
accuracy and source retention). CLI: ``python -m toys.two_four_study [--gpt] [--json]``
(``LAB_FAST=1`` for a CI-sized run).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsity import prune, registry, two_four_convert
from sparsity.cli_args import positive_int, random_seed
from sparsity.fastmode import fast_mode
from sparsity.optim import MaskedAdamW
from sparsity.registry import CriterionInputs
from sparsity.sweep import markdown_table, mean_spread
from sparsity.threads import use_threads
from sparsity.train import fit
from sparsity.validate import check_positive_int
from toys import classification as tc

METHODS = (
    "dense",
    "dense + fine-tuning",
    "2:4 one-shot",
    "2:4 + fine-tuning",
    "unstructured 50% one-shot",
    "unstructured 50% + fine-tuning",
)
CALIBRATION_BATCHES = 4
"""Batches of the fine-tuning data a criterion that needs gradients (Fisher, SNIP ...) scores with."""


@dataclass(frozen=True)
class StudyConfig:
    """The world, which layers become 2:4 and how they are chosen, the fine-tuning budget, the seeds.

    ``modules``: names of the student's linears to sparsify (None = all of them).
    ``criterion`` (a name of ``sparsity.registry``) scores the 2:4 selection only; the
    unstructured baseline is always magnitude.
    ``finetune_steps`` / ``finetune_lr``: the budget every method gets after the dense
    training (None = the world's ``steps`` / ``lr``).
    """

    world: tc.Config = field(default_factory=tc.Config)
    modules: tuple[str, ...] | None = None
    criterion: str = "magnitude"
    finetune_steps: int | None = None
    finetune_lr: float | None = None
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        if not isinstance(self.criterion, str):
            raise ValueError(f"criterion must be the name of a registered criterion, got {self.criterion!r}")
        registry.get_criterion(self.criterion)
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty tuple of ints, got {self.seeds!r}")
        if self.modules is not None and (not self.modules or not all(isinstance(m, str) for m in self.modules)):
            raise ValueError(f"modules must be None or a non-empty tuple of layer names, got {self.modules!r}")
        if self.finetune_steps is not None:
            check_positive_int(self.finetune_steps, "finetune_steps")

    @property
    def finetuning(self) -> dict[str, object]:
        """Keyword arguments of ``tc.train`` for one fine-tuning run."""
        return {"steps": self.finetune_steps, "lr": self.finetune_lr}


def default_study(*, fast: bool = False, **overrides: object) -> StudyConfig:
    """The full study (3 seeds), or a CI-sized one with ``fast`` (fast mode, passed down by the entry point): 1 seed."""
    base = StudyConfig(world=tc.default_config(fast=fast), seeds=(0,) if fast else (0, 1, 2))
    return replace(base, **overrides)


def linear_names(model: nn.Module) -> list[str]:
    """Names of the student's linear layers (what ``modules`` may choose from)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def unstructured_keep(model: nn.Module, modules: list[str]) -> dict[str, torch.Tensor]:
    """Keep-mask of magnitude pruning at 50% per tensor on the weights of ``modules`` only."""
    keep = prune.magnitude_prune(model, 0.5, scope="per_tensor")
    chosen = {f"{m}.weight" for m in modules}
    return {n: k if n in chosen else torch.ones_like(k) for n, k in keep.items()}


def train_dense(world: tc.World, seed: int, progress: bool = False) -> nn.Module:
    """The "pretrained" model: the dense student of ``seed`` trained on the world."""
    dense = tc.make_student(world.config, seed)
    tc.train(dense, world, seed=seed, progress=progress, desc=f"dense training (seed {seed})")
    return dense


def compare(dense: nn.Module, train_fn: prune.TrainFn, evaluate: Callable[[nn.Module], object],
            modules: list[str] | None = None, criterion: str = "magnitude",
            inputs: CriterionInputs | None = None) -> dict[str, object]:
    """Every method of :data:`METHODS` on copies of a trained ``dense`` model, scored by ``evaluate``.

    ``train_fn(model, keep)`` is the same fine-tuning for every method (an optimizer on the
    keep-mask); ``modules``: the linears to sparsify (None = all); ``criterion`` and
    ``inputs`` choose the kept 2 of every 4 (see ``two_four_convert.sparsify_24``). Any model works: the
    toy's MLP, a GPT.
    """
    scores = {"dense": evaluate(dense)}
    full = copy.deepcopy(dense)
    train_fn(full, {n: torch.ones_like(p, dtype=torch.bool) for n, p in full.named_parameters()})
    scores["dense + fine-tuning"] = evaluate(full)

    two_four = two_four_convert.sparsify_24(copy.deepcopy(dense), criterion=criterion, modules=modules, inputs=inputs)
    scores["2:4 one-shot"] = evaluate(two_four)
    prune.recover(two_four, two_four_convert.keep_mask(two_four), train_fn)
    two_four_convert.check_pattern(two_four)
    scores["2:4 + fine-tuning"] = evaluate(two_four)

    unstructured = copy.deepcopy(dense)
    keep = unstructured_keep(unstructured, list(two_four_convert.two_four_layers(two_four)))
    prune.apply_mask_(unstructured, keep)
    scores["unstructured 50% one-shot"] = evaluate(unstructured)
    prune.recover(unstructured, keep, train_fn)
    scores["unstructured 50% + fine-tuning"] = evaluate(unstructured)
    return scores


def _cross_entropy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def criterion_inputs(world: tc.World) -> CriterionInputs:
    """What a criterion may score the dense student with: the training loss on
    :data:`CALIBRATION_BATCHES` consecutive batches of the training set, wrapping around a
    small one (criteria without data ignore it)."""
    b, n = world.config.batch, world.config.n_train
    rows = [torch.arange(i * b, (i + 1) * b) % n for i in range(CALIBRATION_BATCHES)]
    return CriterionInputs(loss_fn=_cross_entropy, batches=[(world.x_train[r], world.y_train[r]) for r in rows])


def run_seed(world: tc.World, study: StudyConfig, seed: int, dense: nn.Module | None = None,
             progress: bool = False) -> dict[str, float]:
    """Every method's test accuracy for one student seed (``dense``: its trained student, if at hand)."""
    dense = train_dense(world, seed, progress) if dense is None else dense
    train_fn = tc.trainer(world, seed=seed + 1000, **study.finetuning)
    modules = None if study.modules is None else list(study.modules)
    return compare(dense, train_fn, lambda m: tc.accuracy(m, world), modules, study.criterion,  # type: ignore[return-value]
                   criterion_inputs(world))


@dataclass
class Study:
    """Accuracy of every method for every seed, and the world's chance level."""

    config: StudyConfig
    chance: float
    per_seed: dict[int, dict[str, float]]
    layers: list[str]

    def mean(self, method: str) -> float:
        """Mean accuracy over seeds."""
        return mean_spread([acc[method] for acc in self.per_seed.values()])[0]

    def spread(self, method: str) -> float:
        """Sample standard deviation over seeds (0 with one seed)."""
        return mean_spread([acc[method] for acc in self.per_seed.values()])[1]

    def recovered(self, method: str = "2:4") -> float:
        """Share of the one-shot loss that fine-tuning won back, against dense fine-tuning at the same steps."""
        one_shot, tuned = self.mean(f"{method} one-shot"), self.mean(f"{method} + fine-tuning")
        gap = self.mean("dense + fine-tuning") - one_shot
        return (tuned - one_shot) / gap if gap > 0 else 1.0

    def summary(self) -> dict[str, object]:
        """The JSON-able numbers (what the CLI prints with --json)."""
        return {
            "config": {**asdict(self.config), "world": asdict(self.config.world)},
            "layers": self.layers,
            "chance": self.chance,
            "mean": {m: self.mean(m) for m in METHODS},
            "std": {m: self.spread(m) for m in METHODS},
            "per_seed": {str(s): acc for s, acc in self.per_seed.items()},
            "recovered_share": {"2:4": self.recovered("2:4"), "unstructured 50%": self.recovered("unstructured 50%")},
        }


def run_study(study: StudyConfig, world: tc.World | None = None, dense: dict[int, nn.Module] | None = None,
              progress: bool = True) -> Study:
    """Every method for every seed on one world (made here unless given; ``dense``: trained students by seed)."""
    world = tc.make_world(study.world) if world is None else world
    dense = dense or {}
    per_seed = {}
    for seed in tqdm(study.seeds, desc="2:4 study (seeds)", disable=not progress, leave=False):
        per_seed[seed] = run_seed(world, study, seed, dense.get(seed))
    layers = study.modules or tuple(linear_names(tc.make_student(study.world)))
    return Study(study, world.chance, per_seed, list(layers))


def format_table(study: Study) -> str:
    """Markdown table: mean (std) accuracy and share of dense fine-tuning, per method."""
    steps = study.config.finetune_steps or study.config.world.steps
    reference = study.mean("dense + fine-tuning")
    header = [f"method ({len(study.per_seed)} seeds, {steps} fine-tuning steps)", "test accuracy", "vs dense FT"]
    return markdown_table(header, [[m, f"{study.mean(m):.4f} +- {study.spread(m):.4f}", f"{study.mean(m) / reference:.1%}"]
                                   for m in METHODS])


def format_comparison(studies: dict[str, Study]) -> str:
    """Markdown table: mean +- std accuracy of every method (rows) in each study (columns, by label)."""
    rows = [[m, *(f"{s.mean(m):.3f} +- {s.spread(m):.3f}" for s in studies.values())] for m in METHODS]
    return markdown_table(["method", *studies], rows)


def one_shot_by_layer(dense: nn.Module, evaluate: Callable[[nn.Module], float], criterion: str = "magnitude",
                      inputs: CriterionInputs | None = None) -> dict[str, float]:
    """One-shot 2:4 on one linear at a time, no fine-tuning: which layers pay for the pattern."""
    return {name: evaluate(two_four_convert.sparsify_24(copy.deepcopy(dense), criterion, modules=name, inputs=inputs))
            for name in linear_names(dense)}


def plot_by_layer(by_layer: dict[str, float], dense: float, fig: object = None) -> object:
    """Bars: the score after one-shot 2:4 on each single layer, the dense model's score marked."""
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(6, 3))
    fig.clear()
    ax = fig.subplots()
    names = list(by_layer)
    ax.bar(names, [by_layer[n] for n in names], color="tab:orange")
    ax.axhline(dense, color="black", linestyle="--", label="dense")
    ax.set(ylabel="test accuracy", title="one-shot 2:4 on a single layer (no fine-tuning)",
           ylim=(max(0.0, min(by_layer.values()) - 0.1), 1.0))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over one
    fig.tight_layout()
    return fig


def verdict(study: Study) -> str:
    """The measured answer in two sentences."""
    return (
        f"2:4 on {', '.join(study.layers)}: one-shot {study.mean('2:4 one-shot'):.3f}, after fine-tuning "
        f"{study.mean('2:4 + fine-tuning'):.3f} vs dense fine-tuning {study.mean('dense + fine-tuning'):.3f} "
        f"({study.recovered('2:4'):.0%} of the one-shot loss won back). Unstructured 50%: one-shot "
        f"{study.mean('unstructured 50% one-shot'):.3f}, fine-tuned {study.mean('unstructured 50% + fine-tuning'):.3f}."
    )


def plot_study(study: Study, fig: object = None) -> object:
    """Bars: mean accuracy per method with the seed spread, dense fine-tuning and chance marked."""
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(10, 4.5))
    fig.clear()
    ax = fig.subplots()
    colors = ["grey", "black", "tab:orange", "tab:red", "tab:cyan", "tab:blue"]
    means = [study.mean(m) for m in METHODS]
    ax.bar(range(len(METHODS)), means, yerr=[study.spread(m) for m in METHODS], color=colors, capsize=4)
    for i, v in enumerate(means):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize="small")
    ax.axhline(study.mean("dense + fine-tuning"), color="black", linestyle="--", linewidth=1)
    ax.axhline(study.chance, color="grey", linestyle=":", linewidth=1, label=f"chance ({study.chance:.3f})")
    low = min(min(means), study.chance) - 0.05
    ax.set(ylim=(max(0.0, low), 1.06), ylabel="test accuracy", xticks=range(len(METHODS)),
           title=f"2:4 vs unstructured 50% on {', '.join(study.layers)} (same fine-tuning steps)")
    ax.set_xticklabels([m.replace(" + ", "\n+ ").replace("50% ", "50%\n") for m in METHODS], fontsize="small")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over one
    fig.tight_layout()
    return fig


# --- the same comparison on a pretrained GPT (scaleup) -----------------------------------


@dataclass(frozen=True)
class GptStudyConfig:
    """A pretrained ``scaleup.gpt`` preset fine-tuned on one target task by every method.

    ``modules``: glob patterns of the linears made 2:4 (default: every block matrix; the
    tied output head is the embedding and stays dense). ``pretrain_steps``: None = the
    lab's pretraining run of the preset (cached by ``scaleup.pretrain``).
    """

    preset: str = "tiny"
    target: str = "sort"
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    modules: tuple[str, ...] = ("blocks.*",)
    criterion: str = "magnitude"
    pretrain_steps: int | None = None
    seed: int = 0


def default_gpt_study(*, fast: bool = False, **overrides: object) -> GptStudyConfig:
    """The tiny GPT, 1,500 fine-tuning steps on ``sort``; ``fast``: 30 steps after 300 of pretraining (the
    fast length of ``scaleup.pretrain.default_config``)."""
    small = GptStudyConfig(steps=30, pretrain_steps=pretrain_steps_fast()) if fast else GptStudyConfig()
    return replace(small, **overrides)


def pretrain_steps_fast() -> int:
    """The pretraining length of the lab's fast mode (``scaleup.pretrain.default_config(fast=True)``)."""
    from scaleup import pretrain

    return pretrain.default_config(fast=True).steps


def run_gpt_study(cfg: GptStudyConfig, cache_dir: str | None = None, progress: bool = True) -> dict[str, object]:
    """Target accuracy and source retention of every method on the pretrained GPT (one seed)."""
    from scaleup import pretrain
    from scaleup import tasks as tk

    overrides = {} if cfg.pretrain_steps is None else {"steps": cfg.pretrain_steps}
    pcfg = pretrain.default_config(cfg.preset, **overrides)
    base = pretrain.pretrained(pcfg, cache_dir=cache_dir, progress=progress)
    world = tk.World(pcfg.world)

    def batch(step: int) -> tk.Batch:
        return world.train_batch(cfg.target, step, cfg.batch_size, cfg.seed)

    def train_fn(model: nn.Module, keep: dict[str, torch.Tensor]) -> None:
        opt = MaskedAdamW(model.named_parameters(), mask=keep, lr=cfg.lr, weight_decay=0.0)
        model.train()
        fit(model, opt, tk.loss, cfg.steps, batches=batch, progress=progress, desc=f"fine-tuning on {cfg.target}")
        model.eval()

    def evaluate(model: nn.Module) -> dict[str, float]:
        return {"target": tk.accuracy(model, world, cfg.target), "retention": tk.retention(model, world)}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inputs = CriterionInputs(loss_fn=tk.loss, batches=[batch(step) for step in range(CALIBRATION_BATCHES)])
        scores = compare(base, train_fn, evaluate, list(cfg.modules), cfg.criterion, inputs)
    finally:
        torch.set_num_threads(threads)
    layers = sorted(two_four_convert.two_four_layers(two_four_convert.sparsify_24(copy.deepcopy(base), modules=list(cfg.modules))))
    return {"config": asdict(cfg), "pretrain_steps": pcfg.steps, "layers": layers, "scores": scores}


def format_gpt_table(result: dict[str, object]) -> str:
    """Markdown table: target accuracy and source retention per method."""
    cfg = result["config"]
    header = [f"method ({cfg['preset']} GPT, target {cfg['target']}, {cfg['steps']} steps)", "target accuracy",
              "source retention"]
    scores = result["scores"]
    return markdown_table(header, [[m, f"{scores[m]['target']:.3f}", f"{scores[m]['retention']:.3f}"]  # type: ignore[index]
                                   for m in METHODS])


def main(argv: list[str] | None = None) -> int:
    fast = fast_mode()
    base = default_study(fast=fast)
    parser = argparse.ArgumentParser(prog="python -m toys.two_four_study",
                                     description="2:4 pruning: one-shot cost and fixed-pattern fine-tuning recovery")
    parser.add_argument("--modules", nargs="+", default=None, help="linears to sparsify (default: all)")
    parser.add_argument("--criterion", choices=sorted(registry.CRITERIA), default=base.criterion,
                        help="what keeps 2 of every 4 inputs (default: %(default)s)")
    parser.add_argument("--finetune-steps", type=positive_int, default=None, help="default: the dense training steps")
    parser.add_argument("--seeds", type=random_seed, nargs="+", default=list(base.seeds),
                        help="the seeds to run (default: %(default)s)")
    parser.add_argument("--gpt", action="store_true", help="also run the comparison on the pretrained tiny GPT")
    parser.add_argument("--gpt-target", default=None, help="the GPT's fine-tuning task (default: sort)")
    parser.add_argument("--gpt-steps", type=positive_int, default=None, help="the GPT's fine-tuning steps (default: 1500)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    use_threads()
    try:
        study = replace(base, modules=None if args.modules is None else tuple(args.modules), criterion=args.criterion,
                        finetune_steps=args.finetune_steps, seeds=tuple(args.seeds))
    except ValueError as err:
        parser.error(str(err))
    result = run_study(study, progress=not args.no_progress)
    gpt_overrides = {k: v for k, v in (("target", args.gpt_target), ("steps", args.gpt_steps)) if v is not None}
    gpt = run_gpt_study(default_gpt_study(fast=fast, **gpt_overrides), progress=not args.no_progress) if args.gpt else None
    if args.json:
        json.dump({**result.summary(), **({"gpt": gpt} if gpt else {})}, sys.stdout, indent=2)
        print()
    else:
        print(format_table(result))
        print(verdict(result))
        if gpt:
            print(format_gpt_table(gpt))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
