"""The update-sparsity study of RL fine-tuning (Mukherjee et al. 2025) on the lab's GPT: the numbers lesson 6 reads.

The paper's claims, made measurable (``python -m scaleup.rl_study --json`` prints all of them):

1. RL updates a small share of the weights: update sparsity, the share of entries with
   ``abs(theta_1 - theta_0) <= 1e-5`` compared in bf16, overall and per layer type.
2. The sparsity is partly numerical: with the weights *stored* in bf16, an update below
   half a unit in the last place rounds away. The predictor: the share of entries whose
   total update in the float32 run is below half a bf16 ulp of ``abs(theta_0)``, next to the
   sparsity the bf16 run measures. And the share that changed per ``abs(theta_0)`` decile.
3. Is RL special? GRPO, SFT and DPO at the same learning rate, steps and storage dtype,
   and the overlap of the entries they changed (Jaccard, against chance).
4. The updates are nearly full rank: numerical rank of each block matrix's update.
5. Training only the subnetwork that the full run changed (``MaskedAdamW`` on that mask,
   from ``theta_0``, with the same data) reaches the full run's score, and how many of its
   values agree with the full run's at several tolerances.

RL needs a model that sometimes gets the target right (a reward of 0 everywhere teaches
nothing), so ``theta_0`` is the pretrained GPT after a short SFT warm-up on the target:
the paper's "SFT, then RL" setting.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scaleup import grpo, pretrain, rl
from scaleup import tasks as tk
from scaleup.grpo import GRPOSettings
from scaleup.rl_measure import TOL, measure, snapshot
from sparsity import metrics
from sparsity.cli_args import positive_int, random_seed
from sparsity.fastmode import fast_mode
from sparsity.optim import MaskedAdamW
from sparsity.threads import use_threads
from sparsity.validate import Mask, TensorDict

@dataclass(frozen=True)
class StudyConfig:
    """The default study: fast mode (``LAB_FAST=1``) shrinks steps and groups to a CI-sized run."""

    preset: str = "tiny"
    task: str = "add2"
    warmup_steps: int = rl.WarmUp.steps
    warmup_lr: float = rl.WarmUp.lr
    warmup_target: float = rl.WarmUp.target
    steps: int = 100
    prompts: int = 16
    group: int = 8
    lr: float = 1e-4
    algorithms: tuple[str, ...] = ("grpo", "sft", "dpo")
    weights: tuple[str, ...] = ("float32", "bfloat16")
    lr_sweep: tuple[float, ...] = (1e-5, 3e-4)
    ood_task: str = "sort"
    controls: bool = True
    seed: int = 0
    pretrain: pretrain.PretrainConfig = field(default_factory=pretrain.default_config)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    """The GRPO runs' loss convention (``scaleup.grpo``; the default is the lab's first: the committed study's)."""
    kl: float = 0.0
    """The GRPO runs' KL coefficient (``RLConfig.kl``)."""

    def run_config(self, algorithm: str, weights: str, **overrides: Any) -> rl.RLConfig:
        base = dict(algorithm=algorithm, task=self.task, steps=self.steps, prompts=self.prompts, group=self.group,
                    lr=self.lr, weights=weights, seed=self.seed)
        if algorithm == "grpo":
            base.update(grpo=self.grpo, kl=self.kl)
        return rl.RLConfig(**{**base, **overrides})


def default_config(*, fast: bool = False, **overrides: Any) -> StudyConfig:
    """The study's defaults; ``fast`` (the lab's fast mode, passed down by an entry point): a 300-step
    pretrained model, 60 warm-up steps and 12-step runs of 8 prompts x 4 samples."""
    small = dict(warmup_steps=rl.FAST_WARMUP_STEPS, **rl.FAST_RUN, pretrain=pretrain.default_config(fast=True)) \
        if fast else {}
    return StudyConfig(**{**small, **overrides})


