"""The RL update-sparsity study across model sizes: does GRPO's update sparsity move as the GPT grows?

Mukherjee et al. 2025 measured 70-95% of entries unchanged after RL fine-tuning of large models;
the lab's study (``scaleup.rl_study``) tested it on the tiny GPT only, where "sparse while
learning" did not hold. The bridge to the paper's sizes is a trend. Per GPT preset (micro, tiny,
small) this makes ``theta_0`` (``rl_study.start_model``: pretrained, then the SFT warm-up) and runs
GRPO with float32 and with bf16 weight storage over a learning-rate sweep, each run measured by
``rl_study.run_one``. Each float32 run also gives the half-ulp predictors of its bf16 twin
(``rl_study.half_ulp_predictors``). The per-size verdicts are ``rl_study.verdicts`` on each size's runs.

Rounding suggests the axis to compare sizes on: a step moves a bf16 weight only if it reaches half
an ulp of the weight, so the x of the figure is the learning rate divided by the median half bf16
ulp of ``|theta_0|`` over the transformer blocks' weight matrices (Adam's early steps are about the
learning rate).

Every finished run is one cell of a :class:`sparsity.sweep.SweepStore` (key preset|weights|lr|seed),
so a killed study resumes; the JSON, markdown and figure are rebuilt from the store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from scaleup import grpo, rl, rl_study
from scaleup import tasks as tk
from scaleup.rl_measure import snapshot
from sparsity import metrics
from sparsity.cli_args import finite_list, json_ready, output_folder, random_seed
from sparsity.fastmode import fast_mode
from sparsity.sweep import SweepStore, cell_key, command_line, machine_lines, markdown_table
from sparsity.threads import use_threads

PRESETS = ("micro", "tiny", "small")
LRS = (1e-4, 1e-3, 1e-5, 3e-4, 3e-5)
"""The sweep, in the order it runs: the study's learning rate first, then the ends, then between (a study
cut short by time still has the widest span)."""
WEIGHTS = ("float32", "bfloat16")
KEY = ("preset", "weights", "lr", "seed")
COLOURS = {"micro": "tab:green", "tiny": "tab:blue", "small": "tab:red", "mid": "tab:purple"}
COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "rl_scale.json"
"""The committed study's numbers (lesson 6 reads them)."""
X_LABEL = "learning rate / median half bf16 ulp of |theta_0| (block weight matrices)"


@dataclass(frozen=True)
class ScaleConfig:
    """Which sizes, learning rates and seed; ``study`` holds every run's other settings (its preset, lr and
    lr_sweep are replaced per cell)."""

    presets: tuple[str, ...] = PRESETS
    lrs: tuple[float, ...] = LRS
    seed: int = 0
    study: rl_study.StudyConfig = field(default_factory=rl_study.StudyConfig)

    def __post_init__(self) -> None:
        bad = [p for p in self.presets if p not in COLOURS]
        if not self.presets or bad:
            raise ValueError(f"ScaleConfig.presets must be names from {tuple(COLOURS)}, got {self.presets!r}")
        if not self.lrs or any(not lr > 0 for lr in self.lrs) or len(set(self.lrs)) != len(self.lrs):
            raise ValueError(f"ScaleConfig.lrs must be distinct learning rates > 0, got {self.lrs!r}")

    def cells(self) -> list[dict[str, Any]]:
        """Every run, in running order: size by size, each learning rate in float32 then bf16."""
        return [dict(preset=p, weights=w, lr=float(lr), seed=self.seed)
                for p in self.presets for lr in self.lrs for w in WEIGHTS]

    def store_config(self) -> dict[str, Any]:
        """What every cell of one store shares (the runs' settings less what the key varies)."""
        shared = asdict(self.study)
        for varied in ("preset", "lr", "lr_sweep", "algorithms", "weights", "ood_task", "controls", "seed"):
            shared.pop(varied)
        return shared


def default_config(*, fast: bool = False, **overrides: Any) -> ScaleConfig:
    """The scale study's defaults; ``fast`` (the lab's fast mode, passed down by an entry point): the micro
    GPT only, two learning rates, the study's fast runs."""
    small = dict(presets=("micro",), lrs=(1e-4, 1e-3)) if fast else {}
    return ScaleConfig(**{**small, "study": rl_study.default_config(fast=fast), **overrides})


