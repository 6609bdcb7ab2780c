"""The cross-scale report (scaleup.scales, scale_verdict, scale_report) on small fabricated results folders.

Each folder is written through the lab's own store (``scaleup.results.store``), one frontier point per run:
a point (retention x, target y) has area x * y, and it reaches a matched target t when y >= t. Seed s adds
0.01 * s to x, so the seeds of one method spread over [x, x + 0.02] and two methods 0.1 apart are separated.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scaleup import scale_report
from scaleup.bench_config import BenchConfig
from scaleup.results import store
from scaleup.scale_verdict import (dominance_verdict, grid_verdict, lora_reach_verdict, order_verdict,
                                   rank_correlation, reach_full_verdict, replicate_verdict, scale_verdict)
from scaleup.scales import load_scale

SIZES = {"tiny": 1_000, "small": 10_000}
"""Full FT's trainable count written into a fabricated folder: the model size the report reads."""


def _folder(root: Path, preset: str, target: str, points: dict[str, tuple[float, float | tuple[float, ...]]], *,
            seeds: int = 3,
            lrs: tuple[float, ...] = (1e-2,), skip: tuple[tuple[str, float, int], ...] = (),
            command: str | None = None) -> Path:
    """A results folder of ``points[method] = (x, y)`` on every seed (y: one per seed where a tuple) and
    sparse/LoRA learning rate (full FT at one rate), the runs in ``skip`` (method, lr, seed) left out, as a
    benchmark still running would leave them."""
    folder = root / f"{preset}_{target}"
    cfg = BenchConfig(preset=preset, target=target, seeds=seeds, densities=(), sweep_all_seeds=True, eval_every=50,
                      lrs_full=(1e-3,), lrs_sparse=lrs, lrs_lora=lrs)
    results = store(folder, cfg)
    for method, (x, y) in points.items():
        for lr in cfg.lrs(method):
            for seed in range(seeds):
                if (method, lr, seed) in skip:
                    continue
                at = y[seed] if isinstance(y, tuple) else y
                point = dict(retention_token=x + 0.01 * seed, target_test_token=at)
                results.append(dict(method=method, budget="all" if method == "full" else "lora_equal", lr=lr,
                                    seed=seed, target_test=at, target_val=at,
                                    trainable=SIZES[preset] if method == "full" else 100, trace=[point]))
    if command is not None:
        (folder / "command.txt").write_text(command)
    return folder


BASE = {"full": (0.5, 1.0), "lora": (0.3, 0.5), "magnitude": (0.7, 1.0), "lift": (0.9, 1.0)}


def test_lift_first_at_every_size_survives_and_a_larger_model_that_beats_it_flips_the_answer(tmp_path: Path) -> None:
    tiny = load_scale(_folder(tmp_path, "tiny", "add2", BASE))
    held = load_scale(_folder(tmp_path / "a", "small", "add2", BASE))
    lost = load_scale(_folder(tmp_path / "b", "small", "add2", {**BASE, "magnitude": (0.97, 1.0)}))

    survives = dominance_verdict([held, tiny])  # any order: columns go by model size
    assert "survive as the model grows?** yes, first and separated from the runner-up at every scale from GPT tiny " \
           "to GPT small" in survives
    assert "GPT tiny: rank 1 of 4" in survives and "against full FT: 0.910 vs 0.510 (+0.400, separated" in survives
    assert "against the best other, magnitude: 0.910 vs 0.710" in survives

    flipped = dominance_verdict([tiny, lost])
    assert "** no: at GPT small LIFT is below magnitude beyond the seed spread" in flipped
    assert "GPT small: rank 2 of 4" in flipped
    assert "one size per model family only" in dominance_verdict([tiny])
    behind = load_scale(_folder(tmp_path / "c", "tiny", "add2", {**BASE, "magnitude": (0.905, 1.0)}))
    assert "** there is no dominance to carry: at the smallest scale, GPT tiny, LIFT is behind magnitude (within " \
           "the seed spread)" in dominance_verdict([behind, held])


def test_lora_reaching_90_percent_of_full_ft_flips_the_answer(tmp_path: Path) -> None:
    tiny = load_scale(_folder(tmp_path, "tiny", "facts_b", BASE))
    never = load_scale(_folder(tmp_path / "a", "small", "facts_b", BASE))
    reaches = load_scale(_folder(tmp_path / "b", "small", "facts_b", {**BASE, "lora": (0.6, 0.95)}))

    assert "** yes, at every scale measured (GPT tiny, GPT small): GPT tiny: never (0 of 3 seeds); GPT small: " \
           "never (0 of 3 seeds)." in lora_reach_verdict([tiny, never])
    text = lora_reach_verdict([tiny, reaches])
    assert "** no, it reaches it at GPT small:" in text
    assert "GPT small: reaches it on 3 of 3 seeds, keeping 0.610 [0.600, 0.620] of the source there" in text