def start_model(cfg: StudyConfig, world: tk.World, cache_dir: str | Path | None = None,
                progress: bool = False) -> tuple[nn.Module, int]:
    """``theta_0`` and the warm-up steps it took: the pretrained GPT at ``cfg.preset`` after the SFT
    warm-up on the target (``scaleup.rl.warm_start``: partial competence, so that RL gets rewards)."""
    warm = rl.WarmUp(steps=cfg.warmup_steps, lr=cfg.warmup_lr, target=cfg.warmup_target)
    return rl.warm_start(replace(cfg.pretrain, preset=cfg.preset), world, cfg.task, warm, prompts=cfg.prompts,
                         seed=cfg.seed, cache_dir=cache_dir, progress=progress)


def half_ulp_predictors(theta0: TensorDict, fp32_run: nn.Module, steps: int) -> dict[str, float]:
    """Two predictions of the bf16 run's update sparsity from the float32 run of the same settings.

    ``total``: the share of entries whose whole float32 update stays below half a bf16 ulp of
    ``abs(theta_0)``; ``per_step``: the share whose *average step* (the update over ``steps``)
    does. In bf16 storage each step is rounded on its own, so an entry whose every step is below
    half an ulp never moves, however far the steps would add up in float32."""
    after = snapshot(fp32_run)
    per_step = {n: theta0[n] + (after[n] - theta0[n]) / steps for n in theta0}
    return dict(half_ulp_predictor_total=metrics.below_half_ulp_share(theta0, after),
                half_ulp_predictor_per_step=metrics.below_half_ulp_share(theta0, per_step))


def agreement(a: TensorDict, b: TensorDict, within: Mask | None = None) -> dict[str, float]:
    """Share of entries where two runs' values agree: within 1e-5 in bf16, within one bf16 ulp, within 1e-3."""
    out = {}
    for label, close in [("1e-5_bf16", lambda x, y: (x.to(torch.bfloat16).float() - y.to(torch.bfloat16).float()).abs() <= TOL),
                         ("1_ulp", lambda x, y: (x - y).abs() <= 2 * metrics.half_ulp(y)),
                         ("1e-3", lambda x, y: (x - y).abs() <= 1e-3)]:
        hit = total = 0
        for n in a:
            ok = close(a[n].float(), b[n].float())
            if within is not None:
                ok = ok[within[n]]
            hit += int(ok.sum())
            total += ok.numel()
        out[label] = hit / total if total else float("nan")
    return out


def retrain(cfg: StudyConfig, theta0_model: nn.Module, full: nn.Module, world: tk.World, weights: str) -> dict[str, Any]:
    """Train only what the full GRPO run changed, from ``theta_0`` with the same data; compare the two."""
    theta0 = snapshot(theta0_model)
    mask = metrics.changed_entries(full, theta0, TOL, torch.bfloat16)
    model = copy.deepcopy(theta0_model).train()
    run = cfg.run_config("grpo", weights)
    opt = MaskedAdamW(model.named_parameters(), mask, lr=run.lr, weight_decay=0.0)
    rl.finetune(model, run, world, opt)
    final, masked = snapshot(full), snapshot(model)
    return dict(
        subnetwork_share=sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values()),
        full_target=tk.accuracy(full, world, cfg.task, "test"),
        masked_target=tk.accuracy(model, world, cfg.task, "test"),
        agreement_all=agreement(masked, final),
        agreement_in_subnetwork=agreement(masked, final, mask),
    )


