"""The benchmark's report: markdown tables, the verdict and the figures, rebuilt from a results folder.

Everything here reads the stored runs (``scaleup.results``) and trains nothing, so
``python -m scaleup.compare --report`` rebuilds ``summary.csv``, ``summary.json``,
``report.md`` and ``summary.png`` of a finished or interrupted benchmark. The report
lists the chosen learning rate's table (mean +- std over seeds), a verdict (does a sparse
method match full fine-tuning within one spread, and which forgets least?) and the whole
seed-0 learning-rate sweep: the choice on the target alone hides how much each rate forgets.

The two plots of single runs (learning against forgetting, and what each method trains)
are here too, for lesson 5.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scaleup.bench_config import BenchConfig
from scaleup.bench_world import describe
from scaleup.frontier_report import frontier_table, frontier_verdict, plot_frontiers
from scaleup.method_base import ALL
from scaleup.methods import get_method, known_methods, method_color
from scaleup.results import (cell_key, checkpoint_lines, checkpoints, diverged_runs, load_config, load_results, measured,
                             summarize)
from sparsity.sweep import markdown_table

NOTES = "## Notes"
"""A section of the ``--md`` file written by hand: kept when the file is regenerated."""


def budget_label(budget: str, cfg: BenchConfig) -> str:
    """A stored budget key in words (``Budget.label``): "5%", "LoRA-equal (r=4)", "100%", "2:4 (50%)"."""
    return cfg.budget_of(budget).label


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned table with the compact rule line (``|---|---|``) of the committed reports."""
    return markdown_table(header, rows, "l" * len(header), compact_rule=True)


def versus(row: Mapping[str, Any], full: Mapping[str, Any], key: str = "target_test") -> str:
    """How ``row`` compares with full fine-tuning on ``key``, in words that fit the numbers.

    "matches within spread" where the intervals mean +- std over seeds overlap, else "exceeds" or
    "falls short of" (by the gap between the means); with no spread (one seed, or seeds that all
    agree) a tie or a gap is named as such, with the reason, not as a match within spread.
    """
    gap = row[key] - full[key]
    spread = row.get(f"{key}_std", 0.0) + full.get(f"{key}_std", 0.0)
    if spread == 0.0:  # one seed, or seeds that all agree: no spread to judge a gap by
        seeds = min(row.get("n_seeds", 1), full.get("n_seeds", 1))
        why = "one seed, no spread measured" if seeds <= 1 else f"no spread over {seeds} seeds"
        if abs(gap) < 5e-4:
            return f"ties with full FT; {why}"
        return f"{'exceeds' if gap > 0 else 'falls short of'} full FT by {abs(gap):.3f}; {why}"
    if abs(gap) <= spread:
        return "matches full FT within spread"
    return f"{'exceeds' if gap > 0 else 'falls short of'} full FT by {abs(gap):.3f}"


def verdict(table: list[dict[str, Any]]) -> str:
    """Does a sparse method match full fine-tuning on the target within one spread, and which retains most?

    "Within one spread": the intervals mean +- std over seeds of the two methods overlap.
    """
    full = next((r for r in table if get_method(r["method"]).reference), None)
    if full is None:
        return "Full fine-tuning was not run: nothing to compare against."
    low = full["target_test"] - full["target_test_std"]
    others = [r for r in table if r is not full]
    match = [r for r in others if r["target_test"] + r["target_test_std"] >= low]

    sparse_match = [r for r in match if get_method(r["method"]).family == "sparse"]
    lines = [f"Full fine-tuning: target {full['target_test']:.3f} +- {full['target_test_std']:.3f}, "
             f"retention {full['retention']:.3f} +- {full['retention_std']:.3f}.",
             "Sparse criteria that reach full FT on the target (their mean + std reaches full FT's mean - std): "
             + (", ".join(f"{r['method']} @ {r['budget']} ({versus(r, full)})" for r in sparse_match) or "none")
             + ".",
             *(f"{get_method(r['method']).label} @ {r['budget']} on the target: {r['target_test']:.3f} +- "
               f"{r['target_test_std']:.3f}, {versus(r, full)}." for r in table
               if get_method(r["method"]).family == "adapter")]
    if others:
        best = max(table, key=lambda r: r["retention"])
        lines.append(f"Best retention overall: {best['method']} @ {best['budget']} ({best['retention']:.3f}, "
                     f"target {best['target_test']:.3f}).")
    if match:
        best = max(match, key=lambda r: r["retention"])
        lines.append(f"Best retention among the methods that match full FT: {best['method']} @ {best['budget']} "
                     f"({best['retention']:.3f} vs full FT's {full['retention']:.3f}).")
    edge = [r for r in table if r.get("lr_edge")]
    lines.append("Learning rate chosen at the edge of its grid (the best may lie outside it; widen the grid): "
                 + (", ".join(f"{r['method']} @ {r['budget']} ({r['lr']:g}, {r['lr_edge']})" for r in edge)
                    if edge else "none") + ".")
    return "\n".join(lines)


