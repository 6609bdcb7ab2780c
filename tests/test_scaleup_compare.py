"""The controlled benchmark (scaleup.compare) on the micro preset: budgets, freezing, resume, lr choice, errors,
and the spine underneath (criteria from the registry, budgets as SparseConfigs, training through fit)."""

import json
import re
from dataclasses import replace

import pytest
import torch

from scaleup import bench_config as bc
from scaleup import compare as cp
from scaleup import finetune as ft
from scaleup import grid
from scaleup import layers
from scaleup.method_dynamic import LiftSettings, RigLSettings
from scaleup.method_mask import L1Settings
from scaleup import methods as meth
from scaleup import report as rep
from scaleup import results as res
from scaleup import tasks as tk
from sparsity import registry, sweep
from sparsity.compact import CompactAdamW
from sparsity.train import cosine

WORLD = bc.MICRO_WORLD
TIMINGS = ("train_s", "select_s", "peak_mb")


def micro_config(**kw):
    base = dict(preset="micro", world=WORLD, steps=40, warmup=4, seeds=2, pretrain_steps=200, densities=(0.05,),
                lrs_full=(3e-3,), lrs_sparse=(3e-2,), lrs_lora=(3e-2,), l1=L1Settings(lam=1e-4), score_batches=2,
                batch_size=32)
    base.update(kw)
    return bc.BenchConfig(**base)


@pytest.fixture(scope="module")
def setup(cache):
    return bc.prepare(micro_config(), cache_dir=cache, progress=False)


def _unchanged(model, setup, name):
    return torch.equal(model.get_parameter(name), setup.reference[name])


def test_full_finetuning_learns_the_target_and_forgets_the_source(setup):
    assert setup.before["target_test"] == 0.0 and setup.before["retention"] > 0.3
    row = ft.run_cell(setup, "full", "all", 3e-3, 0)
    assert row["target_test"] > 0.8
    assert row["retention"] < setup.before["retention"]
    assert row["trainable"] == setup.pretrained.n_params()
    assert row["update_sparsity"]["mlp.fc"] < 0.05 and row["update_rank"]["mlp.fc"] > 0.9


def test_sparse_budgets_match_lora_and_frozen_entries_never_move(setup):
    lora_model, lora_costs = ft.finetune(setup, "lora", "lora_equal", 3e-2, 0)
    for method in ("lift", "gradient", "random"):
        model, costs = ft.finetune(setup, method, "lora_equal", 3e-2, 0)
        assert costs["trainable"] == lora_costs["trainable"]  # LoRA-equal: the same count, entry for entry
        assert all(_unchanged(model, setup, n) for n in ("tok_emb.weight", "pos_emb.weight", "ln_f.weight"))
        prof = ft.update_profile(model, setup.reference, 0.0)
        moved = sum((1 - prof["update_sparsity"][t]) for t in ("attn.qkv", "mlp.fc"))
        assert 0 < moved < 0.5
    n_weights = setup.n_weights
    _, costs = ft.finetune(setup, "random", "d0.05", 3e-2, 0)
    assert costs["trainable"] == pytest.approx(0.05 * n_weights, abs=8)
    _, costs = ft.finetune(setup, "2:4", "2:4", 3e-2, 0)
    assert costs["trainable"] == n_weights // 2
    lora_prof = ft.update_profile(lora_model, setup.reference, 0.0)
    r = setup.cfg.lora_rank
    assert lora_prof["update_rank"]["mlp.fc"] <= r / setup.pretrained.config.n_embd + 1e-9
    assert all(_unchanged(lora_model, setup, n) for n in ("tok_emb.weight", "blocks.0.ln1.weight"))


