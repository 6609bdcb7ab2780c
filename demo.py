"""The main job (`make demo`): run the lab's experiments and write a report with figures.

Each experiment is a section: a function that runs it, saves its figures under the output
folder and returns (markdown for the report, a plain-text summary for the terminal).
Later experiments add their own section to SECTIONS.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sparsity.fastmode import fast_mode  # noqa: E402
from toys import teacher_student as ts  # noqa: E402

Section = Callable[[Path], tuple[str, str]]


def teacher_student_section(out: Path) -> tuple[str, str]:
    """Liu 2026's probe at lambda = 0 and lambda = 1e-3: where does the update go?"""
    base = ts.default_config()
    runs = {lam: ts.train(replace(base, lam=lam)) for lam in (0.0, 1e-3)}
    figures = []
    for lam, run in runs.items():
        path = out / f"teacher_student_lam{lam:g}.png"
        fig = ts.plot_run(run)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        figures.append(path.name)
    keys = list(runs[0.0].update_share)
    header = "| | " + " | ".join(keys) + " | MSE start -> end |"
    rows = [header, "|" + "---|" * (len(keys) + 2)]
    for lam, run in runs.items():
        shares = " | ".join(f"{run.update_share[k]:.3f}" for k in keys)
        rows.append(f"| lambda = {lam:g} | {shares} | {run.initial_loss:.3g} -> {run.final_loss:.3g} |")
    table = "\n".join(rows)
    w2_0, w2_1 = runs[0.0].update_share["W2"], runs[1e-3].update_share["W2"]
    markdown = f"""## Which layer needs fine-tuning? (teacher-student MLP, Liu 2026)

Student = teacher {base.widths} with layer 2 re-drawn; Adam, {base.steps} steps, seed {base.seed}.
Share of the total L1 update held by each tensor:

{table}

With lambda = 0, W2 (the only layer that needed to change) holds {w2_0:.0%} of the update:
raw update sizes mislead. With lambda = 1e-3 it holds {w2_1:.0%}.

{chr(10).join(f"![{name}]({name})" for name in figures)}
"""
    return markdown, "Teacher-student update shares\n" + table


SECTIONS: list[Section] = [teacher_student_section]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Subnet Lab demo and write a report.")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: out/)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    parts = [f"# Subnet Lab report\n\nFast mode: {fast_mode()}.\n"]
    for section in SECTIONS:
        markdown, summary = section(args.out)
        parts.append(markdown)
        print(summary, end="\n\n")
    report = args.out / "report.md"
    report.write_text("\n".join(parts))
    print(f"report written to {report} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