def median_half_ulp(theta0: dict[str, torch.Tensor]) -> float:
    """The median half bf16 ulp of ``|theta_0|`` over the transformer blocks' weight matrices."""
    values = torch.cat([t.flatten().abs() for n, t in theta0.items() if n.startswith("blocks.") and t.ndim == 2])
    return float(metrics.half_ulp(values).median())


class Runner:
    """Runs cells, making each size's ``theta_0`` once (the one of the size at hand is kept)."""

    def __init__(self, cfg: ScaleConfig, cache_dir: str | Path | None = None, progress: bool = False) -> None:
        self.cfg, self.cache_dir, self.progress = cfg, cache_dir, progress
        self.world = tk.World(cfg.study.pretrain.world)
        self._start: tuple[tuple[str, int], Any, dict[str, Any]] | None = None

    def study_config(self, preset: str, seed: int) -> rl_study.StudyConfig:
        return replace(self.cfg.study, preset=preset, seed=seed)

    def start(self, preset: str, seed: int) -> tuple[Any, dict[str, Any]]:
        """``theta_0`` of a size and what describes it (score, warm-up, half-ulp scale, wall time)."""
        if self._start is None or self._start[0] != (preset, seed):
            self._start = None  # let the previous size's model go first
            began = time.perf_counter()
            model, warmup = rl_study.start_model(self.study_config(preset, seed), self.world, self.cache_dir,
                                                 self.progress)
            theta0 = snapshot(model)
            info = dict(start_target=tk.accuracy(model, self.world, self.cfg.study.task, "test"),
                        warmup_steps_taken=warmup, parameters=sum(t.numel() for t in theta0.values()),
                        median_half_ulp=median_half_ulp(theta0), start_wall_s=time.perf_counter() - began)
            self._start = ((preset, seed), model, info)
        return self._start[1], self._start[2]

    def __call__(self, cell: dict[str, Any]) -> dict[str, Any]:
        start, info = self.start(cell["preset"], cell["seed"])
        cfg = self.study_config(cell["preset"], cell["seed"])
        began = time.perf_counter()
        model, row = rl_study.run_one(cfg, start, self.world, "grpo", cell["weights"], lr=cell["lr"])
        if cell["weights"] == "float32":  # this run predicts its bf16 twin's sparsity
            row.update(rl_study.half_ulp_predictors(snapshot(start), model, cfg.steps))
        return dict(cell, **info, **row, wall_s=time.perf_counter() - began, load_average=os.getloadavg()[0])


def run_scale(cfg: ScaleConfig, out: str | Path, cache_dir: str | Path | None = None,
              progress: bool = False) -> dict[str, dict[str, Any]]:
    """Run every cell not yet in the store at ``out`` (a folder); return all stored cells by key."""
    store = SweepStore(out, KEY, cfg.store_config())
    pending = store.pending(cfg.cells())
    bar = (lambda cells: tqdm(cells, desc="RL scale study", unit="run")) if progress else None
    if pending:
        store.run(pending, Runner(cfg, cache_dir, progress), bar)
    return store.load()


def _size_study(runs: dict[tuple[str, float], dict[str, Any]], main_lr: float, start_target: float) -> dict[str, Any]:
    """One size's runs in the shape ``rl_study.verdicts`` reads: ``main_lr`` as the runs, the rest as controls."""
    return dict(config=dict(algorithms=["grpo"], weights=list(WEIGHTS), lr=main_lr,
                            lr_sweep=sorted({lr for _, lr in runs if lr != main_lr})),
                start_target=start_target, runs={f"grpo/{w}": runs[(w, main_lr)] for w in WEIGHTS},
                controls={f"grpo/{w}/lr {lr:g}": r for (w, lr), r in runs.items() if lr != main_lr})