def results_table(table: list[dict[str, Any]], cfg: BenchConfig, before: Mapping[str, float] | None) -> str:
    """The summary as markdown: one row per (method, budget), mean ± std over seeds. The update columns
    show two layer types: a GPT's attn.qkv and mlp.fc, another world's first two (``scaleup.bench_world``)."""
    a, b = ("attn.qkv", "mlp.fc") if cfg.world_kind == "gpt" or not table else [*table[0]["update_sparsity"]][:2]
    header = ["method", "budget", "trainable", "lr", "target acc (test)", "retention (source)", "train s", "select s",
              "peak MB", f"upd. sparsity {a} / {b}", f"upd. rank {a} / {b}", "seeds"]
    rows: list[list[object]] = []
    if before:
        rows.append(["before FT", "-", 0, "-", f"{before['target_test']:.3f}", f"{before['retention']:.3f}",
                     *["-"] * 6])
    for r in table:
        us, ur = r["update_sparsity"], r["update_rank"]
        rows.append([
            r["method"], budget_label(r["budget"], cfg), f"{r['trainable']:,}",
            f"{r['lr']:g}" + (f" ({r['lr_edge']})" if r.get("lr_edge") else ""),
            f"{r['target_test']:.3f} ± {r['target_test_std']:.3f}",
            f"{r['retention']:.3f} ± {r['retention_std']:.3f}",
            f"{r['train_s']:.1f}", f"{r['select_s']:.1f}", f"{r['peak_mb']:.0f}",
            f"{us.get(a, float('nan')):.2f} / {us.get(b, float('nan')):.2f}",
            f"{ur.get(a, float('nan')):.2f} / {ur.get(b, float('nan')):.2f}", r["n_seeds"]])
    return _table(header, rows)


def _sweep_cell(row: Mapping[str, Any] | None) -> str:
    """One seed-0 run in the sweep table: "val / retention", "diverged" or blank if not run."""
    if row is None:
        return ""
    if not measured(row):
        return "diverged"
    return f"{row['target_val']:.2f} / {row['retention']:.3f}" + (" (diverged)" if row.get("diverged") else "")


def sweep_table(cfg: BenchConfig, rows: dict[str, dict[str, Any]]) -> str:
    """The learning-rate sweep of seed 0 as markdown: target validation accuracy / source retention per lr.

    Shows what the choice on the target alone hides: how much each learning rate forgets.
    """
    methods = known_methods()
    lrs = sorted({lr for m in methods for lr in cfg.lrs(m)})
    lines = []
    for m in methods:
        for b in cfg.budgets(m):
            cells = [rows.get(cell_key(m, b, lr, 0)) for lr in lrs]
            if any(cells):
                lines.append([m, budget_label(b, cfg),
                              *[_sweep_cell(r) for r in cells]])
    return ("Learning-rate sweep, seed 0: target validation accuracy / source retention (test).\n\n"
            + _table(["method", "budget", *[f"lr {lr:g}" for lr in lrs]], lines))


def machine_sentence(machine: Mapping[str, Any]) -> str:
    """One line naming where the runs were measured (``sparsity.sweep.machine``'s fields)."""
    m = machine
    return (f"Machine: {m['cpus']} CPUs{' (' + m['cpu'] + ')' if 'cpu' in m else ''}, {m['torch_threads']} torch "
            f"thread(s), torch {m['torch']}, "
            f"{m['device']}{' (' + m['gpu'] + ')' if 'gpu' in m else ''}; {m['platform']}.")


