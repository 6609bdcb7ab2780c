"""The learning-forgetting frontiers in words and pictures: table, verdict and figure.

Reads only stored runs (``scaleup.results``) through ``scaleup.frontier``; trains nothing.
The verdict answers the benchmark's questions from the numbers, with the seed spread as
the yardstick: two methods are *separated* on a measure when their [min, max] intervals
over seeds do not overlap, so a gap smaller than the seeds' own scatter is never called
a win (Biderman et al. 2024 compare LoRA and full fine-tuning the same way, over seeds).

1. Does a sparse criterion reach full fine-tuning's target with more retention than LoRA
   at a matched trainable count (the LoRA-equal budget)?
2. Whose frontier dominates (the largest area under it), and by how much?
3. Does LIFT keep more of the source than full fine-tuning and LoRA at a matched target
   (its abstract: "up to 20% more", Liu et al. 2025)?
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from scaleup import frontier as fr
from scaleup.method_base import LORA_EQUAL
from scaleup.methods import get_method, known_methods, method_color
from sparsity.sweep import markdown_table

Spread = Mapping[str, float]


def _cell(spread: Spread) -> str:
    if not spread["n"]:
        return "never reached"
    return f"{spread['mean']:.3f} [{spread['min']:.3f}, {spread['max']:.3f}] (n={spread['n']})"


def frontier_table(rows: Mapping[str, Mapping[str, Any]], x: str = fr.X, y: str = fr.Y) -> str:
    """Area under the frontier and retention at matched target per (method, budget), as markdown."""
    lines = [[e["method"], e["budget"], e["seeds"], _cell(e["area"]),
              *[_cell(e[f"retention_at_{share:g}"]) for share in fr.MATCHED]] for e in fr.summary(rows, x, y)]
    header = ["method", "budget", "seeds", "area under frontier",
              *[f"retention at {share:.0%} of full FT's best target" for share in fr.MATCHED]]
    return (f"Learning-forgetting frontiers (Biderman et al. 2024): every learning rate and every evaluation "
            f"along training, `{y}` (target) against `{x}` (retention); mean [min, max] over seeds.\n\n"
            + markdown_table(header, lines, "l" * len(header), compact_rule=True))


def separated(a: Spread, b: Spread) -> bool:
    """Whether ``a`` lies above ``b`` by more than the seeds' scatter: a's min exceeds b's max (two or
    more seeds each: one seed has no scatter to judge by), or ``b`` never reaches the matched target
    on any seed while ``a`` does."""
    if a["n"] and not b["n"]:
        return True
    return bool(a["n"] >= 2 and b["n"] >= 2 and a["min"] > b["max"])


def compare_spreads(a: Spread, b: Spread) -> str:
    """Two spreads over seeds in words: "0.61 vs 0.42 (+0.19, separated: the seed intervals do not overlap)",
    "... within the seed spread", "... one seed: no spread measured", or which of the two never reaches it."""
    if not a["n"] and not b["n"]:
        return "neither reaches it"
    if not a["n"] or not b["n"]:
        reached, value = ("the first", a) if a["n"] else ("the second", b)
        return f"only {reached} reaches it ({value['mean']:.3f}); the other never does on any seed"
    gap = a["mean"] - b["mean"]
    if min(a["n"], b["n"]) < 2:
        how = "one seed: no spread measured"
    elif separated(a, b) or separated(b, a):
        how = "separated: the seed intervals do not overlap"
    else:
        how = "within the seed spread"
    return f"{a['mean']:.3f} vs {b['mean']:.3f} ({gap:+.3f}, {how})"


def _relative(a: Spread, b: Spread) -> str:
    if not a["n"] or not b["n"] or b["mean"] == 0:
        return "n/a"
    return f"{100 * (a['mean'] / b['mean'] - 1):+.0f}%"


def frontier_verdict(rows: Mapping[str, Mapping[str, Any]], x: str = fr.X, y: str = fr.Y,
                     share: float = fr.MATCHED[0]) -> str:
    """The three questions of the module docstring, answered from the frontiers (markdown lines)."""
    entries = fr.summary(rows, x, y)
    by = {(e["method"], e["budget"]): e for e in entries}
    key = f"retention_at_{share:g}"
    lines = []
    at_lora_equal = [e for e in entries if e["budget"] == LORA_EQUAL]
    lora = next((e for e in at_lora_equal if get_method(e["method"]).family == "adapter"), None)
    sparse = [e for e in at_lora_equal if get_method(e["method"]).family == "sparse"]
    references = [e for e in entries if get_method(e["method"]).reference]
    if lora and sparse and references:
        beat = [e for e in sparse if separated(e[key], lora[key])]
        best = max(sparse, key=lambda e: -math.inf if not e[key]["n"] else e[key]["mean"])
        if not lora[key]["n"]:
            reached = [e["method"] for e in sparse if e[key]["n"]]
            lines.append(f"- **Sparse vs LoRA at a matched count** (LoRA-equal budget): LoRA never reaches {share:.0%} "
                         f"of full FT's best target on any seed; the sparse criteria that do: "
                         f"{', '.join(reached) or 'none'}.")
        else:
            lines.append(f"- **Sparse vs LoRA at a matched count** (LoRA-equal budget), retention at {share:.0%} of "
                         f"full FT's best target: " + ("more than LoRA, beyond the seed spread, for "
                                                       + ", ".join(e["method"] for e in beat) if beat else
                                                       "no sparse criterion keeps more than LoRA beyond the seed "
                                                       "spread") + f"; the best, {best['method']}: "
                         f"{compare_spreads(best[key], lora[key])}.")
    if len(entries) >= 2:
        ranked = sorted(entries, key=lambda e: e["area"]["mean"], reverse=True)
        top, second, last = ranked[0], ranked[1], ranked[-1]
        dominated = [e for e in ranked[1:] if separated(top["area"], e["area"])]
        lines.append(f"- **Whose frontier dominates** (area under it): {top['method']} @ {top['budget']}; against "
                     f"the runner-up {second['method']} @ {second['budget']}: "
                     f"{compare_spreads(top['area'], second['area'])}; "
                     f"it is separated from {len(dominated)} of the other {len(ranked) - 1}.")
        lines.append(f"- **Measured separation** between the best and the worst frontier ({last['method']} @ "
                     f"{last['budget']}): {compare_spreads(top['area'], last['area'])}.")
    others = [(get_method(o["method"]).label, o) for o in references[:1] + ([lora] if lora else [])]
    for method in known_methods():
        claim = get_method(method).retention_claim
        for (m, budget), e in by.items():
            if m != method or not claim or not others:
                continue
            lines.append(f"- **{method} @ {budget} retention** at {share:.0%} of full FT's best target against "
                         + "; ".join(f"{name}: {compare_spreads(e[key], o[key])}, {_relative(e[key], o[key])}"
                                     for name, o in others)
                         + f" ({claim}).")
    return "\n".join(lines) if lines else "- Too few traced methods for a verdict."


def plot_frontiers(rows: Mapping[str, Mapping[str, Any]], title: str, methods: Sequence[str] | None = None,
                   budgets: Sequence[str] | None = None, ax: Any = None, x: str = fr.X, y: str = fr.Y,
                   before: tuple[float, float] | None = None, markers: Mapping[str, str] | None = None) -> Any:
    """Every traced point (faint) and each (method, budget)'s Pareto frontier over all its seeds' points
    (a step line toward the upper right: better is up and right); one colour per method
    (``scaleup.methods.method_color``), labelled by the method's label, and one marker per budget
    (``markers``: budget key -> marker, e.g. each ``Budget.marker``; "o" where not given); the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 6))
    points: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in rows.values():
        if (methods is None or row["method"] in methods) and (budgets is None or row["budget"] in budgets):
            points.setdefault((row["method"], row["budget"]), []).extend(fr.run_points(row, x, y))
    names = list(dict.fromkeys(m for m, _ in points))
    kinds = list(dict.fromkeys(b for _, b in points))
    colors = {m: method_color(m) for m in names}
    markers = {b: (markers or {}).get(b, "o") for b in kinds}
    for (m, b), pts in points.items():
        ax.scatter(*zip(*pts), s=6, alpha=0.15, color=colors[m], marker=markers[b])
        front = fr.pareto(pts)  # by increasing x: on (x_i, x_i+1] the best reachable target is y_i+1
        ax.step([p[0] for p in front], [p[1] for p in front], where="pre", color=colors[m], linewidth=1.4,
                marker=markers[b], markersize=4)
    if before is not None:
        ax.scatter([before[0]], [before[1]], marker="x", color="black", s=50, zorder=5)
    ax.set(xlabel=f"retention of the source ({x})", ylabel=f"learning the target ({y})",
           xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=title)
    handles = ([Line2D([], [], color=colors[m], linewidth=2, label=get_method(m).label) for m in names]
               + [Line2D([], [], color="gray", marker=markers[b], linestyle="none", label=b) for b in kinds]
               + ([Line2D([], [], color="black", marker="x", linestyle="none", label="before FT")] if before else []))
    ax.legend(handles=handles, fontsize="x-small", loc="lower left")
    return ax
