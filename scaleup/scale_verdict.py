"""The scale verdict: the lab's conclusions checked at every scale, in sentences worded from the numbers.

Four questions (issue 29), each answered in one sentence per run of :func:`scale_verdict`, and a fifth
on the yardstick itself:

1. Does LIFT's frontier dominance on the near target ``add2`` survive from the smallest model to the
   largest (its area rank, and its area against full fine-tuning and against the best other method)?
2. Does LoRA still never reach 90% of full fine-tuning's best target on the far target ``facts_b``?
3. Do RoSA (Nikdan et al. 2024) and SpIEL (Ansell et al. 2024) rank the same at each scale?
4. Which sparse methods reach full fine-tuning's best target (99% of it) at each scale?
5. Does the answer survive another pretraining run of the same model (:func:`replicate_verdict`)? The
   fine-tuning seeds measure one spread; a second pretraining of the same config, its weights different (on
   another CPU the same code rounds differently), measures another, which a single checkpoint cannot show.

The yardstick is the frontier report's (``scaleup.frontier_report``): a gap is *separated* only when the
seed intervals [min, max] do not overlap, and one seed has no spread to judge by. A scale whose folder is
unfinished says how many of its planned seeds it holds, so an answer from part of a grid reads as such.
"""

from __future__ import annotations

from collections.abc import Sequence

from scaleup import frontier as fr
from scaleup.frontier_report import compare_spreads, separated
from scaleup.methods import get_method
from scaleup.scales import Scale, by_target, methods_of

AT_TARGET, AT_FULL = fr.MATCHED[0], fr.MATCHED[-1]
"""Matched targets: the share of full FT's best target LoRA is asked to reach (question 2), and the share
that counts as reaching full fine-tuning (question 4)."""
NOT_TRAINING_A_MASK = ("full", "adapter")
"""Method families that are not sparse fine-tuning (``Method.family``): question 4 leaves them out."""


def _name(method: str) -> str:
    return get_method(method).label


def _ranked(scale: Scale) -> list[str]:
    """The scale's methods by area under their frontier, largest first."""
    return sorted(scale.entries, key=lambda m: scale.entries[m]["area"]["mean"], reverse=True)


def _note(scale: Scale, methods: Sequence[str] | None = None) -> str:
    """" (2 of 3 seeds with the whole lr grid)" where one of ``methods`` has fewer such seeds than planned,
    else "". Without ``methods``: every method of the scale, and those its command names with no run yet."""
    named = [*scale.entries, *scale.partial] if methods is None else list(methods)
    parts = []
    if not all(scale.finished(m) for m in named):
        parts.append(f"{min(scale.seeds_of(m) for m in named)} of {scale.seeds} seeds with the whole lr grid")
    if methods is None and scale.pending:
        parts.append(f"not run yet: {', '.join(_name(m) for m in scale.pending)}")
    return f" ({'; '.join(parts)})" if parts else ""


def _caveat(unfinished: Sequence[Scale]) -> str:
    """A clause naming the scales answered from unfinished grids, or ""."""
    return f" (from unfinished grids at {', '.join(s.label for s in unfinished)})" if unfinished else ""


def _standing(scale: Scale, method: str) -> tuple[str, str]:
    """Where ``method``'s area stands at a scale: a category ("dominates", "first", "behind", "beaten",
    "alone") and its words."""
    area = scale.entries[method]["area"]
    ranked = _ranked(scale)
    others = [m for m in ranked if m != method]
    if not others:
        return "alone", "the only method with a finished seed"
    above = [m for m in others if separated(scale.entries[m]["area"], area)]
    if above:
        return "beaten", f"below {_name(above[0])} beyond the seed spread"
    nearest = scale.entries[others[0]]["area"]
    why = "within the seed spread" if min(area["n"], nearest["n"]) >= 2 else "one seed: no spread measured"
    if ranked[0] != method:
        return "behind", f"behind {_name(others[0])} ({why})"
    apart = [m for m in others if separated(area, scale.entries[m]["area"])]
    if others[0] in apart:
        return "dominates", (f"first, separated from the runner-up and from {len(apart)} of the other "
                             f"{len(others)}")
    return "first", f"first, not separated from the runner-up ({why})"