def report_markdown(out: str | Path, command: str | None = None) -> str:
    """The results table (mean +- std over seeds), the verdict and the seed-0 sweep, as markdown."""
    out = Path(out)
    cfg = load_config(out)
    table = summarize(out)
    before = json.loads((out / "before.json").read_text()) if (out / "before.json").exists() else None
    rows = load_results(out)
    parts = [f"{describe(cfg)}, {cfg.steps} steps of "
             f"batch {cfg.batch_size}, {cfg.seeds} seed(s); learning rate: the smallest of the grid within "
             f"{cfg.lr_tie:g} of the best target validation accuracy "
             f"({'mean over seeds' if cfg.sweep_all_seeds else 'seed 0, reused for the other seeds'}); "
             f"{len(rows)} runs finished.", "", results_table(table, cfg, before), "", verdict(table), "",
             sweep_table(cfg, rows)]
    if any(r.get("trace") for r in rows.values()):
        parts += ["", frontier_table(rows), "", "Verdict from the frontiers:", "", frontier_verdict(rows)]
    found = checkpoints(rows)
    if len(found) > 1:
        parts += ["", f"**Rows from {len(found)} pretrained models** (`scaleup.pretrain.fingerprint`; the same config "
                  "pretrained on another machine differs): compare methods only within one:", "",
                  *[f"- {line}" for line in checkpoint_lines(found)]]
    diverged = diverged_runs(out)
    if diverged:
        parts += ["", f"Diverged runs ({len(diverged)}; never chosen as a method's learning rate):", "",
                  *[f"- {d['method']} @ {budget_label(d['budget'], cfg)}, lr {d['lr']:g}, seed {d['seed']}: {d['reason']}"
                    for d in diverged]]
    if (out / "machine.json").exists():
        parts[:0] = [machine_sentence(json.loads((out / "machine.json").read_text())), ""]
    if command is None and (out / "command.txt").exists():
        command = (out / "command.txt").read_text().strip()
    if command:
        parts[:0] = [f"Command: `{command}`", ""]
    return "\n".join(parts) + "\n"