def test_an_unfinished_folder_reports_its_n_and_never_averages_a_seed_with_part_of_the_grid(tmp_path: Path) -> None:
    lrs = (3e-3, 1e-2)
    skip = (("lift", 1e-2, 1), ("lift", 3e-3, 2), ("lift", 1e-2, 2))  # seed 1: one of two rates; seed 2: none
    folder = _folder(tmp_path, "small", "add2", BASE, lrs=lrs, skip=skip,
                     command="PYTHONPATH=. python -m scaleup.compare --methods full,lora,lift,magnitude,spiel --out x")
    scale = load_scale(folder)
    assert scale.seeds_of("lift") == 1 and scale.partial == {"lift": 1} and scale.pending == ("spiel",)
    assert not scale.complete and scale.runs == scale.planned_runs - 3 - len(lrs) * 3
    assert scale.entries["lift"]["area"] == dict(mean=0.9, min=0.9, max=0.9, n=1)  # seed 0 alone
    assert scale_report.area_cell(scale, "lift") == "0.900 [0.900, 0.900] (n=1 of 3, 1 with part of the lr grid)"
    assert scale_report.area_cell(scale, "magnitude") == "0.710 [0.700, 0.720] (n=3)"
    assert scale_report.area_cell(scale, "spiel") == "not run yet"  # named by the command
    assert scale_report.area_cell(scale, "rosa") == "not run"
    text = dominance_verdict([scale])
    assert "GPT small (1 of 3 seeds with the whole lr grid; not run yet: SpIEL): rank 1 of 4" in text
    assert "one seed: no spread measured" in text and "(from unfinished grids at GPT small, add2)" in text
    assert "18 of 27 planned runs stored (unfinished); named by its command, not run yet: spiel" in \
        scale_report.folder_line(scale, None)
    finished = load_scale(_folder(tmp_path / "done", "small", "add2", BASE, lrs=lrs))
    assert finished.complete and "(complete)" in scale_report.folder_line(finished, None)
    assert "with the whole lr grid" not in dominance_verdict([finished])


def test_rosa_and_spiel_order_and_which_sparse_methods_reach_full_ft(tmp_path: Path) -> None:
    same = {**BASE, "rosa": (0.6, 1.0), "spiel": (0.4, 1.0)}
    tiny = load_scale(_folder(tmp_path, "tiny", "add2", same))
    small_same = load_scale(_folder(tmp_path / "a", "small", "facts_b", same))
    small_flipped = load_scale(_folder(tmp_path / "b", "small", "facts_b", {**same, "spiel": (0.8, 1.0)}))

    assert "** yes, RoSA above SpIEL at every scale where both ran, beyond the seed spread at 2 of 2" \
        in order_verdict([tiny, small_same])
    flipped = order_verdict([tiny, small_flipped])
    assert "** no, the order changes: RoSA above at 1, SpIEL at 1 of 2 scales" in flipped
    assert "GPT small, facts_b: RoSA rank 4, SpIEL rank 2 of 6; SpIEL above: 0.810 vs 0.610" in flipped

    short = load_scale(_folder(tmp_path / "c", "small", "add2", {**same, "magnitude": (0.7, (0.95, 1.0, 0.9))}))
    reach = reach_full_verdict([tiny, short])  # every family but full FT and the adapter: RoSA's sparse part counts
    assert "GPT tiny, add2: LIFT, magnitude, RoSA, SpIEL;" in reach
    assert reach.endswith("GPT small, add2: LIFT, RoSA, SpIEL; on some seeds: magnitude (1 of 3 seeds).")
    assert "at every scale it ran at (two or more): LIFT, RoSA, SpIEL:" in reach


def test_the_command_line_writes_the_same_report_and_figure_twice_and_names_a_bad_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = _folder(tmp_path, "small", "add2", {}, command="python -m scaleup.compare --methods full,lift")
    folders = [str(_folder(tmp_path, "tiny", "add2", BASE)), str(_folder(tmp_path, "small", "facts_b", BASE)),
               str(started)]  # a benchmark that has stored no run yet
    out = tmp_path / "scale_verdict.md"
    assert scale_report.main(["--out", str(out), *folders]) == 0
    first = out.read_text(), (tmp_path / "scale_verdict.png").read_bytes()
    assert scale_report.main(["--out", str(out), *folders]) == 0
    assert (out.read_text(), (tmp_path / "scale_verdict.png").read_bytes()) == first
    text = first[0]
    assert "### `add2`: Area under the learning-forgetting frontier" in text and "| method | GPT tiny (1000) |" in text
    assert "| LIFT | 0.910 [0.900, 0.920] (n=3) | not run yet |" in text
    assert "GPT small, add2, size not known yet (no full FT run); 0 of 6 planned runs stored (unfinished)" in text
    assert "| LoRA | never (reached on 0 of 3 seeds) |" in text
    assert "![area against model size](scale_verdict.png)" in text and "## Verdict" in text
    capsys.readouterr()
    with pytest.raises(SystemExit):
        scale_report.main([folders[0], str(tmp_path)])
    assert f"{tmp_path} holds no benchmark (no config.json)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        scale_report.main([folders[0], folders[0]])
    assert "given twice" in capsys.readouterr().err