def _trend_line(columns: Sequence[Scale]) -> list[Scale]:
    """The columns of the model family measured at the most sizes (ties: the one holding the largest model):
    a trend is read along one family, the others (an architecture at one size) stand beside it."""
    kinds = {s.kind: [c for c in columns if c.kind == s.kind] for s in columns}
    return max(kinds.values(), key=lambda line: (len({c.parameters for c in line}), line[-1].parameters or 0))


def dominance_verdict(scales: list[Scale], method: str = "lift", target: str = "add2") -> str:
    """Question 1: does ``method``'s frontier dominance on ``target`` survive from the smallest model to the
    largest? Each scale: its area rank, its standing, and its area against full FT and the best other."""
    name = _name(method)
    head = f"**Does {name}'s frontier dominance on `{target}` survive as the model grows?**"
    columns = [s for s in by_target(scales).get(target, []) if method in s.entries]
    if not columns:
        return f"- {head} Not measured: no `{target}` folder holds a finished {name} seed."
    clauses, standings = [], []
    for s in columns:
        ranked = _ranked(s)
        category, words = _standing(s, method)
        standings.append((category, words))
        area = s.entries[method]["area"]
        clause = f"{s.model}{_note(s)}: rank {ranked.index(method) + 1} of {len(ranked)}, {words}"
        reference = next((m for m in ranked if get_method(m).reference and m != method), None)
        if reference:
            clause += f"; against {_name(reference)}: {compare_spreads(area, s.entries[reference]['area'])}"
        best = next((m for m in ranked if m not in (method, reference)), None)
        if best:
            clause += f"; against the best other, {_name(best)}: {compare_spreads(area, s.entries[best]['area'])}"
        clauses.append(clause)
    line = _trend_line(columns)
    (first, first_words), (last, last_words) = (standings[columns.index(line[0])], standings[columns.index(line[-1])])
    small, large = line[0].model, line[-1].model
    standings = [standings[columns.index(s)] for s in line]
    if len(line) == 1:
        answer = f"one size per model family only ({', '.join(s.model for s in columns)}): no trend to judge"
    elif all(c == "dominates" for c, _ in standings):
        answer = f"yes, first and separated from the runner-up at every scale from {small} to {large}"
    elif first != "dominates":
        answer = f"there is no dominance to carry: at the smallest scale, {small}, {name} is {first_words}"
    elif last == "beaten":
        answer = f"no: at {large} {name} is {last_words}"
    elif last == "dominates":
        answer = f"at the ends yes ({small} and {large}), not at every scale between them"
    else:
        answer = f"not settled: at {large} {name} is {last_words}"
    return f"- {head} {answer}{_caveat([s for s in columns if _note(s)])}: " + "; ".join(clauses) + "."


def lora_reach_verdict(scales: list[Scale], target: str = "facts_b", share: float = AT_TARGET) -> str:
    """Question 2: does the adapter baseline (LoRA: ``Method.family`` "adapter") never reach ``share`` of
    full FT's best target on ``target``, at any scale?"""
    key = f"retention_at_{share:g}"
    head = f"**Does LoRA still never reach {share:.0%} of full FT's best target on `{target}`?**"
    clauses, reached, judged, unfinished = [], [], [], []
    for s in by_target(scales).get(target, []):
        lora = next((m for m in s.entries if get_method(m).family == "adapter"), None)
        if lora is None:
            continue
        if not s.has_reference:
            clauses.append(f"{s.model}: no finished full FT seed to match against")
            continue
        judged.append(s)
        spread, seeds = s.entries[lora][key], s.seeds_of(lora)
        note = _note(s, [lora, *[m for m in s.entries if get_method(m).reference]])
        unfinished += [s] if note else []
        if spread["n"]:
            reached.append(s.model)
            clauses.append(f"{s.model}{note}: reaches it on {spread['n']} of {seeds} seeds, keeping "
                           f"{spread['mean']:.3f} [{spread['min']:.3f}, {spread['max']:.3f}] of the source there")
        else:
            clauses.append(f"{s.model}{note}: never (0 of {seeds} seed{'s' * (seeds != 1)})")
    if not judged:
        return f"- {head} Not measured: no `{target}` folder holds finished LoRA and full FT seeds."
    answer = (f"no, it reaches it at {', '.join(reached)}" if reached else
              f"yes, at every scale measured ({', '.join(s.model for s in judged)})")
    return f"- {head} {answer}{_caveat(unfinished)}: " + "; ".join(clauses) + "."