def plot_summary(table: list[dict[str, Any]], cfg: BenchConfig, fig: Any = None,
                 rows: dict[str, dict[str, Any]] | None = None) -> Any:
    """Two panels: target accuracy vs source retention (mean +- std at the chosen lr; with ``rows``,
    the seed-0 sweep as faint points joined by a line), and per-method bars."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if fig is None:
        fig = plt.figure(figsize=(16, 5.5))
    fig.clear()
    ax_scatter, ax_bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": (1, 1.3)})
    for r in table:  # colour: the method's; marker: the budget's
        marker, color = cfg.budget_of(r["budget"]).marker, method_color(r["method"])
        ax_scatter.errorbar(r["retention"], r["target_test"], xerr=r["retention_std"], yerr=r["target_test_std"],
                            marker=marker, color=color, linestyle="none", capsize=2, markersize=7)
        sweep = [rows.get(cell_key(r["method"], r["budget"], lr, 0)) for lr in cfg.lrs(r["method"])] if rows else []
        sweep = [s for s in sweep if s and measured(s)]  # a non-finite run has no point
        if len(sweep) > 1:
            ax_scatter.plot([s["retention"] for s in sweep], [s["target_val"] for s in sweep], marker=marker,
                            markersize=3, alpha=0.3, linewidth=0.7, color=color)
    ax_scatter.set(xlabel="source retention (mean test accuracy)", ylabel=f"target test accuracy ({cfg.target})",
                   xlim=(-0.05, 1.05), ylim=(-0.05, 1.05),
                   title="Learning vs forgetting (upper right is best)\nfaint: the lr sweep (seed 0, target on val)")
    shown = list(dict.fromkeys(r["method"] for r in table))
    budgets = list(dict.fromkeys(r["budget"] for r in table))
    handles = ([Line2D([], [], color=method_color(m), marker="o", linestyle="none", label=get_method(m).label)
                for m in shown] +
               [Line2D([], [], color="gray", marker=cfg.budget_of(b).marker, linestyle="none",
                       label=budget_label(b, cfg)) for b in budgets])
    ax_scatter.legend(handles=handles, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    names = [f"{r['method']}\n{budget_label(r['budget'], cfg)}" for r in table]
    xs = range(len(table))
    ax_bars.bar([x - 0.2 for x in xs], [r["target_test"] for r in table], 0.4,
                yerr=[r["target_test_std"] for r in table], label="target")
    ax_bars.bar([x + 0.2 for x in xs], [r["retention"] for r in table], 0.4,
                yerr=[r["retention_std"] for r in table], label="retention")
    ax_bars.set(xticks=list(xs), ylim=(0, 1.05), ylabel="accuracy", title="Per method and budget")
    ax_bars.set_xticklabels(names, rotation=90, fontsize="x-small")
    ax_bars.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"{cfg.model_name}: fine-tuning on {cfg.target}, {cfg.steps} steps, {cfg.seeds} seed(s)")
    fig.tight_layout()
    return fig


FRONTIER_PNG = "frontier.png"


def frontier_figure(rows: Mapping[str, Mapping[str, Any]], cfg: BenchConfig) -> Any:
    """One frontier panel per budget kind: the LoRA-equal budget (with full FT and LoRA) and each density."""
    import matplotlib.pyplot as plt

    budgets = list(dict.fromkeys(r["budget"] for r in rows.values() if r["budget"] != ALL.key))
    fig, axes = plt.subplots(1, len(budgets), figsize=(7 * len(budgets), 6), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        plot_frontiers(rows, f"budget {budget_label(budget, cfg)} (with full FT)", budgets=[budget, ALL.key], ax=ax,
                       markers={b: cfg.budget_of(b).marker for b in (budget, ALL.key)})
    fig.suptitle(f"{cfg.model_name}: learning-forgetting frontiers on {cfg.target}, {cfg.steps} steps, "
                 f"{cfg.seeds} seed(s), every lr and every {cfg.eval_every} steps")
    fig.tight_layout()
    return fig


def write_summary(out: str | Path, methods: Sequence[str] | None = None,
                  command: str | None = None) -> list[dict[str, Any]]:
    """Write summary.csv, summary.json, report.md and summary.png from the results file."""
    import matplotlib.pyplot as plt

    out = Path(out)
    cfg = load_config(out)
    table = summarize(out, methods)
    (out / "summary.json").write_text(json.dumps(table, indent=1))
    flat = [{k: v for k, v in r.items() if not isinstance(v, dict)} |
            {f"{kind}.{t}": v for kind in ("update_sparsity", "update_rank") for t, v in r[kind].items()}
            for r in table]
    if flat:
        keys = list(dict.fromkeys(k for r in flat for k in r))
        with (out / "summary.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, keys)
            writer.writeheader()
            writer.writerows(flat)
        rows = load_results(out)
        fig = plot_summary(table, cfg, rows=rows)
        fig.savefig(out / "summary.png", dpi=110)
        plt.close(fig)
        if any(r.get("trace") for r in rows.values()):
            fig = frontier_figure(rows, cfg)
            fig.savefig(out / FRONTIER_PNG, dpi=110)
            plt.close(fig)
    (out / "report.md").write_text(report_markdown(out, command))
    return table


def print_report(out: Path, md: Path | None) -> None:
    """Print the report; with ``md``, also write it there as a page (keeping its hand-written ``## Notes``)."""
    text = report_markdown(out)
    print(text)
    if md is not None:
        old = md.read_text() if md.exists() else ""
        notes = old[old.index(NOTES):] if NOTES in old else ""
        figures = [name for name in (FRONTIER_PNG, "summary.png") if (out / name).exists()]
        images = "".join(f"![{name[:-4]}]({os.path.relpath(out / name, md.parent)})\n\n" for name in figures)
        md.write_text(f"# Scale-up benchmark: full vs sparse vs LoRA fine-tuning ({out.name})\n\n{text}\n"
                      f"{images}{notes}")


def plot_learning_vs_forgetting(rows: Mapping[str, Mapping[str, Any]], before: Mapping[str, float], title: str,
                                ax: Any = None) -> Any:
    """Target accuracy against source retention, one point per run (upper right is best); the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    ax.scatter([before["retention"]], [before["target_test"]], marker="x", color="black", label="before fine-tuning")
    for name, r in rows.items():
        ax.scatter([r["retention"]], [r["target_test"]], s=60, label=f"{name} ({r['trainable']:,} trainable)")
    ax.set(xlabel="source retention (mean test accuracy on the pretraining tasks)",
           ylabel="target test accuracy", xlim=(-0.05, 1.05), ylim=(-0.05, 1.05), title=title)
    ax.legend(fontsize="small", loc="best")
    return ax


def plot_costs(rows: Mapping[str, Mapping[str, Any]]) -> Any:
    """Two bar panels per run: the entries each method trains and its optimizer-state bytes; the figure."""
    import matplotlib.pyplot as plt

    fig, (ax_count, ax_state) = plt.subplots(1, 2, figsize=(11, 3.5))
    names = list(rows)
    ax_count.bar(names, [rows[m]["trainable"] for m in names])
    ax_count.set(yscale="log", ylabel="trainable entries", title="What each method trains")
    ax_state.bar(names, [rows[m]["optimizer_state_bytes"] for m in names], color="tab:orange")
    ax_state.set(yscale="log", ylabel="bytes", title="Optimizer state")
    fig.tight_layout()
    return fig
