"""The lab's answers across scale: tables, verdict and figure from the committed benchmark folders.

    python -m scaleup.scale_report --out benchmarks/results/scale_verdict.md \\
        benchmarks/results/frontier_tiny_add2 benchmarks/results/frontier_small_add2 ...

Reads each folder (``scaleup.scales``), computes nothing of its own beyond arranging ``scaleup.frontier``'s
numbers, and writes one table pair per target (rows: methods; columns: the scales, by model size; cells:
area under the learning-forgetting frontier and retention at 90% of full fine-tuning's best target, mean
[min, max] over seeds with n), the verdict of ``scaleup.scale_verdict`` and a figure of each method's area
against model size. It trains nothing and writes the same files from the same folders (no date, no load),
so it is rerun as folders fill.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scaleup.methods import get_method, method_color
from scaleup.results import checkpoint_lines
from scaleup.scale_verdict import AT_TARGET, replicate_pairs, scale_verdict
from scaleup.scales import Scale, by_target, load_scale, methods_of
from sparsity.cli_args import output_file
from sparsity.sweep import command_line, emit, markdown_table

COMMITTED = ("toy_teacher_student", "toy_modular", "frontier_tiny_add2", "hf_gpt2_tiny", "frontier_tiny_facts_b",
             "frontier_small_add2", "frontier_small_facts_b")
"""The lab's frontier folders under ``benchmarks/results``: what README's rebuild command and lesson 5 read."""
COMMITTED_REPLICATES = ("frontier_tiny_add2_earlier_pretraining", "frontier_tiny_facts_b_earlier_pretraining")
"""Folders repeating a committed scale from another pretraining run of the same model (``--replicates``)."""
MARKERS = "osD^v<>ph"
"""One marker per model family in the figure (the lab's GPT, hf-gpt2, each toy world), in order of appearance."""


def committed_scales(results: str | Path, names: Sequence[str] = COMMITTED) -> tuple[list[Scale], list[str]]:
    """The scales of the folders ``names`` under ``results`` that hold a benchmark, and the names that do not
    (a benchmark not committed yet, which lesson 5 skips and names)."""
    folders = [Path(results) / name for name in names]
    present = [f for f in folders if (f / "config.json").is_file()]
    return [load_scale(f) for f in present], [f.name for f in folders if f not in present]


def model_size(parameters: int | None) -> str:
    """A parameter count in words: "4.7M", "448k", "4540"; "size unknown" without one."""
    if parameters is None:
        return "size unknown"
    if parameters >= 1_000_000:
        return f"{parameters / 1e6:.1f}M"
    return f"{parameters / 1e3:.0f}k" if parameters >= 10_000 else str(parameters)


def _seeds(scale: Scale, method: str) -> str:
    """"n=3", or "n=1 of 3, 2 with part of the lr grid" for a method short of its planned seeds."""
    n, partial = scale.seeds_of(method), scale.partial.get(method, 0)
    if scale.finished(method):
        return f"n={n}"
    return f"n={n} of {scale.seeds}" + (f", {partial} with part of the lr grid" if partial else "")


def _spread(spread: Mapping[str, float]) -> str:
    return f"{spread['mean']:.3f} [{spread['min']:.3f}, {spread['max']:.3f}]"


def area_cell(scale: Scale, method: str) -> str:
    """Area under ``method``'s frontier at a scale: mean [min, max] (n seeds); else "no finished seed", "not run
    yet" (named by the folder's command) or "not run"."""
    if method not in scale.entries:
        if method in scale.partial:
            return f"no finished seed ({_seeds(scale, method)})"
        return "not run yet" if method in scale.pending else "not run"
    return f"{_spread(scale.entries[method]['area'])} ({_seeds(scale, method)})"


def retention_cell(scale: Scale, method: str, share: float = AT_TARGET) -> str:
    """Retention at ``share`` of full FT's best target: mean [min, max] over the seeds that reach it, and how
    many do."""
    if method not in scale.entries:
        return area_cell(scale, method)
    if not scale.has_reference:
        return "no finished full FT seed"
    spread, seeds = scale.entries[method][f"retention_at_{share:g}"], scale.seeds_of(method)
    reached = f"reached on {spread['n']} of {seeds} seed{'s' * (seeds != 1)}"
    return f"{_spread(spread)} ({reached})" if spread["n"] else f"never ({reached})"


def column(scale: Scale) -> str:
    """A table column's heading: the model and its size."""
    return f"{scale.model} ({model_size(scale.parameters)})"


def scale_tables(scales: list[Scale], share: float = AT_TARGET) -> str:
    """Per target, two markdown tables (area; retention at ``share``): rows = methods, columns = scales by size."""
    parts = []
    for target, columns in by_target(scales).items():
        methods = methods_of(columns)
        header = ["method", *[column(s) for s in columns]]
        for title, cell in (("Area under the learning-forgetting frontier", area_cell),
                            (f"Retention of the source at {share:.0%} of full FT's best target", retention_cell)):
            rows = [[get_method(m).label, *[cell(s, m) for s in columns]] for m in methods]
            parts += [f"### `{target}`: {title}", "",
                      markdown_table(header, rows, "l" * len(header), compact_rule=True), ""]
    return "\n".join(parts).rstrip()


def folder_line(scale: Scale, out: Path | None) -> str:
    """One markdown bullet per folder: what it is, how much of its grid is stored, where its own report is."""
    report = scale.folder.parent / f"{scale.folder.name}.md"
    link = (f"; its report: [{report.name}]({os.path.relpath(report, out.parent if out else Path.cwd())})"
            if report.exists() else "")
    low = min((scale.seeds_of(m) for m in {*scale.entries, *scale.partial}), default=0)
    state = ("complete" if scale.complete else "unfinished" if scale.runs < scale.planned_runs else
             f"every planned run stored, but {low} of {scale.seeds} seeds with the whole lr grid")
    pending = f"; named by its command, not run yet: {', '.join(scale.pending)}" if scale.pending else ""
    size = "size not known yet (no full FT run)" if scale.parameters is None else \
        f"{model_size(scale.parameters)} parameters"
    mixed = ("; **rows from several pretrained models**, compare methods only within one: "
             + "; ".join(checkpoint_lines(scale.checkpoints))
             if len(scale.checkpoints) > 1 else "")
    return (f"- `{scale.folder.name}`: {scale.label}, {size}; {scale.runs} of "
            f"{scale.planned_runs} planned runs stored ({state}){pending}{mixed}{link}")


def plot_scales(scales: list[Scale]) -> Any:
    """Area under each method's frontier against model size (full FT's trainable count, one log axis shared by
    every panel), one panel per target: one line per method and model family, error bars min..max over seeds,
    hollow markers for a method short of its planned seeds. A scale of unknown size is left out of the figure
    (the tables keep it)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    groups = by_target(scales)
    kinds = list(dict.fromkeys(s.kind for s in scales))
    markers = {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(kinds)}
    sizes = [s.parameters for s in scales if s.parameters]
    cols = min(2, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.2 * rows + 1.6), squeeze=False, sharex=True)
    for ax, (target, columns) in zip(axes.flat, groups.items()):
        placed = [s for s in columns if s.parameters]
        for method in methods_of(placed):
            color = method_color(method)
            for kind in kinds:
                line = [s for s in placed if s.kind == kind and method in s.entries]
                means = [s.entries[method]["area"]["mean"] for s in line]
                ax.plot([s.parameters for s in line], means, color=color, linewidth=1.2)
                for s, mean in zip(line, means):
                    a = s.entries[method]["area"]
                    ax.errorbar([s.parameters], [mean], yerr=[[mean - a["min"]], [a["max"] - mean]], color=color,
                                marker=markers[kind], markerfacecolor=color if s.finished(method) else "none",
                                capsize=2, linestyle="none")
        ax.set(xscale="log", ylim=(0, 1.02), title=f"target `{target}`", ylabel="area under the frontier",
               xlabel="model parameters (full FT's trainable count)")
        if sizes:
            ax.set_xlim(min(sizes) / 2, max(sizes) * 2)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    shown = methods_of(scales)
    fig.legend(handles=[*[Line2D([], [], color=method_color(m), label=get_method(m).label) for m in shown],
                        *[Line2D([], [], color="gray", marker=markers[k], linestyle="none", label=f"model: {k}")
                          for k in kinds],
                        Line2D([], [], color="gray", marker="o", markerfacecolor="none", linestyle="none",
                               label="short of its planned seeds")],
               loc="lower center", ncol=6, fontsize="small")
    fig.suptitle("Area under the learning-forgetting frontier against model size\n(mean over seeds, bars: min..max)")
    fig.tight_layout(rect=(0, 1.4 / (4.2 * rows + 1.6), 1, 1))
    return fig


def report_markdown(scales: list[Scale], command: str, out: Path | None = None, figure: Path | None = None,
                    replicates: Sequence[Scale] = ()) -> str:
    """The whole report: folders (and replicates), verdict, tables per target, figure link. The replicates feed
    the verdict's fifth answer only: the tables and the figure show one folder per scale."""
    image = (f"\n![area against model size]({os.path.relpath(figure, out.parent if out else Path.cwd())})\n"
             if figure else "")
    return "\n".join([
        "# The lab's answers across scale", "",
        f"Rebuilt from the benchmark folders by `{command}` (no number in this file is typed by hand).", "",
        "Each folder is one scale: its learning-forgetting frontiers (Biderman et al. 2024) over every learning "
        "rate and evaluation, per seed; cells are mean [min, max] over seeds with n. A seed counts only once its "
        "method's whole learning-rate grid is stored, so an unfinished folder says how many seeds it holds. "
        "Methods are compared at the LoRA-equal budget (full FT: every entry; 2:4: its pattern); two gaps are "
        "*separated* only when the seed intervals do not overlap.", "",
        "## Folders", "", *[folder_line(s, out) for s in scales], "",
        *(["Replicates (another pretraining run of a scale above; read by the verdict's last answer only):", "",
            *[folder_line(r, out) for r in replicates], ""] if replicates else []),
        "## Verdict", "", scale_verdict(scales, replicates), "",
        "## Tables", "", scale_tables(scales), image])


def _benchmark_folder(text: str) -> Path:
    """``folders``' type: a folder holding a benchmark's config.json."""
    path = Path(text)
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{text} holds no benchmark (no config.json)")
    return path


def build_parser() -> argparse.ArgumentParser:
    """The command line; each folder and output path is checked before any work."""
    p = argparse.ArgumentParser(prog="python -m scaleup.scale_report",
                                description="The lab's frontiers across scale: tables, verdict and figure "
                                            "from benchmark results folders.")
    p.add_argument("folders", nargs="+", type=_benchmark_folder,
                   help="benchmark results folders (config.json + results.jsonl), in any order: columns go by size")
    p.add_argument("--replicates", nargs="+", type=_benchmark_folder, default=[], metavar="FOLDER",
                   help="folders repeating one of FOLDERS (same model and target) from another pretraining run: "
                        "compared with it in the verdict, not drawn as columns (default: none)")
    p.add_argument("--out", type=output_file, default=None,
                   help="write the markdown report here (default: none, print it only)")
    p.add_argument("--figure", type=output_file, default=None,
                   help="write the figure here (default: beside --out with the suffix .png; none without --out)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = [*args.folders, *args.replicates]
    repeated = sorted({str(f) for f in given if given.count(f) > 1})
    if repeated:
        parser.error(f"argument folders: given twice: {', '.join(repeated)}")
    try:
        scales = [load_scale(folder) for folder in args.folders]
    except (OSError, ValueError) as e:
        parser.error(f"argument folders: {e}")
    try:
        replicates = [load_scale(folder) for folder in args.replicates]
        replicate_pairs(scales, replicates)  # a replicate of no scale given is an error before anything is written
    except (OSError, ValueError) as e:
        parser.error(f"argument --replicates: {e}")
    figure = args.figure or (args.out.with_suffix(".png") if args.out else None)
    command = command_line("scaleup.scale_report", sys.argv[1:] if argv is None else argv)
    emit(report_markdown(scales, command, args.out, figure, replicates), args.out)
    if figure is not None:
        import matplotlib.pyplot as plt

        fig = plot_scales(scales)
        fig.savefig(figure, dpi=110)
        plt.close(fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
