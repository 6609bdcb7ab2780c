"""The main job (`make demo`): run the lab's experiments and write a report with figures.

Each experiment is a section: a function that runs it, saves its figures under the output
folder and returns (markdown for the report, a plain-text summary for the terminal).
Later experiments add their own section to SECTIONS.

By default the report is the quick one: every section at its small configuration (the one
``LAB_FAST=1`` selects: small but real runs of the same code, a few minutes in all on two
cores), so a newcomer sees the headline findings soon. ``--full`` (``make demo FULL=1``) runs
every experiment at full size: longer training, more seeds, the ``tiny`` GPT instead of
``micro``. The terminal shows which section of how many is running and how long each took.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sparsity.sweep import command_line, machine_lines, markdown_table  # noqa: E402
from sparsity.threads import use_threads  # noqa: E402
from toys import modular_consistency, modular_isolation, modular_plots, modular_report, modular_world  # noqa: E402
from toys import prune_study as ps  # noqa: E402
from toys import teacher_student as ts  # noqa: E402
from toys import two_four_study as tfs  # noqa: E402

Section = Callable[[Path, bool], tuple[str, str]]
"""A section: (output folder, fast) -> (markdown, terminal summary); ``fast`` selects the small configurations."""


def teacher_student_section(out: Path, fast: bool) -> tuple[str, str]:
    """Liu 2026's probe at lambda = 0 and lambda = 1e-3: where does the update go?"""
    base = ts.default_config(fast=fast)
    runs = {lam: ts.train(replace(base, lam=lam)) for lam in (0.0, 1e-3)}
    figures = []
    for lam, run in runs.items():
        path = out / f"teacher_student_lam{lam:g}.png"
        fig = ts.plot_run(run)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        figures.append(path.name)
    keys = list(runs[0.0].update_share)
    table = markdown_table(["", *keys, "MSE start -> end"],
                           [[f"lambda = {lam:g}", *(f"{run.update_share[k]:.3f}" for k in keys),
                             f"{run.initial_loss:.3g} -> {run.final_loss:.3g}"] for lam, run in runs.items()])
    shares = {lam: run.update_share for lam, run in runs.items()}
    markdown = f"""## Which layer needs fine-tuning? (teacher-student MLP, Liu 2026)

Student = teacher {base.widths} with layer 2 re-drawn; Adam, {base.steps} steps, seed {base.seed}.
Share of the total L1 update held by each tensor:

{table}

{" ".join(update_sentence(lam, share) for lam, share in shares.items())}

{chr(10).join(f"![{name}]({name})" for name in figures)}
"""
    return markdown, "Teacher-student update shares\n" + table


def update_sentence(lam: float, share: dict[str, float]) -> str:
    """What the update shares say about W2 (the only layer that needed to change), from the numbers."""
    top = max(share, key=share.get)
    if top == "W2":
        reading = "it holds the largest share: the update sizes point at the layer that needed to change."
    else:
        reading = f"{top} holds more ({share[top]:.0%}): raw update sizes point away from the layer that needed to change."
    return f"With lambda = {lam:g}, W2 holds {share['W2']:.0%} of the update; {reading}"


def prune_recover_section(out: Path, fast: bool) -> tuple[str, str]:
    """Prune, then fine-tune with the pattern fixed: how much of dense accuracy comes back?"""
    study = ps.default_study(fast=fast)
    result = ps.run_study(study)
    path = out / "prune_and_recover.png"
    fig = ps.plot_study(result)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    table, verdict = ps.format_table(result), ps.verdict(result)
    widths = "-".join(map(str, (study.world.in_dim, *study.world.hidden, study.world.n_classes)))
    markdown = f"""## Prune, then recover (classification toy)

Student {widths} on a random teacher's labels, {study.world.steps} training steps; accuracy
(share of dense) at each sparsity:

{table}

{verdict}

![{path.name}]({path.name})
"""
    return markdown, "Prune and recover: accuracy (share of dense)\n" + table + "\n" + verdict