def summarise(cells: dict[str, dict[str, Any]], study_lr: float = rl_study.StudyConfig.lr) -> dict[str, Any]:
    """Every stored run by size (sorted by learning rate; a bf16 run holds the predictors its float32 twin
    made), each size's verdicts (``rl_study.verdicts`` on the learning rates finished in both storages, the
    study's ``study_lr`` as the main one where it ran) and the trend across sizes."""
    by_size: dict[str, dict[tuple[str, float], dict[str, Any]]] = {}
    for row in cells.values():
        by_size.setdefault(row["preset"], {})[(row["weights"], row["lr"])] = dict(row)
    sizes: dict[str, Any] = {}
    for preset in sorted(by_size, key=list(COLOURS).index):
        runs = by_size[preset]
        paired = sorted(lr for (w, lr) in runs if w == "bfloat16" and ("float32", lr) in runs)
        for lr in paired:
            twin = runs[("float32", lr)]
            runs[("bfloat16", lr)].update({k: twin.pop(k) for k in list(twin) if k.startswith("half_ulp_predictor")})
        info = {k: next(iter(runs.values()))[k] for k in
                ("start_target", "warmup_steps_taken", "parameters", "median_half_ulp", "start_wall_s")}
        entry: dict[str, Any] = dict(info, runs=[runs[k] for k in sorted(runs, key=lambda k: (k[1], k[0]))],
                                     verdicts=[])
        if paired:
            main_lr = study_lr if study_lr in paired else paired[0]
            study = _size_study({k: r for k, r in runs.items() if k[1] in paired}, main_lr, info["start_target"])
            entry.update(main_lr=main_lr, verdicts=rl_study.verdicts(study))
        sizes[preset] = entry
    return dict(sizes=sizes, trend=trend_verdicts(sizes) + alignment_verdicts(sizes))


TREND_POINTS = 0.02
"""A change in the unchanged share across sizes smaller than this (2 points) is called flat."""


def trend_verdicts(sizes: dict[str, dict[str, Any]]) -> list[str]:
    """Per learning rate run in bf16 at two sizes or more: does the unchanged share rise, fall or stay
    with size (monotone by more than :data:`TREND_POINTS` from the smallest to the largest, or not)?"""
    if len(sizes) < 2:
        return [f"Across sizes: untested, only {', '.join(sizes) or 'no size'} finished."]
    shares: dict[float, list[tuple[str, float]]] = {}
    for preset, entry in sizes.items():
        for r in entry["runs"]:
            if r["weights"] == "bfloat16":
                shares.setdefault(r["lr"], []).append((preset, r["update_sparsity"]))
    lines = []
    for lr, points in sorted(shares.items()):
        if len(points) < 2:
            continue
        values = [v for _, v in points]
        steps = [b - a for a, b in zip(values, values[1:])]
        if abs(values[-1] - values[0]) < TREND_POINTS and all(abs(s) < TREND_POINTS for s in steps):
            word = "stays flat (within 2 points)"
        elif all(s >= 0 for s in steps) and values[-1] - values[0] >= TREND_POINTS:
            word = "rises with size"
        elif all(s <= 0 for s in steps) and values[0] - values[-1] >= TREND_POINTS:
            word = "falls with size"
        else:
            word = "no monotone trend"
        lines.append(f"At lr {lr:g} in bf16 the unchanged share {word}: "
                     + ", ".join(f"{p} {v:.0%}" for p, v in points) + ".")
    scale = [(p, e["median_half_ulp"]) for p, e in sizes.items()]
    lines.append("Median half bf16 ulp of |theta_0| (block weight matrices): "
                 + ", ".join(f"{p} {v:.2e}" for p, v in scale)
                 + ("; it shrinks as the model grows, so the same learning rate is a larger step in ulps."
                    if all(b[1] < a[1] for a, b in zip(scale, scale[1:])) else "; not shrinking with size."))
    return lines