def test_set_criteria_stay_inside_their_set(setup):
    model, _ = ft.finetune(setup, "middle_blocks", "d0.05", 3e-2, 0)
    middle = layers.middle_blocks(setup.pretrained.config.n_layer)
    assert middle == [1]
    assert all(_unchanged(model, setup, n) for n, _ in model.named_parameters() if n.startswith("blocks.0."))
    assert not _unchanged(model, setup, "blocks.1.mlp.fc.weight")
    selection, _ = ft.scores(setup, "l1_discovered", 0)
    support = selection.support
    mask, _ = ft.select(setup, "l1_discovered", "lora_equal", 0)
    assert all(not (m & ~support[n]).any() for n, m in mask.items() if n in support)
    assert 0 < sum(int(m.sum()) for m in mask.values()) <= ft.budget_count(setup, "lora_equal")


def test_same_data_and_seed_give_the_same_run(setup):
    a = ft.run_cell(setup, "magnitude", "d0.05", 3e-2, 1)
    b = ft.run_cell(setup, "magnitude", "d0.05", 3e-2, 1)
    assert {k: v for k, v in a.items() if k not in TIMINGS} == {k: v for k, v in b.items() if k not in TIMINGS}


def _rows(out):
    return [json.loads(line) for line in (out / sweep.RESULTS).read_text().splitlines() if line.strip()]


def _strip(rows):
    return sorted(tuple(sorted((k, json.dumps(v)) for k, v in r.items() if k not in TIMINGS)) for r in rows)


def test_a_killed_benchmark_loses_nothing_and_resumes(tmp_path, cache):
    cfg = micro_config(steps=10, warmup=1, lora_equal=True, densities=())
    methods = ["full", "random"]  # 2 (method, budget) pairs x 2 seeds = 4 runs
    straight = tmp_path / "straight"
    assert cp.run(cfg, straight, methods, cache_dir=cache, progress=False) == 4
    killed = tmp_path / "killed"
    assert cp.run(cfg, killed, methods, cache_dir=cache, progress=False, stop_after=2) == 2
    assert len(_rows(killed)) == 2
    with (killed / sweep.RESULTS).open("a") as f:  # a kill in the middle of writing a line
        f.write('{"method": "random", "budget": "lora_eq')
    assert len(res.load_results(killed)) == 2
    assert cp.run(cfg, killed, methods, cache_dir=cache, progress=False) == 2
    assert cp.run(cfg, killed, methods, cache_dir=cache, progress=False) == 0  # nothing left to do
    assert _strip(_rows(killed)) == _strip(_rows(straight))
    for name in ("summary.csv", "summary.json", "report.md", "summary.png"):
        assert (killed / name).exists()
    summary = json.loads((killed / "summary.json").read_text())
    assert {(r["method"], r["budget"], r["n_seeds"]) for r in summary} == {("full", "all", 2), ("random", "lora_equal", 2)}


def test_a_results_folder_refuses_another_config(tmp_path, cache):
    cfg = micro_config(steps=10, warmup=1, seeds=1, densities=(), lora_equal=False)
    cp.run(cfg, tmp_path, ["full"], cache_dir=cache, progress=False)
    with pytest.raises(ValueError, match=r"another config \(differs in \['steps'"):
        cp.run(replace(cfg, steps=11), tmp_path, ["full"], cache_dir=cache, progress=False)


def _row(method, budget, lr, seed, val, test, val_loss=1.0):
    return {"method": method, "budget": budget, "lr": lr, "seed": seed, "target_val": val, "target_test": test,
            "target_val_loss": val_loss}


def test_the_learning_rate_is_chosen_on_validation_not_test():
    cfg = micro_config(lrs_sparse=(1e-3, 1e-2), seeds=1)
    rows = {res.cell_key(r["method"], r["budget"], r["lr"], 0): r for r in [
        _row("lift", "d0.05", 1e-3, 0, val=0.9, test=0.1),
        _row("lift", "d0.05", 1e-2, 0, val=0.5, test=1.0)]}
    assert res.best_lr(cfg, rows, "lift", "d0.05") == 1e-3
    del rows[res.cell_key("lift", "d0.05", 1e-2, 0)]
    assert res.best_lr(cfg, rows, "lift", "d0.05") is None  # the sweep is not finished