def test_a_replicate_from_another_pretraining_run_is_compared_with_the_scale_it_repeats(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = load_scale(_folder(tmp_path, "tiny", "add2", BASE))  # LIFT first: 0.91, magnitude 0.71, full 0.51, LoRA 0.31
    same = load_scale(_folder(tmp_path / "a", "tiny", "add2", {**BASE, "lora": (0.35, 0.5)}))
    flipped = load_scale(_folder(tmp_path / "b", "tiny", "add2", {**BASE, "full": (0.95, 1.0), "lift": (0.4, 1.0)}))

    kept = replicate_verdict([tiny], [same])
    assert "** yes for the first method: the same at every pair:" in kept
    assert "first LIFT (0.910) against LIFT (0.910); 1 of 4 shared methods' areas moved beyond the seed spread; " \
           "rank correlation of the areas 1.00; LIFT rank 1 against 1" in kept
    moved = replicate_verdict([tiny], [flipped])
    assert "** no: the first method changes at 1 of 1 pairs" in moved
    assert "first LIFT (0.910) against full FT (0.960); 2 of 4 shared methods' areas moved" in moved
    assert "LIFT rank 1 against 3, area 0.910 vs 0.410 (+0.500, separated" in moved
    assert "pretrained model not recorded" in moved  # the fabricated rows record no fingerprint
    assert replicate_verdict([tiny], []).endswith(
        "Not measured: no folder repeats a scale from another pretraining run.")
    assert "another pretraining run" not in scale_verdict([tiny])
    assert "another pretraining run" in scale_verdict([tiny], [same])
    with pytest.raises(ValueError, match="no folder of GPT small, add2 to compare it with"):
        replicate_verdict([tiny], [load_scale(_folder(tmp_path / "c", "small", "add2", BASE))])
    assert rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 2, 4], [1, 3, 3, 4]) == pytest.approx(1.0)  # ties share their mean rank
    with pytest.raises(ValueError, match="rank_correlation needs"):
        rank_correlation([1.0], [1.0])

    out = tmp_path / "scale_verdict.md"
    assert scale_report.main(["--out", str(out), str(tiny.folder), "--replicates", str(flipped.folder)]) == 0
    text = out.read_text()
    assert "Replicates (another pretraining run" in text and "another pretraining run of the same model?** no" in text
    assert text.count("| method | GPT tiny (1000) |") == 2  # the replicate is no column
    capsys.readouterr()
    with pytest.raises(SystemExit):
        scale_report.main([str(tiny.folder), "--replicates", str(tmp_path / "c" / "small_add2")])
    assert "argument --replicates:" in capsys.readouterr().err


def test_committed_scales_skips_and_names_a_folder_not_committed_yet(tmp_path: Path) -> None:
    _folder(tmp_path, "tiny", "add2", BASE)
    (tmp_path / "empty").mkdir()
    found, missing = scale_report.committed_scales(tmp_path, ("tiny_add2", "small_add2", "empty"))
    assert [s.label for s in found] == ["GPT tiny, add2"] and missing == ["small_add2", "empty"]


def test_a_chosen_rate_at_the_edge_of_its_grid_is_named_and_an_inside_one_is_not(tmp_path: Path) -> None:
    inside = load_scale(_folder(tmp_path, "tiny", "add2", BASE))  # one sparse rate: no edge to sit on
    edged = load_scale(_folder(tmp_path / "a", "small", "add2", BASE, lrs=(1e-2, 3e-2)))
    assert inside.lr_edge == {} and edged.lr_edge == {"lora": "bottom", "magnitude": "bottom", "lift": "bottom"}
    assert grid_verdict([inside]).endswith("yes: every method's chosen rate lies inside its grid at every scale.")
    assert "** no, at 1 of 2 folders the chosen rate is the grid's largest or smallest, so a wider grid may move " \
           "the ranks there (top: " in grid_verdict([inside, edged])
    assert grid_verdict([inside, edged]).endswith(
        ": GPT small, add2: LoRA (bottom), magnitude (bottom), LIFT (bottom).")


def test_a_command_file_with_prose_beside_the_command_still_names_its_methods(tmp_path: Path) -> None:
    from scaleup.scales import named_methods

    (tmp_path / "command.txt").write_text("python -m scaleup.compare --methods full,rosa --out x (the folder's "
                                          "first 63 runs; an unmatched quote)\n")
    assert named_methods(tmp_path) == ["full", "rosa"]
