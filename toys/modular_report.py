"""The modular toy's whole experiment: :func:`run` (all three experiments on one world), its
:class:`Report` with the JSON summary and the checks, and the text tables.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from sparsity.threads import one_thread
from toys.modular_consistency import ARMS, CrossSeedOverlap, SeedRun, cross_seed_overlap, pretrain, seed_run
from toys.modular_isolation import WAYS, Isolation, isolation
from toys.modular_world import Config, ModularMLP, World, default_config, make_world


@dataclass
class Report:
    """Everything :func:`run` measured (the models are kept for plots and widgets)."""

    config: Config
    world: World
    pretrained: ModularMLP
    runs: dict[str, list[SeedRun]]
    overlaps: dict[str, CrossSeedOverlap]
    isolation: Isolation

    def checks(self) -> dict[str, object]:
        """The claims' targets (own task broken, the others kept, A protected), computed from the numbers."""
        cfg = self.config
        out: dict[str, object] = {}
        for arm in ("random init", "pretrained"):
            m = self.runs[arm][0].matrix
            n = len(m.tasks)
            out[f"{arm}: own task after ablation, max"] = max(m.scores[i][i] for i in range(n))
            out[f"{arm}: other tasks retained, min share"] = min(
                r for i, row in enumerate(m.retained()) for j, r in enumerate(row) if i != j
            )
        iso = self.isolation
        out["isolation: A retained, freeze core minus full"] = iso.retained["freeze A's core"] - iso.retained["full"]
        out["isolation: B target, freeze core minus full"] = iso.target["freeze A's core"] - iso.target["full"]
        out["chance"] = cfg.chance
        return out

    def summary(self) -> dict[str, object]:
        """The JSON-able numbers (what the CLI prints with --json)."""

        def stats(values: list[float]) -> dict[str, object]:
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            return {"per_seed": values, "mean": mean, "std": std}

        iso = self.isolation
        return {
            "config": asdict(self.config),
            "chance": self.config.chance,
            "ablation_matrix": {
                arm: {**asdict(runs[0].matrix), "modularity": runs[0].modularity} for arm, runs in self.runs.items()
                if arm != "same init"
            },
            "modularity": {arm: stats([r.modularity for r in runs]) for arm, runs in self.runs.items()},
            "mask_density": {arm: stats([sum(m.density for m in r.masks.values()) / len(r.masks) for r in runs])
                             for arm, runs in self.runs.items()},
            "subnetwork_alone_accuracy": {
                arm: runs[0].alone for arm, runs in self.runs.items() if arm != "same init"
            },
            "cross_seed_overlap": {arm: asdict(o) for arm, o in self.overlaps.items()},
            "isolation": {
                "task_a": self.config.task_a,
                "task_b": self.config.task_b,
                "a_before": iso.a_before,
                "b_before": iso.b_before,
                "ways": {
                    w: {"target_b": iso.target[w], "retained_a": iso.retained[w], "trainable_share": iso.trainable[w]}
                    for w in WAYS
                },
            },
            "checks": self.checks(),
        }


@one_thread()
def run(cfg: Config | None = None, progress: bool = True) -> Report:
    """All three experiments on one world (the default config when ``cfg`` is None)."""
    cfg = default_config() if cfg is None else cfg
    world = make_world(cfg)
    pretrained = pretrain(world, progress)
    runs: dict[str, list[SeedRun]] = {}
    for arm in ARMS:
        runs[arm] = []
        for s in range(cfg.n_seeds):
            if arm == "same init" and s == 0:
                runs[arm].append(runs["random init"][0])  # the same network: init seed and batch order coincide
                continue
            runs[arm].append(seed_run(arm, s, world, pretrained, progress))
    overlaps = {arm: cross_seed_overlap(r) for arm, r in runs.items()} if cfg.n_seeds > 1 else {}
    return Report(cfg, world, pretrained, runs, overlaps, isolation(world, progress))


def format_report(report: Report) -> str:
    """Plain-text tables of the ablation matrices, modularity, overlaps and the A/B fine-tuning."""
    s = report.summary()
    cfg = report.config
    lines = [f"chance = {cfg.chance:.2f}; subnetworks: learned masks (exclusive parts), {cfg.ablation}-ablated"]
    for arm in ("random init", "pretrained"):
        run0 = report.runs[arm][0]
        alone = ", ".join(f"{t} {a:.3f}" for t, a in run0.alone.items())
        lines += ["", f"Ablation matrix, {arm} (seed 0): accuracy of each task (column), a subnetwork (row) ablated",
                  run0.matrix.format(), f"modularity {run0.modularity:.3f}; each subnetwork alone: {alone}"]
    lines += ["", f"{'arm':<14}{'modularity mean +- std':>26}{'mask density':>14}{'cross-seed Jaccard':>20}"
              f"{'chance':>8}"]
    for arm in ARMS:
        mod, dens = s["modularity"][arm], s["mask_density"][arm]
        o = report.overlaps.get(arm)
        overlap = f"{o.jaccard:>20.3f}{o.chance:>8.3f}" if o else f"{'-':>20}{'-':>8}"
        lines.append(f"{arm:<14}{mod['mean']:>18.3f} +- {mod['std']:.3f}{dens['mean']:>14.3f}{overlap}")
    iso = report.isolation
    lines += ["", f"Pretrained on A = {cfg.task_a} (A {iso.a_before:.3f}, B {iso.b_before:.3f}), "
                  f"then fine-tuned on B = {cfg.task_b}:",
              f"{'way':<22}{'B (target)':>12}{'A (retained)':>14}{'trainable trunk':>17}"]
    for w in WAYS:
        lines.append(f"{w:<22}{iso.target[w]:>12.3f}{iso.retained[w]:>14.3f}{iso.trainable[w]:>17.2f}")
    return "\n".join(lines)