def run_one(cfg: StudyConfig, start: nn.Module, world: tk.World, algorithm: str, weights: str,
            progress: bool = False, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """One fine-tune of a copy of ``start`` (``overrides`` change the run's ``RLConfig``, e.g. ``lr``), measured."""
    model = copy.deepcopy(start).train()
    history = rl.finetune(model, cfg.run_config(algorithm, weights, **overrides), world, progress=progress)
    row = measure(model, snapshot(start), world, cfg.task)
    if "reward" in history:
        row["reward_first_last"] = [history["reward"][0], history["reward"][-1]]
    return model.eval(), row


def run_study(cfg: StudyConfig, cache_dir: str | Path | None = None, progress: bool = False,
              start: tuple[nn.Module, int] | None = None) -> dict[str, Any]:
    """Every number of the study as plain data (see the module docstring for what each answers).
    ``start``: a ``start_model`` result to reuse (a lesson makes it once)."""
    world = tk.World(cfg.pretrain.world)
    start_net, warmup = start if start is not None else start_model(cfg, world, cache_dir, progress)
    theta0 = snapshot(start_net)
    out: dict[str, Any] = dict(config=asdict(cfg), warmup_steps_taken=warmup,
                               start_target=tk.accuracy(start_net, world, cfg.task, "test"), runs={})
    models = {}
    for algorithm in cfg.algorithms:
        for weights in cfg.weights:
            models[(algorithm, weights)], out["runs"][f"{algorithm}/{weights}"] = run_one(
                cfg, start_net, world, algorithm, weights, progress)
    for algorithm in cfg.algorithms:
        if (algorithm, "float32") in models and (algorithm, "bfloat16") in models:
            out["runs"][f"{algorithm}/bfloat16"].update(half_ulp_predictors(theta0, models[(algorithm, "float32")],
                                                                            cfg.steps))
    if len(cfg.algorithms) > 1:
        a, b = cfg.algorithms[:2]
        weights = cfg.weights[-1]
        overlap = metrics.mask_overlap(metrics.changed_entries(models[(a, weights)], theta0, TOL, torch.bfloat16),
                                       metrics.changed_entries(models[(b, weights)], theta0, TOL, torch.bfloat16))
        out["overlap"] = {"pair": f"{a} vs {b} ({weights})", **asdict(overlap)}
    if "grpo" in cfg.algorithms:
        weights = cfg.weights[-1]
        out["retrain"] = {"weights": weights, **retrain(cfg, start_net, models[("grpo", weights)], world, weights)}
    if cfg.controls:
        out["controls"] = controls(cfg, start_net, world, cache_dir, progress)
    out["verdicts"] = verdicts(out)
    return out


def controls(cfg: StudyConfig, start: nn.Module, world: tk.World, cache_dir: str | Path | None = None,
             progress: bool = False) -> dict[str, dict[str, Any]]:
    """The runs that test the explanations, each one change from the main GRPO/SFT runs (in the last storage dtype):

    - the learning rate (``lr_sweep``), GRPO in each dtype: does sparsity follow the step size?
    - SFT on the model's own samples (in-distribution) and on another task's answers to the same
      inputs (``ood_task``, out of distribution), beside SFT on the ground truth;
    - GRPO from the pretrained model without the warm-up (no competence, almost no reward);
    - each algorithm at the learning rate a user would pick for it: the best validation score of
      ``lr_sweep`` and ``lr`` (in the last dtype), so none is compared at a rate that suits another."""
    weights = cfg.weights[-1]
    rows: dict[str, dict[str, Any]] = {}
    for lr in cfg.lr_sweep:
        for w in cfg.weights:
            rows[f"grpo/{w}/lr {lr:g}"] = run_one(cfg, start, world, "grpo", w, progress, lr=lr)[1]
        for algorithm in cfg.algorithms:
            if algorithm != "grpo":
                rows[f"{algorithm}/{weights}/lr {lr:g}"] = run_one(cfg, start, world, algorithm, weights, progress,
                                                                  lr=lr)[1]
    for data in ("own", cfg.ood_task):
        rows[f"sft on {'its own samples' if data == 'own' else data + ' answers'}/{weights}"] = run_one(
            cfg, start, world, "sft", weights, progress, sft_data=data)[1]
    cold = pretrain.pretrained(replace(cfg.pretrain, preset=cfg.preset), cache_dir=cache_dir, progress=progress)
    rows[f"grpo without warm-up/{weights}"] = run_one(cfg, cold, world, "grpo", weights, progress)[1]
    return rows


def best_lr_rows(study: dict[str, Any]) -> dict[str, tuple[float, dict[str, Any]]]:
    """Per algorithm, in the last storage dtype: the learning rate with the best validation score and its run."""
    cfg, out = study["config"], {}
    weights = cfg["weights"][-1]
    for algorithm in cfg["algorithms"]:
        found = {cfg["lr"]: study["runs"][f"{algorithm}/{weights}"]}
        found.update({lr: study["controls"][f"{algorithm}/{weights}/lr {lr:g}"] for lr in cfg["lr_sweep"]
                      if f"{algorithm}/{weights}/lr {lr:g}" in study.get("controls", {})})
        lr = max(sorted(found), key=lambda v: found[v]["target_val"])
        out[algorithm] = (lr, found[lr])
    return out


RETRAIN_MIN_GAIN = 0.05
"""The subnetwork retrain is judged on the score only where the full run raised the target by at least this:
matching a run that learned nothing says nothing about the subnetwork."""


def verdicts(study: dict[str, Any]) -> list[str]:
    """One sentence per claim of the paper, worded from this study's numbers (held / did not hold)."""
    runs, start = study["runs"], study["start_target"]
    lines = []
    bf16 = runs.get("grpo/bfloat16")
    if bf16 is not None:
        gain = bf16["target"] - start
        held = bf16["update_sparsity"] >= 0.6
        lines.append(f"RL updates a small subnetwork: {'held' if held else 'did not hold'} in bf16 storage "
                     f"({bf16['update_sparsity']:.0%} of entries unchanged; target {start:.2f} -> {bf16['target']:.2f}, "
                     f"{'a gain of at least 0.4' if gain >= 0.4 else 'a gain below the 0.4 the claim is tested at'}).")
        fp32 = runs.get("grpo/float32")
        if fp32 is not None:
            lines.append(f"The sparsity is numerical: with float32 storage only {fp32['update_sparsity']:.0%} of entries "
                         f"stay unchanged against {bf16['update_sparsity']:.0%} in bf16.")
        for key, label in (("half_ulp_predictor_total", "the total float32 update"),
                           ("half_ulp_predictor_per_step", "the average float32 step")):
            if key in bf16:
                close = abs(bf16[key] - bf16["update_sparsity"]) <= 0.10
                lines.append(f"Half a bf16 ulp of |theta_0| against {label} predicts {bf16[key]:.0%} unchanged, "
                             f"{'within' if close else 'not within'} 10 points of the measured "
                             f"{bf16['update_sparsity']:.0%}.")
        norm = bf16["per_layer_type"].get("norm.weight")
        if norm is not None:
            lines.append(f"LayerNorm gains get almost no update: {'held' if norm >= 0.99 else 'did not hold'} "
                         f"({norm:.1%} unchanged).")
        lines.append(f"The updates are nearly full rank: {'held' if bf16['relative_rank'] >= 0.9 else 'did not hold'} "
                     f"(mean relative rank {bf16['relative_rank']:.2f} of the block matrices).")
    if "overlap" in study:
        o = study["overlap"]
        special = o["jaccard"] < 0.5
        lines.append(f"RL is special: {'held' if special else 'did not hold'} here; {o['pair']} changed the same "
                     f"entries with Jaccard {o['jaccard']:.2f} (chance {o['chance_jaccard']:.2f}).")
    if "controls" in study:
        c = study["controls"]
        own = next((r for k, r in c.items() if "own samples" in k), None)
        ood = next((r for k, r in c.items() if k.startswith("sft on") and "own" not in k), None)
        if own is not None and ood is not None:
            gap = own["update_sparsity"] - ood["update_sparsity"]
            word = "held" if gap > 0.05 else "no clear difference (within 5 points)" if gap >= -0.05 else "did not hold"
            lines.append(f"Out-of-distribution data makes updates denser: {word} "
                         f"(SFT on its own samples {own['update_sparsity']:.0%} unchanged, on another task's answers "
                         f"{ood['update_sparsity']:.0%}).")
    if "controls" in study:
        weights = study["config"]["weights"][-1]
        grpo = {study["config"]["lr"]: runs.get(f"grpo/{weights}")}
        grpo.update({lr: study["controls"].get(f"grpo/{weights}/lr {lr:g}") for lr in study["config"]["lr_sweep"]})
        learned = {lr: r for lr, r in grpo.items() if r is not None and r["target"] - start >= 0.4}
        if learned:
            lr, r = max(learned.items(), key=lambda kv: kv[1]["update_sparsity"])
            lines.append(f"Sparse while learning (target up by >= 0.4, GRPO {weights}): "
                         f"{'held' if r['update_sparsity'] >= 0.6 else 'did not hold'}; the sparsest such run, lr {lr:g}, "
                         f"leaves {r['update_sparsity']:.0%} unchanged (target {start:.2f} -> {r['target']:.2f}).")
        else:
            lines.append(f"Sparse while learning: untested; no GRPO {weights} run raised the target by 0.4.")
        best = best_lr_rows(study)
        lines.append("At the learning rate each algorithm does best at (validation): " + "; ".join(
            f"{a} lr {lr:g}, target {row['target']:.2f}, {row['update_sparsity']:.0%} unchanged" for a, (lr, row) in best.items())
            + ".")
    if "retrain" in study:
        r = study["retrain"]
        gap = abs(r["masked_target"] - r["full_target"])
        agree = r["agreement_in_subnetwork"]["1e-5_bf16"]
        learned = r["full_target"] - start >= RETRAIN_MIN_GAIN
        word = ("held" if gap <= 0.02 else "did not hold") if learned else (
            f"untested (the full run barely learned: {start:.3f} -> {r['full_target']:.3f}, a gain below "
            f"{RETRAIN_MIN_GAIN}, so there is no score to get back)")
        lines.append(f"Training only the subnetwork reproduces the full run: {word} "
                     f"for the score ({r['masked_target']:.3f} vs {r['full_target']:.3f}); the values agree within 1e-5 "
                     f"in bf16 for {agree:.0%} of the subnetwork ({'above' if agree > 0.9 else 'not above'} the claimed 90%).")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scaleup.rl_study",
                                description="Update sparsity of RL (GRPO), SFT and DPO fine-tuning of the lab's GPT.")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="fine-tuning steps per run (default: StudyConfig.steps, 100; 12 with LAB_FAST=1)")
    p.add_argument("--seed", type=random_seed, default=None, help="the runs' seed (default: StudyConfig.seed, 0)")
    p.add_argument("--json", action="store_true", help="print every number as JSON")
    rl.add_model_arguments(p, StudyConfig.preset)
    grpo.add_arguments(p)
    args = p.parse_args(argv)
    use_threads()
    overrides = {k: v for k, v in {"steps": args.steps, "seed": args.seed}.items() if v is not None}
    overrides["preset"] = args.preset
    try:
        cfg = default_config(fast=fast_mode(), **overrides, grpo=grpo.from_arguments(args), kl=args.kl)
    except (ValueError, TypeError) as e:
        p.error(str(e))
    try:
        study = run_study(cfg, args.cache_dir, progress=not args.no_progress)
    except FloatingPointError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        return rl.print_json(study)
    print(f"theta_0 ({cfg.preset}, {study['warmup_steps_taken']} SFT warm-up steps): target {cfg.task} "
          f"{study['start_target']:.3f}")
    print(f"{'run':<20}{'target':>8}{'sparsity':>10}{'norm.weight':>13}{'rank':>7}{'pred. total':>13}{'per step':>10}")
    for name, r in study["runs"].items():
        preds = [r.get(f"half_ulp_predictor_{k}") for k in ("total", "per_step")]
        print(f"{name:<20}{r['target']:>8.3f}{r['update_sparsity']:>10.3f}{r['per_layer_type'].get('norm.weight', 0):>13.3f}"
              f"{r['relative_rank']:>7.2f}" + "".join(f"{'' if v is None else f'{v:.3f}':>{w}}" for v, w in zip(preds, (13, 10))))
    if "overlap" in study:
        o = study["overlap"]
        print(f"overlap {o['pair']}: Jaccard {o['jaccard']:.3f} (chance {o['chance_jaccard']:.3f})")
    for name, r in study.get("controls", {}).items():
        print(f"{name:<36}{r['target']:>8.3f}{r['update_sparsity']:>10.3f}")
    for line in study["verdicts"]:
        print("-", line)
    if "retrain" in study:
        r = study["retrain"]
        print(f"subnetwork retrain ({r['weights']}): {r['subnetwork_share']:.3f} of entries; target full "
              f"{r['full_target']:.3f}, masked {r['masked_target']:.3f}; agreement in the subnetwork "
              + ", ".join(f"{k} {v:.3f}" for k, v in r["agreement_in_subnetwork"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