def test_a_tie_on_validation_goes_to_the_smallest_learning_rate():
    cfg = micro_config(lrs_sparse=(1e-3, 3e-3, 1e-2, 3e-2), seeds=1, lr_tie=0.01)
    vals = {1e-3: 0.40, 3e-3: 0.992, 1e-2: 1.0, 3e-2: 1.0}
    rows = {res.cell_key("lift", "d0.05", lr, 0): _row("lift", "d0.05", lr, 0, val=v, test=v, val_loss=1 / lr)
            for lr, v in vals.items()}
    assert res.best_lr(cfg, rows, "lift", "d0.05") == 3e-3  # within 0.01 of the best: tied, and the gentlest
    assert res.best_lr(replace(cfg, lr_tie=0.0), rows, "lift", "d0.05") == 1e-2  # exact ties only
    with pytest.raises(ValueError, match="lr_tie must be in"):
        micro_config(lr_tie=1.5)


def _entry(method, budget, target, target_std, retention):
    return {"method": method, "budget": budget, "target_test": target, "target_test_std": target_std,
            "retention": retention, "retention_std": 0.0}


def test_verdict_matches_within_one_spread_and_names_the_best_retainer():
    table = [_entry("full", "all", 0.90, 0.02, 0.10), _entry("lift", "d0.05", 0.87, 0.02, 0.40),
             _entry("random", "d0.05", 0.50, 0.05, 0.60), _entry("lora", "lora_equal", 0.80, 0.01, 0.30)]
    text = rep.verdict(table)
    assert "mean - std): lift @ d0.05 (matches full FT within spread)." in text
    assert "LoRA @ lora_equal on the target: 0.800 +- 0.010, falls short of full FT by 0.100." in text
    assert "Best retention overall: random @ d0.05" in text
    assert "Best retention among the methods that match full FT: lift @ d0.05" in text


def test_the_verdict_says_exceeds_where_a_method_beats_full_fine_tuning():
    table = [_entry("full", "all", 0.676, 0.02, 0.10), _entry("lora", "lora_equal", 0.965, 0.01, 0.30)]
    assert "LoRA @ lora_equal on the target: 0.965 +- 0.010, exceeds full FT by 0.289." in rep.verdict(table)
    one_seed = [_entry("full", "all", 1.0, 0.0, 0.0), _entry("lift", "d0.05", 1.0, 0.0, 0.0),
                _entry("lora", "lora_equal", 0.453, 0.0, 0.0)]
    text = rep.verdict(one_seed)
    assert "lift @ d0.05 (ties with full FT; one seed, no spread measured)" in text
    assert "falls short of full FT by 0.547; one seed, no spread measured" in text


def test_a_choice_at_the_edge_of_the_grid_is_flagged():
    cfg = micro_config(lrs_sparse=(1e-3, 3e-3, 1e-2), lrs_full=(1e-3,))
    assert [cfg.lr_edge("lift", lr) for lr in (1e-3, 3e-3, 1e-2)] == ["bottom", None, "top"]
    assert cfg.lr_edge("full", 1e-3) is None  # a grid of one value has no inside to compare with
    table = [_entry("full", "all", 0.90, 0.02, 0.10) | {"lr": 1e-3, "lr_edge": None},
             _entry("lift", "d0.05", 0.87, 0.02, 0.40) | {"lr": 1e-2, "lr_edge": "top"}]
    assert "edge of its grid (the best may lie outside it; widen the grid): lift @ d0.05 (0.01, top)." in \
        rep.verdict(table)
    assert rep.verdict(table[:1]).endswith("widen the grid): none.")