def _curve(entry: dict[str, Any], weights: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One size's runs in ``weights``, by learning rate: lr, lr / median half-ulp, unchanged share."""
    rows = sorted((r for r in entry["runs"] if r["weights"] == weights), key=lambda r: r["lr"])
    lr = np.array([r["lr"] for r in rows])
    return lr, lr / entry["median_half_ulp"], np.array([r["update_sparsity"] for r in rows])


def alignment_verdicts(sizes: dict[str, dict[str, Any]]) -> list[str]:
    """Does lr / half-ulp line the sizes up (is the step in ulps what sets the sparsity)? Per storage and
    pair of neighbouring sizes: the mean gap of their unchanged shares at equal learning rate, against the
    mean gap at equal lr / half-ulp (the smaller size's curve interpolated in log x, where both have runs)."""
    lines = []
    names = list(sizes)
    for weights in WEIGHTS:
        for a, b in zip(names, names[1:]):
            lr_a, x_a, y_a = _curve(sizes[a], weights)
            lr_b, x_b, y_b = _curve(sizes[b], weights)
            same_lr = [(ya, y_b[lr_b == lr][0]) for lr, ya in zip(lr_a, y_a) if lr in lr_b]
            inside = (x_b >= x_a.min()) & (x_b <= x_a.max()) if len(x_a) > 1 else np.zeros(len(x_b), bool)
            if not same_lr or not inside.any():
                continue
            raw = float(np.mean([abs(u - v) for u, v in same_lr]))
            aligned = float(np.mean(np.abs(y_b[inside] - np.interp(np.log(x_b[inside]), np.log(x_a), y_a))))
            word = "held" if aligned < raw - 0.01 else "did not hold" if aligned > raw + 0.01 else \
                "no difference (within 1 point)"
            lines.append(f"lr / half-ulp lines {a} and {b} up in {weights}: {word}; mean gap {aligned * 100:.1f} "
                         f"points at equal lr / half-ulp, {raw * 100:.1f} at equal lr.")
    return lines


def plot_trend(summary: dict[str, Any], ax: Any = None) -> Any:
    """ONE figure: the unchanged share against lr / median half-ulp of ``|theta_0|``, a colour per size,
    bf16 solid and float32 dashed; returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.4))
    for preset, entry in summary["sizes"].items():
        for weights, style in (("bfloat16", "-"), ("float32", "--")):
            rows = [r for r in entry["runs"] if r["weights"] == weights]
            if rows:
                ax.plot([r["lr"] / entry["median_half_ulp"] for r in rows], [r["update_sparsity"] for r in rows],
                        style, marker="o", color=COLOURS[preset],
                        label=f"{preset} ({entry['parameters'] / 1e6:.2f}M), {weights}")
    ax.set(xscale="log", xlabel=X_LABEL, ylabel="share of entries unchanged (|delta| <= 1e-5 in bf16)",
           ylim=(-0.02, 1.02), title="GRPO update sparsity across GPT sizes")
    ax.legend(fontsize=8, handlelength=3.5)  # long enough to show float32 dashed
    ax.figure.tight_layout()
    return ax.figure


def markdown(summary: dict[str, Any], cfg: ScaleConfig, command: str) -> str:
    """The report: what ran (with wall times), a table per size, the verdicts per size and across sizes."""
    s = cfg.study
    lines = ["# RL update sparsity across GPT sizes (Mukherjee et al. 2025)", "", *machine_lines(command), "",
             f"GRPO on `{s.task}`, {s.steps} steps of {s.prompts} prompts x {s.group} answers, AdamW, seed {cfg.seed}, "
             f"GRPO loss `{s.grpo.loss}`, kl {s.kl:g}; theta_0 = the pretrained GPT ({s.pretrain.steps} steps) after "
             f"at most {s.warmup_steps} SFT warm-up steps (until validation exact match {s.warmup_target}). "
             "One process on one torch thread, the runs one after another; every finished run is in the store "
             "folder beside this report (a rerun resumes). Update sparsity: the share of entries with "
             f"|theta_1 - theta_0| <= 1e-5 compared in bf16. x of the figure (`.png` beside this report): {X_LABEL}.",
             ""]
    if summary["pending"]:
        lines += ["Asked for by the command above and not run yet (a rerun resumes them): " + ", ".join(
            f"{c['preset']} {c['weights']} lr {c['lr']:g}" for c in summary["pending"]) + ".", ""]
    for preset, entry in summary["sizes"].items():
        walls = [r["wall_s"] for r in entry["runs"]]
        lrs = ", ".join(f"{lr:g}" for lr in sorted({r["lr"] for r in entry["runs"]}))
        lines += [f"## {preset} ({entry['parameters']:,} parameters)", "",
                  f"Learning rates run: {lrs}. "
                  f"theta_0: {entry['warmup_steps_taken']} warm-up steps, target {entry['start_target']:.3f} "
                  f"(made in {entry['start_wall_s']:.0f} s, pretraining included where the cache did not hold it yet); "
                  f"median half ulp {entry['median_half_ulp']:.2e}; "
                  f"runs finished: {len(entry['runs'])}, {sum(walls):.0f} s in all "
                  f"({min(walls):.0f}-{max(walls):.0f} s "
                  f"each, load average {min(r['load_average'] for r in entry['runs']):.1f}-"
                  f"{max(r['load_average'] for r in entry['runs']):.1f}).", ""]
        rows = [[f"{r['lr']:g}", f"{r['lr'] / entry['median_half_ulp']:.3g}", r["weights"],
                 f"{entry['start_target']:.3f} -> {r['target']:.3f}",
                 "{:.2f} -> {:.2f}".format(*r["reward_first_last"]), f"{r['update_sparsity']:.1%}",
                 *(f"{r[k]:.1%}" if k in r and r["weights"] == "bfloat16" else "" for k in
                   ("half_ulp_predictor_total", "half_ulp_predictor_per_step")),
                 f"{r['wall_s']:.0f}"] for r in entry["runs"]]
        header = ["lr", "lr / half ulp", "weights", "target", "reward (step 1 -> last)", "unchanged",
                  "predicted (total)", "predicted (per step)", "wall s"]
        lines += [markdown_table(header, rows), ""]
        lines += [f"Verdicts at {preset} (main lr {entry['main_lr']:g}):" if entry["verdicts"] else
                  f"Verdicts at {preset}: none yet (no learning rate finished in both storages).", ""]
        lines += [f"- {v}" for v in entry["verdicts"]] + [""]
    lines += ["## Across sizes", "", *(f"- {v}" for v in summary["trend"]), ""]
    return "\n".join(lines)


def write_report(cells: dict[str, dict[str, Any]], cfg: ScaleConfig, out: str | Path, command: str) -> dict[str, Any]:
    """``out``.json (every number), ``out``.md and ``out``.png, rebuilt from the stored cells; the summary."""
    import matplotlib.pyplot as plt

    out = Path(out)
    stored = {cell_key(c, KEY) for c in cells.values()}
    pending = [c for c in cfg.cells() if cell_key(c, KEY) not in stored]
    summary = dict(config=asdict(cfg), pending=pending, **summarise(cells, cfg.study.lr))
    out.with_suffix(".json").write_text(json.dumps(json_ready(summary), indent=1, allow_nan=False) + "\n")
    out.with_suffix(".md").write_text(markdown(summary, cfg, command))
    fig = plot_trend(summary)
    fig.savefig(out.with_suffix(".png"), dpi=110)
    plt.close(fig)
    return summary


def main(argv: list[str] | None = None) -> int:
    fast = fast_mode()
    cfg = default_config(fast=fast)
    p = argparse.ArgumentParser(prog="python -m scaleup.rl_scale",
                                description="GRPO's update sparsity (float32 and bf16 storage, a learning-rate "
                                            "sweep, the half-ulp predictors) at several GPT sizes, resumable; writes "
                                            "OUT.json, OUT.md and OUT.png beside the run store OUT/.")
    p.add_argument("--out", type=output_folder, default=Path("benchmarks/results/rl_scale"),
                   help="the run store (a folder); the report goes beside it (default %(default)s)")
    p.add_argument("--presets", type=lambda t: tuple(t.split(",")), default=cfg.presets,
                   help=f"comma-separated GPT sizes, smallest first (default {','.join(cfg.presets)}; "
                        "micro with LAB_FAST=1)")
    p.add_argument("--lrs", type=finite_list, default=cfg.lrs,
                   help="comma-separated learning rates, in running order (default "
                        f"{','.join(f'{v:g}' for v in cfg.lrs)})")
    p.add_argument("--seed", type=random_seed, default=cfg.seed, help="the runs' seed (default %(default)s)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the store, run nothing")
    rl.add_model_arguments(p, preset=None)
    grpo.add_arguments(p)
    args = p.parse_args(argv)
    use_threads()
    try:
        cfg = replace(cfg, presets=args.presets, lrs=args.lrs, seed=args.seed,
                      study=replace(cfg.study, grpo=grpo.from_arguments(args), kl=args.kl))
    except (ValueError, TypeError) as e:
        p.error(str(e))
    if args.report_only and not (args.out / "results.jsonl").is_file():
        p.error(f"{args.out} holds no finished run to report")
    try:  # a folder holding another configuration's runs is refused before any work
        store = SweepStore(args.out, KEY, cfg.store_config())
    except (ValueError, NotADirectoryError) as e:
        p.error(str(e))
    cells = store.load() if args.report_only else run_scale(cfg, args.out, args.cache_dir, not args.no_progress)
    if not cells:
        p.error(f"{args.out} holds no finished run to report")
    command = command_line("scaleup.rl_scale", sys.argv[1:] if argv is None else argv, fast)
    summary = write_report(cells, cfg, args.out, command)
    for preset, entry in summary["sizes"].items():
        print(f"{preset}: " + "; ".join(f"{r['weights']} lr {r['lr']:g} {r['update_sparsity']:.1%}"
                                        for r in entry["runs"]))
    for line in summary["trend"]:
        print("-", line)
    print(f"wrote {args.out.with_suffix('.json')}, .md and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