def order_verdict(scales: list[Scale], first: str = "rosa", second: str = "spiel") -> str:
    """Question 3: do two methods keep the same order of frontier area at every scale (every target)?"""
    a, b = _name(first), _name(second)
    head = f"**Do {a} and {b} rank the same at each scale?**"
    columns = [s for s in scales if first in s.entries and second in s.entries]
    if not columns:
        return f"- {head} Not measured: no folder holds finished seeds of both."
    clauses, above, apart = [], [], 0
    for s in columns:
        ranked = _ranked(s)
        top, low = (first, second) if ranked.index(first) < ranked.index(second) else (second, first)
        above.append(top)
        apart += separated(s.entries[top]["area"], s.entries[low]["area"])
        clauses.append(f"{s.label}{_note(s, [first, second])}: {a} rank {ranked.index(first) + 1}, {b} rank "
                       f"{ranked.index(second) + 1} of {len(ranked)}; {_name(top)} above: "
                       f"{compare_spreads(s.entries[top]['area'], s.entries[low]['area'])}")
    if len(columns) == 1:
        answer = f"one scale only ({columns[0].label}): no trend to judge"
    elif len(set(above)) == 1:
        answer = (f"yes, {_name(above[0])} above {b if above[0] == first else a} at every scale where both ran, "
                  f"beyond the seed spread at {apart} of {len(columns)}")
    else:
        answer = (f"no, the order changes: {a} above at {above.count(first)}, {b} at {above.count(second)} of "
                  f"{len(columns)} scales, beyond the seed spread at {apart}")
    unfinished = [s for s in columns if _note(s, [first, second])]
    return f"- {head} {answer}{_caveat(unfinished)}: " + "; ".join(clauses) + "."


def reach_full_verdict(scales: list[Scale], share: float = AT_FULL) -> str:
    """Question 4: which sparse methods (every family but full and adapter) reach ``share`` of full FT's best
    target on every finished seed, at each scale; and which do so at every scale they ran at (two or more)."""
    key = f"retention_at_{share:g}"
    head = f"**Which sparse methods reach full FT's best target ({share:.0%} of it) at each scale?**"
    judged = [s for s in scales if s.has_reference]
    if not judged:
        return f"- {head} Not measured: no folder holds a finished full FT seed."
    clauses, reached_at = [], {}
    for s in judged:
        sparse = [m for m in _ranked(s) if get_method(m).family not in NOT_TRAINING_A_MASK]
        every = [m for m in sparse if s.entries[m][key]["n"] == s.seeds_of(m)]
        some = [f"{_name(m)} ({s.entries[m][key]['n']} of {s.seeds_of(m)} seeds)" for m in sparse
                if 0 < s.entries[m][key]["n"] < s.seeds_of(m)]
        for m in sparse:
            reached_at.setdefault(m, []).append(m in every)
        clauses.append(f"{s.label}{_note(s)}: " + (", ".join(_name(m) for m in every) or "none")
                       + (f"; on some seeds: {', '.join(some)}" if some else ""))
    always = [_name(m) for m in methods_of(judged) if len(reached_at.get(m, [])) > 1 and all(reached_at[m])]
    answer = (f"on every seed at every scale it ran at (two or more): {', '.join(always)}" if always else
              "no sparse method does so on every seed at every scale it ran at (two or more)")
    return f"- {head} {answer}{_caveat([s for s in judged if _note(s)])}: " + "; ".join(clauses) + "."


def grid_verdict(scales: list[Scale]) -> str:
    """Whether the learning-rate grids held each method's best rate inside them: a rank read from a grid
    whose chosen rate sits at its edge may move when the grid is widened, so the answers above carry that."""
    head = "**Were the learning-rate grids wide enough?**"
    edged = [s for s in scales if s.lr_edge]
    if not edged:
        return f"- {head} yes: every method's chosen rate lies inside its grid at every scale."
    clauses = [f"{s.label}: " + ", ".join(f"{_name(m)} ({edge})" for m, edge in s.lr_edge.items()) for s in edged]
    return (f"- {head} no, at {len(edged)} of {len(scales)} folders the chosen rate is the grid's largest or "
            "smallest, so a wider grid may move the ranks there (top: the target may still rise at a larger rate; "
            "bottom: the smallest rate already reaches the best target, so the frontier's low-forgetting end may "
            "lie below the grid): " + "; ".join(clauses) + ".")