def cli_error(capsys, argv) -> str:
    """Run the command line on bad flags: an argparse error (exit status 2) before any work; its message."""
    with pytest.raises(SystemExit) as exit_info:
        cp.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_the_cli_takes_a_learning_rate_grid(tmp_path, cache, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(cp, "run", lambda cfg, *a, **k: seen.setdefault("cfg", cfg))
    monkeypatch.setattr(cp, "print_report", lambda *a: None)
    cp.main(["--preset", "micro", "--lrs-sparse", "1e-3, 3e-2", "--lrs-full", "1e-4", "--out", str(tmp_path)])
    assert seen["cfg"].lrs_sparse == (1e-3, 3e-2) and seen["cfg"].lrs_full == (1e-4,)
    assert seen["cfg"].lrs_lora == bc.default_config("micro", fast=True).lrs_lora
    assert "argument --lrs-lora: must be a number, got 'fast'" in cli_error(capsys, ["--lrs-lora", "fast", "--out", str(tmp_path)])
    assert "lrs_sparse must be a non-empty tuple of positive" in cli_error(
        capsys, ["--preset", "micro", "--lrs-sparse", "-1", "--out", str(tmp_path)])
    assert "must be comma-separated finite numbers" in cli_error(capsys, ["--lrs-full", "inf", "--out", str(tmp_path)])


def test_the_cli_says_how_many_runs_it_launches_before_it_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cp, "run", lambda *a, **k: print("started"))
    monkeypatch.setattr(cp, "print_report", lambda *a: None)
    cp.main(["--preset", "micro", "--methods", "full,lora,random", "--density", "0.01,0.05", "--seeds", "3",
             "--lrs-full", "1e-4,1e-3", "--lrs-sparse", "1e-2", "--lrs-lora", "1e-2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    # Each (method, budget) pair: its learning rates on seed 0, then the 2 other seeds at the chosen rate.
    # full: 2 lrs + 2 = 4; lora: 1 + 2 = 3; random at 1%, 5% and the LoRA-equal budget: 3 x (1 + 2) = 9.
    assert "scaleup.compare: 16 runs in all (5 method-budget pairs x learning rates x 3 seed(s))" in out
    assert out.index("16 runs") < out.index("started")


@pytest.mark.parametrize("argv, told, expected", [([], None, 1), ([], "2", 2), (["--threads", "3"], "2", 3)])
def test_the_cli_trains_on_the_threads_chosen_for_the_model(tmp_path, monkeypatch, argv, told, expected):
    """The micro preset is small: one thread, unless LAB_THREADS or --threads (which wins) says otherwise."""
    seen = []
    monkeypatch.setattr(cp, "run", lambda *a, **k: seen.append(torch.get_num_threads()))
    monkeypatch.setattr(cp, "print_report", lambda *a: None)
    if told is None:
        monkeypatch.delenv("LAB_THREADS", raising=False)
    else:
        monkeypatch.setenv("LAB_THREADS", told)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        cp.main(["--preset", "micro", "--methods", "full", "--out", str(tmp_path), *argv])
    finally:
        torch.set_num_threads(before)
    assert seen == [expected]


def test_report_mode_rebuilds_the_summary_without_training(tmp_path, cache, monkeypatch, capsys):
    cfg = micro_config(steps=10, warmup=1, seeds=1, densities=(), lora_equal=False)
    cp.run(cfg, tmp_path, ["full"], cache_dir=cache, progress=False)
    (tmp_path / "report.md").unlink()
    monkeypatch.setattr(grid, "run_cell", lambda *a, **k: pytest.fail("--report must not train"))
    md = tmp_path / "committed.md"
    md.write_text("old table\n## Notes\nwritten by hand\n")
    assert cp.main(["--report", "--methods", "full", "--out", str(tmp_path), "--md", str(md)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| full | 100% |" in report
    assert re.search(r"\| full \| 100% \| \d\.\d\d / \d\.\d{3} \|  \|", report)  # the lr sweep table
    assert "Full fine-tuning: target" in capsys.readouterr().out
    committed = md.read_text()
    assert "old table" not in committed and "| full | 100% |" in committed
    assert committed.endswith("## Notes\nwritten by hand\n")


def test_bad_input_raises_clear_errors(setup, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown: \\['bitfit'\\]"):
        meth.check_methods(["full", "bitfit"])
    with pytest.raises(ValueError, match="density must be in"):
        micro_config(densities=(0.0,))
    with pytest.raises(ValueError, match="target must be one of"):
        micro_config(target="copy")
    with pytest.raises(ValueError, match="no budget for the methods \\['lift'\\]"):
        cp.run(micro_config(densities=(), lora_equal=False), tmp_path / "x", ["full", "lift"], progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="runs at budgets"):
        ft.finetune(setup, "lora", "d0.05", 1e-3, 0)
    with pytest.raises(ValueError, match="method must be one of"):
        ft.finetune(setup, "bitfit", "all", 1e-3, 0)
    assert "argument --density: must be a number, got 'five'" in cli_error(capsys, ["--density", "five", "--out", str(tmp_path)])
    assert "holds no benchmark" in cli_error(capsys, ["--report", "--out", str(tmp_path / "nothing")])
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert "argument --out: " + str(a_file) + " is a file, not a folder" in cli_error(capsys, ["--out", str(a_file)])
    assert "argument --md: the folder" in cli_error(capsys, ["--md", str(tmp_path / "no" / "r.md"), "--out", str(tmp_path)])
    assert "argument --seeds: must be a positive int, got 0" in cli_error(capsys, ["--seeds", "0", "--out", str(tmp_path)])
    assert "argument --methods: " in cli_error(capsys, ["--methods", "full,bitfit", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="not a parameter name"):
        layers.layer_type("fc1.weight")


def test_fast_mode_defaults_are_ci_sized():
    cfg = bc.default_config("micro", fast=True)
    assert cfg.steps <= 50 and cfg.seeds == 1 and all(len(cfg.lrs(m)) == 1 for m in ("full", "lora", "lift"))


def _squared_magnitude(model, inputs):
    """Squared magnitude: the same ranking as magnitude, written as a user would add a criterion."""
    params = dict(model.named_parameters())
    return {n: params[n].detach() ** 2 for n in inputs.names(model)}


def test_a_newly_registered_criterion_runs_through_the_benchmark(tmp_path, cache):
    cfg = micro_config(steps=10, warmup=1, seeds=1, lora_equal=False)
    assert "squared_magnitude" not in meth.known_methods()
    registry.register_criterion("squared_magnitude", _squared_magnitude)
    try:
        assert "squared_magnitude" in meth.known_methods()
        assert cp.run(cfg, tmp_path, ["full", "squared_magnitude"], cache_dir=cache, progress=False) == 2
        row = res.load_results(tmp_path)[res.cell_key("squared_magnitude", "d0.05", 3e-2, 0)]
        setup = bc.prepare(cfg, cache_dir=cache, progress=False)
        same = ft.run_cell(setup, "magnitude", "d0.05", 3e-2, 0)  # squaring keeps the order: the same mask
        assert {k: v for k, v in row.items() if k not in TIMINGS + ("method",)} == \
            {k: v for k, v in same.items() if k not in TIMINGS + ("method",)}
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert [r["method"] for r in summary] == ["full", "squared_magnitude"]
        assert "| squared_magnitude | 5% |" in (tmp_path / "report.md").read_text()
        assert "squared_magnitude @ d0.05" in rep.verdict(summary)  # counted among the sparse criteria
    finally:
        registry.unregister_criterion("squared_magnitude")
    assert "squared_magnitude" not in meth.known_methods()
    with pytest.raises(ValueError, match="unknown: \\['squared_magnitude'\\]"):
        meth.check_methods(["squared_magnitude"])


def test_budget_labels_become_sparse_configs(setup):
    density = ft.sparse_config(setup, "lift", "d0.05", lr=1e-2, seed=3)
    assert (density.criterion, density.density, density.options, density.lr, density.seed) == \
        ("lift", 0.05, {"rank": setup.cfg.lift.rank}, 1e-2, 3)
    assert (density.storage, density.scope, density.include, density.weight_decay) == \
        ("compact", "per_tensor", "weight", 0.0)
    assert ft.sparse_config(setup, "random", "lora_equal").lora_rank == setup.cfg.lora_rank
    two_four = ft.sparse_config(setup, "2:4", "2:4")
    assert (two_four.criterion, two_four.n_m) == ("magnitude", (2, 4))
    middle = ft.sparse_config(setup, "middle_blocks", "d0.05")
    assert (middle.criterion, middle.options) == ("layers", {"layers": ["blocks.1"]})
    l1 = ft.sparse_config(setup, "l1_discovered", "d0.05")
    assert l1.options == {"lam": setup.cfg.l1.lam, "lr": setup.cfg.l1.lr}
    with pytest.raises(ValueError, match="trains no mask"):
        ft.sparse_config(setup, "full", "all")
    with pytest.raises(ValueError, match="'all' is no mask budget"):
        ft.budget_count(setup, "all")
    with pytest.raises(ValueError, match="no method of this config runs at a budget 'd0.3'"):
        ft.budget_count(setup, "d0.3")  # a key is looked up among the config's budgets, never parsed
    with pytest.raises(ValueError, match="runs at budgets \\['lora_equal', 'd0.05'\\], got 'd0.3'"):
        ft.sparse_config(setup, "lift", "d0.3")


def test_the_fine_tuning_loop_is_the_hand_written_one_bit_for_bit(setup):
    """``finetune.train`` (through ``fit``) takes the steps the benchmark's own loop took before the spine."""
    cfg, lr, seed = setup.cfg, 3e-3, 1
    models = [setup.pretrained.__class__(setup.pretrained.config) for _ in range(2)]
    for m in models:
        m.load_state_dict(setup.pretrained.state_dict())
        m.train()
    opts = [CompactAdamW(m.named_parameters(), lr=lr, weight_decay=0.0) for m in models]
    schedule = cosine(lr, cfg.steps, cfg.warmup, floor=0.1)
    by_hand = []
    for step in range(cfg.steps):
        for group in opts[0].param_groups:
            group["lr"] = schedule(step)
        loss = tk.loss(models[0], setup.world.train_batch(cfg.target, step, cfg.batch_size, seed))
        opts[0].zero_grad(set_to_none=True)
        loss.backward()
        opts[0].step()
        by_hand.append(loss.item())
    assert ft.train(setup, models[1], opts[1], lr, seed) == by_hand
    for (n, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.equal(p, q), n


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_benchmark_runs_on_cuda_with_bf16_autocast(cache):
    setup = bc.prepare(micro_config(), cache_dir=cache, device="cuda", progress=False)
    for method, budget in (("full", "all"), ("lift", "lora_equal"), ("lora", "lora_equal")):
        row = ft.run_cell(setup, method, budget, 3e-2 if method != "full" else 3e-3, 0)
        assert row["target_test"] > 0.5 and row["peak_mb"] > 0


def test_top_k_within_ranks_inside_the_set_and_never_leaves_it():
    from scaleup import gpt
    from sparsity import criteria, masks

    model = gpt.build("micro", vocab_size=20, block_size=10)
    scores = criteria.magnitude(model)
    support = {n: torch.zeros_like(s, dtype=torch.bool) for n, s in scores.items()}
    support["blocks.1.mlp.fc.weight"][:4] = True  # 4 rows x 32 = 128 entries
    small = masks.top_k_within(model, scores, support, 0.001)  # 25 of the 24,576 weights
    chosen = small["blocks.1.mlp.fc.weight"]
    assert int(chosen.sum()) == 25 and not (chosen & ~support["blocks.1.mlp.fc.weight"]).any()
    inside = scores["blocks.1.mlp.fc.weight"][support["blocks.1.mlp.fc.weight"]]
    assert scores["blocks.1.mlp.fc.weight"][chosen].min() >= inside.sort(descending=True).values[24]
    big = masks.top_k_within(model, scores, support, 0.5)  # budget > set: the whole set, nothing else
    assert sum(int(m.sum()) for m in big.values()) == 128
    with pytest.raises(ValueError, match="support has no entry"):
        masks.top_k_within(model, scores, {"blocks.0.mlp.fc.weight": support["blocks.0.mlp.fc.weight"]}, 0.1)


def test_another_configs_folder_is_refused_before_anything_in_it_is_written(tmp_path, cache, capsys):
    cfg = micro_config(steps=10, warmup=1, seeds=1, densities=(), lora_equal=False)
    cp.run(cfg, tmp_path, ["full"], cache_dir=cache, progress=False)
    (tmp_path / "machine.json").write_text('{"written": "by the first run"}')
    assert "holds results of another config" in cli_error(capsys, ["--preset", "micro", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "machine.json").read_text()) == {"written": "by the first run"}


def test_a_diverged_run_is_recorded_and_the_benchmark_goes_on(tmp_path, cache):
    cfg = micro_config(steps=10, warmup=0, seeds=2, densities=(), lora_equal=False, lrs_full=(3e-3, 1e6))
    assert cp.run(cfg, tmp_path, ["full"], cache_dir=cache, progress=False) == 3  # 2 lrs on seed 0, then seed 1
    rows = res.load_results(tmp_path)
    bad = rows[res.cell_key("full", "all", 1e6, 0)]
    assert bad["diverged"] is True and "full @ all, lr 1e+06, seed 0" in bad["diverged_reason"]
    assert "target_test" not in bad
    good = rows[res.cell_key("full", "all", 3e-3, 0)]
    assert good["diverged"] is False
    assert good["target_test"] <= good["target_test_token"] <= 1.0 and good["target_test_nll"] > 0  # graded metrics
    assert good["retention"] <= good["retention_token"] and set(good["source_token"]) == set(good["source"])
    assert res.best_lr(cfg, rows, "full", "all") == 3e-3  # never the diverged rate
    assert cp.run(cfg, tmp_path, ["full"], cache_dir=cache, progress=False) == 0  # not retried forever
    report = (tmp_path / "report.md").read_text()
    assert "Diverged runs (1; never chosen" in report and "lr 1e+06, seed 0" in report
    assert "| full | 100% | " in report and "diverged" in report
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["lr"], r["n_seeds"], r["n_diverged"]) for r in summary] == [(3e-3, 2, 0)]


def test_a_run_whose_loss_rises_is_flagged_but_keeps_its_numbers():
    rows = {res.cell_key("full", "all", lr, 0): dict(_row("full", "all", lr, 0, val, 0.0), diverged=lr == 1e-2)
            for lr, val in ((1e-3, 0.5), (1e-2, 0.9))}
    cfg = micro_config(lrs_full=(1e-3, 1e-2), seeds=1)
    assert res.best_lr(cfg, rows, "full", "all") == 1e-3
    all_bad = {k: dict(r, diverged=True) for k, r in rows.items()}
    assert res.best_lr(cfg, all_bad, "full", "all") == 1e-3  # the smallest, its rows flagged


def test_traced_runs_give_frontier_points_and_a_frontier_table(tmp_path, cache):
    from scaleup import frontier as fr

    cfg = micro_config(steps=10, warmup=1, seeds=1, densities=(0.05,), lora_equal=False, eval_every=5,
                       lrs_full=(1e-3, 3e-3), lrs_sparse=(3e-2,))
    cp.run(cfg, tmp_path, ["full", "random"], cache_dir=cache, progress=False)
    rows = res.load_results(tmp_path)
    for row in rows.values():
        assert [p["step"] for p in row["trace"]] == [5, 10]
        assert row["trace"][-1]["target_test"] == row["target_test"]  # the last point is the final model
        assert row["train_s"] > 0
    summary = {(e["method"], e["budget"]): e for e in fr.summary(rows)}
    assert set(summary) == {("full", "all"), ("random", "d0.05")}
    assert 0.0 <= summary[("random", "d0.05")]["area"]["mean"] <= 1.0
    assert "Learning-forgetting frontiers" in (tmp_path / "report.md").read_text()


def test_lift_as_its_authors_run_it_reselects_the_principal_weights(setup):
    from dataclasses import replace as dc_replace

    lift = LiftSettings(rank=2, reselect_every=5)
    resel = dc_replace(setup, cfg=dc_replace(setup.cfg, lift=lift, steps=20, warmup=2),
                       cache={})  # its own selection cache: the module's holds masks of another LIFT rank
    cfg = ft.sparse_config(resel, "lift_reselect", "d0.05", lr=3e-2)
    assert cfg.reselect_every == 5 and cfg.betas == (0.9, 0.95) and cfg.criterion == "lift"
    once, _ = ft.finetune(resel, "lift", "d0.05", 3e-2, 0)
    again, _ = ft.finetune(resel, "lift_reselect", "d0.05", 3e-2, 0)
    first_mask, _ = ft.select(resel, "lift", "d0.05", 0)
    name = "blocks.0.mlp.fc.weight"
    moved = lambda m: m.get_parameter(name) != setup.reference[name]  # noqa: E731
    assert not moved(once)[~first_mask[name]].any()  # selected once: nothing outside the first mask moves
    assert moved(again)[~first_mask[name]].any()  # re-selected: entries outside the first mask moved too
    assert int(moved(again).sum()) <= 5 * int(first_mask[name].sum())  # at most one count per selection


def test_rigl_swaps_entries_at_a_constant_count_and_grows_by_the_gradient(setup):
    from dataclasses import replace as dc_replace

    rigl = dc_replace(setup, cfg=dc_replace(setup.cfg, rigl=RigLSettings(every=5), steps=20, warmup=2), cache={})
    start, _ = ft.select(rigl, "rigl", "d0.05", 0)
    random_mask, _ = ft.select(rigl, "random", "d0.05", 0)
    assert all(bool((start[n] == random_mask[n]).all()) for n in start)  # RigL starts from a random mask
    static, _ = ft.finetune(rigl, "random", "d0.05", 3e-2, 0)
    dynamic, costs = ft.finetune(rigl, "rigl", "d0.05", 3e-2, 0)
    name = "blocks.0.mlp.fc.weight"
    moved = lambda m: m.get_parameter(name) != setup.reference[name]  # noqa: E731
    assert not moved(static)[~start[name]].any()
    assert moved(dynamic)[~start[name]].any()  # grown entries trained
    assert costs["trainable"] == sum(int(m.sum()) for m in start.values())  # the count never changes


def test_lifts_epsilon_placement_is_an_option_of_the_reselecting_row(setup):
    from dataclasses import replace as dc_replace

    lift = LiftSettings(rank=2, reselect_every=5)
    base = dc_replace(setup, cfg=dc_replace(setup.cfg, lift=lift, steps=20, warmup=2), cache={})
    theirs = dc_replace(base, cfg=dc_replace(base.cfg, lift=dc_replace(base.cfg.lift, eps=1e-3)))
    assert "lift_eps" not in base.cfg.to_json() and theirs.cfg.to_json()["lift_eps"] == 1e-3
    assert bc.BenchConfig.from_json(theirs.cfg.to_json()) == theirs.cfg
    ours, _ = ft.finetune(base, "lift_reselect", "d0.05", 3e-2, 0)
    lift_adam, _ = ft.finetune(theirs, "lift_reselect", "d0.05", 3e-2, 0)
    name = "blocks.0.mlp.fc.weight"
    assert not torch.equal(ours.get_parameter(name), lift_adam.get_parameter(name))
    with pytest.raises(ValueError, match="LiftSettings.eps must be > 0"):
        LiftSettings(eps=0.0)
    with pytest.raises(TypeError, match="BenchConfig.lift must be a LiftSettings"):
        dc_replace(base.cfg, lift={"eps": 1e-3})