def modular_section(out: Path, fast: bool) -> tuple[str, str]:
    """Modular subnetworks: the ablation matrix, consistency across seeds, core isolation."""
    cfg = modular_world.default_config(fast=fast)
    report = modular_report.run(cfg)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, arm in zip(axes, ("random init", "pretrained")):
        seed0 = report.runs[arm][0]
        title = f"{arm}, seed 0: modularity {seed0.modularity:.2f}"
        modular_plots.plot_ablation_matrix(seed0.matrix, cfg.chance, ax, title)
    fig.tight_layout()
    figures = {"modular_ablation.png": fig, "modular_consistency.png": modular_plots.plot_consistency(report)}
    figures["modular_isolation.png"] = modular_plots.plot_isolation(report.isolation).figure
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
    summary = report.summary()
    overlaps = {arm: report.overlaps.get(arm) for arm in modular_consistency.ARMS}
    consistency = markdown_table(
        ["arm", "modularity (mean +- std over seeds)", "cross-seed Jaccard", "chance"],
        [[arm, f"{summary['modularity'][arm]['mean']:.3f} +- {summary['modularity'][arm]['std']:.3f}",
          *((f"{o.jaccard:.3f}", f"{o.chance:.3f}") if (o := overlaps[arm]) else ("-", "-"))] for arm in modular_consistency.ARMS])
    iso = report.isolation
    ways = markdown_table(["way", "B (target)", "A (retained)", "trainable share of trunk"],
                          [[w, f"{iso.target[w]:.3f}", f"{iso.retained[w]:.3f}", f"{iso.trainable[w]:.2f}"]
                           for w in modular_isolation.WAYS])
    matrix = report.runs["random init"][0].matrix
    ablated = [["(none)", *(f"{b:.3f}" for b in matrix.baseline)]]
    ablated += [[name, *(f"{v:.3f}" for v in row)] for name, row in zip(matrix.subnetworks, matrix.scores)]
    ablation = markdown_table(["ablated", *matrix.tasks], ablated)
    markdown = f"""## Modular subnetworks: find them, ablate them, protect them

{cfg.n_tasks} subtasks, each reading its own group of {cfg.group_size} features; trunk {cfg.hidden} with one head per
subtask; {cfg.steps} training steps; subnetworks are learned masks over the trunk (weights frozen,
Csordás et al. 2021), ablated by their exclusive part. Chance = {cfg.chance:.2f}.

Accuracy of each task (column) with a subnetwork (row) ablated, random init, seed 0
(modularity {report.runs["random init"][0].modularity:.3f}):

{ablation}

Consistency over {cfg.n_seeds} seeds per arm (same init: one initialisation, only the batch order changes):

{consistency}

Pretrained on A = {cfg.task_a} (A {iso.a_before:.3f}), then fine-tuned on B = {cfg.task_b} three ways:

{ways}

{chr(10).join(f"![{name}]({name})" for name in figures)}
"""
    return markdown, "Modular subnetworks: ablation matrix, consistency, core isolation\n" + "\n\n".join(
        (ablation, consistency, ways))


def two_four_section(out: Path, fast: bool) -> tuple[str, str]:
    """2:4 sparsity: one-shot cost and fixed-pattern fine-tuning recovery vs dense FT and unstructured 50%."""
    import warnings

    from sparsity.two_four_linear import FastPathNotice

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FastPathNotice)  # the CPU runs the dense masked reference
        result = tfs.run_study(tfs.default_study(fast=fast))
    path = out / "two_four.png"
    fig = tfs.plot_study(result)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    table, verdict = tfs.format_table(result), tfs.verdict(result)
    markdown = f"""## 2:4 structured sparsity: accuracy cost and recovery (classification toy)

Every method gets the same fine-tuning steps after the dense training:

{table}

{verdict}

![{path.name}]({path.name})
"""
    return markdown, "2:4 vs unstructured 50% (same fine-tuning steps)\n" + table + "\n" + verdict


def scaleup_section(out: Path, fast: bool) -> tuple[str, str]:
    """The controlled benchmark, small: full vs sparse (LoRA-equal budget) vs LoRA fine-tuning of a GPT."""
    import shutil

    from scaleup import bench_config as bc
    from scaleup import compare as cp
    from scaleup import report as rep
    from scaleup.frontier_report import frontier_verdict
    from scaleup.results import load_results

    cfg = bc.demo_config(fast)
    folder = out / f"scaleup_{cfg.preset}_{cfg.steps}steps"
    cp.run(cfg, folder, bc.DEMO_METHODS)
    table = rep.report_markdown(folder)
    committed = Path(__file__).resolve().parent / "benchmarks" / "results" / "frontier_tiny_facts_b"
    tiny = ""
    if (committed / "frontier.png").exists():
        shutil.copy(committed / "frontier.png", out / "frontier_tiny_facts_b.png")
        tiny = f"""
### The committed tiny frontier (3 seeds, every learning rate, every 50 steps; target `facts_b`)

From benchmarks/results/frontier_tiny_facts_b.md (not re-run here):

{frontier_verdict(load_results(committed))}

![frontier_tiny_facts_b.png](frontier_tiny_facts_b.png)
"""
    markdown = f"""## Scaling up: full vs sparse vs LoRA fine-tuning of a small GPT (scaleup.compare)

Pretrained on copy/reverse/increment/facts, fine-tuned on `{cfg.target}`; sparse methods and LoRA
train the same number of entries (LoRA-equal). Each run is evaluated every {cfg.eval_every} steps, so the
report has learning-forgetting frontiers too. The committed 3-seed frontier benchmarks with every
criterion and its learning-rate grid are benchmarks/results/frontier_tiny_facts_b.md and frontier_tiny_add2.md.

{table}

![{folder.name}/frontier.png]({folder.name}/frontier.png)

![{folder.name}/summary.png]({folder.name}/summary.png)
{tiny}"""
    return markdown, "Scale-up comparison (target vs retention)\n" + table