def _checkpoint(scale: Scale) -> str:
    """The pretrained model a folder's rows came from, in words ("30d043dc2b22d96f", "not recorded", or several)."""
    return " + ".join(scale.checkpoints) or "none stored"


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (ties share their mean rank)."""
    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"rank_correlation needs two sequences of one length >= 2, got {len(a)} and {len(b)}")
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    norm = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / norm if norm else float("nan")


def replicate_pairs(scales: Sequence[Scale], replicates: Sequence[Scale]) -> list[tuple[Scale, Scale]]:
    """(the scale, its replicate) for each replicate: the scale of the same model and target. A replicate of no
    given scale is an error naming it."""
    pairs = []
    for r in replicates:
        match = next((s for s in scales if (s.model, s.target) == (r.model, r.target)), None)
        if match is None:
            raise ValueError(f"replicate {r.folder}: no folder of {r.label} to compare it with")
        pairs.append((match, r))
    return pairs


def replicate_verdict(scales: list[Scale], replicates: list[Scale]) -> str:
    """Question 5: each replicate (the same model and target, fine-tuned from another pretraining run) against
    the scale it repeats: the first method of each, how many shared methods' areas moved beyond the seed
    spread, the rank correlation of their areas, and LIFT's rank in each."""
    head = "**Does the answer survive another pretraining run of the same model?**"
    pairs = replicate_pairs(scales, replicates)
    if not pairs:
        return f"- {head} Not measured: no folder repeats a scale from another pretraining run."
    clauses, same_first = [], 0
    for s, r in pairs:
        ranked_s, ranked_r = _ranked(s), _ranked(r)
        shared = [m for m in ranked_s if m in r.entries]
        first_s, first_r = ranked_s[0], ranked_r[0]
        same_first += first_s == first_r
        moved = [m for m in shared if separated(s.entries[m]["area"], r.entries[m]["area"])
                 or separated(r.entries[m]["area"], s.entries[m]["area"])]
        rho = rank_correlation([s.entries[m]["area"]["mean"] for m in shared],
                               [r.entries[m]["area"]["mean"] for m in shared]) if len(shared) >= 2 else float("nan")
        lift = (f"; {_name('lift')} rank {ranked_s.index('lift') + 1} against {ranked_r.index('lift') + 1}, "
                f"area {compare_spreads(s.entries['lift']['area'], r.entries['lift']['area'])}"
                if "lift" in s.entries and "lift" in r.entries else "")
        clauses.append(f"{s.label} (`{s.folder.name}`, pretrained model {_checkpoint(s)}, against "
                       f"`{r.folder.name}`, {_checkpoint(r)}): first {_name(first_s)} "
                       f"({s.entries[first_s]['area']['mean']:.3f}) against {_name(first_r)} "
                       f"({r.entries[first_r]['area']['mean']:.3f}); {len(moved)} of {len(shared)} shared methods' "
                       f"areas moved beyond the seed spread; rank correlation of the areas {rho:.2f}{lift}")
    answer = ("yes for the first method: the same at every pair" if same_first == len(pairs) else
              f"no: the first method changes at {len(pairs) - same_first} of {len(pairs)} pairs, so an answer "
              "from one checkpoint carries the pretraining run's spread as well as the seeds'")
    return f"- {head} {answer}: " + "; ".join(clauses) + "."


def scale_verdict(scales: list[Scale], replicates: Sequence[Scale] = ()) -> str:
    """The answers, one markdown bullet each; the fifth only with ``replicates``."""
    answers = [dominance_verdict(scales), lora_reach_verdict(scales), order_verdict(scales),
               reach_full_verdict(scales), grid_verdict(scales)]
    if replicates:
        answers.append(replicate_verdict(scales, list(replicates)))
    return "\n".join(answers)