def rl_section(out: Path, fast: bool) -> tuple[str, str]:
    """RL update sparsity (lesson 6): GRPO, SFT and DPO, float32 vs bf16 weight storage, and the subnetwork retrain."""
    from scaleup import rl_study

    study = rl_study.run_study(rl_study.default_config(fast=fast))
    rows = [[name, f"{r['target']:.3f}", f"{r['update_sparsity']:.1%}", f"{r['per_layer_type'].get('norm.weight', 0):.1%}",
             f"{r['relative_rank']:.2f}"] for name, r in study["runs"].items()]
    table = markdown_table(["run", "target", "entries unchanged", "LayerNorm gains unchanged", "relative rank"], rows)
    verdicts = "\n".join(f"- {line}" for line in study["verdicts"])
    markdown = f"""## RL fine-tunes small subnetworks? (Mukherjee et al. 2025; lesson 6, scaleup.rl)

theta_0: the pretrained GPT after {study['warmup_steps_taken']} SFT warm-up steps (target exact match
{study['start_target']:.3f}); each run fine-tunes it at the same learning rate and steps. Unchanged: |delta| <= 1e-5
compared in bf16.

{table}

{verdicts}
"""
    return markdown, "RL update sparsity (GRPO / SFT / DPO x float32 / bf16)\n" + table + "\n" + verdicts


SECTIONS: list[Section] = [
    teacher_student_section, prune_recover_section, modular_section, two_four_section, scaleup_section, rl_section,
]


FULL_ADDS = ("every experiment at its full size: longer training and larger toys, the GPT comparison on the tiny "
             "preset instead of micro (37 minutes measured on a fresh clone, 2 shared cores)")


def main(argv: list[str] | None = None) -> int:
    """Run every section (quick, or full size with ``--full``), print each summary with its time, write the report."""
    parser = argparse.ArgumentParser(description="Run the Subnet Lab demo and write a report.")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: out/)")
    parser.add_argument("--full", action="store_true", help=f"the full report: {FULL_ADDS}")
    args = parser.parse_args(argv)
    args.argv = argv
    use_threads()
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    command = command_line("demo", sys.argv[1:] if args.argv is None else args.argv)
    kind = "full" if args.full else "quick (small configurations; `make demo FULL=1` for the full report)"
    parts = ["# Subnet Lab report\n", *machine_lines(command), f"- report: {kind}\n"]
    timings = []
    for i, section in enumerate(SECTIONS, 1):
        title = (section.__doc__ or section.__name__).splitlines()[0]
        print(f"[section {i} of {len(SECTIONS)}] {title}", flush=True)
        began = time.perf_counter()
        markdown, summary = section(args.out, not args.full)  # the quick report: every section's fast size
        timings.append((section.__name__.removesuffix("_section"), time.perf_counter() - began))
        parts.append(markdown)
        print(summary, end="\n\n")
        print(f"[section {i} of {len(SECTIONS)}] done in {timings[-1][1]:.0f} s "
              f"({time.perf_counter() - start:.0f} s so far)\n", flush=True)
    parts.append("## Time per section\n\n" + markdown_table(["section", "seconds"],
                                                              [[name, f"{s:.0f}"] for name, s in timings]) + "\n")
    if not args.full:
        parts.append(f"This is the quick report. `make demo FULL=1` (or `python demo.py --full`) runs {FULL_ADDS}.\n")
    report = args.out / "report.md"
    report.write_text("\n".join(parts))
    print(f"report written to {report} ({time.perf_counter() - start:.0f} s)")
    if not args.full:
        print(f"This was the quick report. For the full one: make demo FULL=1 ({FULL_ADDS}).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
