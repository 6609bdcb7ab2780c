"""RoSA and SpIEL as registered benchmark methods (scaleup.method_rosa, scaleup.method_spiel) and SpIEL's
drop-and-grow hook (sparsity.spiel): budgets and counts, what moves and what returns to the base, and a
micro run of both through the benchmark, its report and its frontier figure."""

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from scaleup import bench_config as bc
from scaleup import compare as cp
from scaleup import finetune as ft
from scaleup import lora
from scaleup import methods as meth
from scaleup import report as rep
from scaleup.method_dynamic import RigLSettings
from scaleup.method_rosa import ORIGINAL_NAMES, RoSA
from scaleup.results import load_results
from sparsity import SparseConfig, fit, sparsify
from sparsity.compact import CompactAdamW
from sparsity.regularize import snapshot
from sparsity.spiel import SpIELDropGrow, reset_dropped_
from sparsity.train import FitState
from test_scaleup_compare import micro_config

CONFIG = dict(steps=20, warmup=2, seeds=1, rigl=RigLSettings(every=5), eval_every=10)
"""The compare tests' micro benchmark, shorter, one seed, traced, swapping every 5 steps."""


@pytest.fixture(scope="module")
def setup(cache):
    return bc.prepare(micro_config(**CONFIG), cache_dir=cache, progress=False)


# ---------------------------------------------------------------- RoSA


def test_rosa_trains_lora_s_count_split_between_an_adapter_and_fisher_entries(setup):
    rosa = meth.get_method("rosa")
    assert rosa.family == "adapter+sparse" and rosa.criterion == "fisher"
    assert setup.cfg.lora_rank == 4 and rosa.ranks(setup.cfg) == (2, 2)  # half in rank, half in sparse entries
    assert setup.cfg.budgets("rosa") == ["lora_equal"] and setup.cfg.lrs("rosa") == setup.cfg.lrs_lora
    mask, _ = ft.select(setup, "rosa", "lora_equal", 0)
    fisher_scores, _ = ft.scores(setup, "fisher", 0)
    fisher_at_rank2, _ = ft.select(replace(setup, cfg=replace(setup.cfg, lora_rank=2), cache={}), "fisher",
                                   "lora_equal", 0)
    assert all(torch.equal(mask[n], fisher_at_rank2[n]) for n in mask)  # the Fisher mask at the sparse share
    _, costs = ft.finetune(setup, "lora", "lora_equal", 3e-2, 0)
    _, rosa_costs = ft.finetune(setup, "rosa", "lora_equal", 3e-2, 0)
    matched = ft.budget_count(setup, "lora_equal")
    assert rosa_costs["trainable"] == costs["trainable"] == matched  # RoSA total == the matched count
    assert sum(int(m.sum()) for m in mask.values()) == matched // 2  # r=2 of r=4 in sparse entries


def test_rosa_moves_the_base_only_at_its_mask_trains_the_adapter_and_merges(setup):
    rosa = meth.get_method("rosa")
    mask, _ = ft.select(setup, "rosa", "lora_equal", 0)
    model = copy.deepcopy(setup.pretrained).train()
    rosa.prepare(setup, model, 0)
    opt = rosa.optimizer(setup, model, mask, setup.cfg.budget("rosa", "lora_equal"), 3e-2, 0)
    ft.train(setup, model, opt, 3e-2, 0)
    original = getattr(model, ORIGINAL_NAMES)
    name = "blocks.0.mlp.fc.weight"
    adapted = next(n for n, o in original.items() if o == name)
    base = model.get_parameter(adapted).detach()
    moved = base != setup.reference[name]
    assert moved.any() and not moved[~mask[name]].any()  # the sparse part moved, only at its mask
    adapter = lora.adapters(model)[adapted.rsplit(".", 2)[0]]
    assert adapter.r == 2 and adapter.lora_B.abs().sum() > 0  # the rank-2 adapter trained jointly
    idx = setup.bench.train_batch(0, 4, 0)
    with torch.no_grad():
        before_merge = setup.bench.loss(model, idx)
    rosa.finish(model)
    assert not hasattr(model, ORIGINAL_NAMES) and set(dict(model.named_parameters())) == set(setup.reference)
    with torch.no_grad():
        assert torch.allclose(setup.bench.loss(model, idx), before_merge, atol=1e-5)  # merged like LoRA
    delta = model.get_parameter(name).detach() - setup.reference[name]
    assert (delta != 0)[~mask[name]].any()  # the merged low-rank part reaches outside the mask


def test_rosa_needs_a_rank_to_split_and_a_share_inside_zero_one(setup):
    with pytest.raises(ValueError, match="lora_rank >= 2, got 1"):
        RoSA().ranks(replace(setup.cfg, lora_rank=1))
    with pytest.raises(ValueError, match="adapter_share must be a number in \\(0, 1\\), got 1"):
        RoSA(adapter_share=1)
    assert RoSA(adapter_share=0.75).ranks(replace(setup.cfg, lora_rank=8)) == (6, 2)


# ---------------------------------------------------------------- SpIEL's hook


def _toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def test_spiel_drops_the_smallest_delta_to_the_base_and_grows_the_largest_accumulated_gradient():
    model = _toy()
    reference = snapshot(model)
    w = model[0].weight
    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    mask["0.weight"].view(-1)[:10] = True
    opt = CompactAdamW(model.named_parameters(), mask=mask, lr=1e-2, weight_decay=0.0)
    with torch.no_grad():  # deltas 1..10 on the selected entries: entries 0 and 1 move least
        w.view(-1)[:10] += torch.arange(1, 11, dtype=torch.float32)
    hook = SpIELDropGrow(every=4, steps=100, reference=reference, fraction=0.2, accumulate=2)
    grads = [torch.zeros(48), torch.zeros(48)]
    grads[0][[30, 40]] = torch.tensor([5.0, -1.0])
    grads[1][[30, 40, 20]] = torch.tensor([-4.9, -3.0, 3.5])  # sums: 30 -> 0.1, 40 -> -4.0, 20 -> 3.5
    for step, g in zip((3, 4), grads):
        w.grad = g.view(8, 6).clone()
        hook.before_step(FitState(step=step, model=model, optimizer=opt))
    new = opt.mask["0.weight"].view(-1)
    share = 0.2 * (1 - 4 / 100)
    assert int(share * 10) == 1 and hook.swaps == [{"step": 4, "changed": 1}]  # SpIEL's int(): a floor
    assert not new[0] and new[1] and new[40] and not new[20] and not new[30]  # |sum|, not the last gradient
    assert int(new.sum()) == 10  # the count stays
    assert torch.equal(w.view(-1)[:1], reference["0.weight"].view(-1)[:1])  # the dropped delta discarded
    assert not torch.equal(w.view(-1)[1:2], reference["0.weight"].view(-1)[1:2])  # the kept one stays
    assert torch.equal(w.view(-1)[[40]], reference["0.weight"].view(-1)[[40]])  # grown from delta 0


def test_spiel_through_sparsify_and_fit_keeps_its_count_and_every_unselected_entry_at_the_base():
    model = _toy()
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))

    def loss_of_batch(m, batch):
        return nn.functional.cross_entropy(m(x), y)

    # values_grad=False: the values-only gradient holds a fixed selection; SpIEL's hook re-selects
    run = sparsify(model, SparseConfig(criterion="gradient", density=0.2, storage="compact", lr=3e-2, values_grad=False),
                   loss_fn=loss_of_batch, batches=[None])
    counts = {n: int(m.sum()) for n, m in run.optimizer.mask.items()}
    start = run.optimizer.mask
    hook = SpIELDropGrow(every=5, steps=40, reference=run.reference, fraction=0.5, accumulate=3)
    fit(model, run.optimizer, loss_of_batch, 40, hooks=[hook])
    end = run.optimizer.mask
    assert [s["step"] for s in hook.swaps] == [5, 10, 15, 20, 25, 30, 35] \
        and all(s["changed"] for s in hook.swaps[:3])  # later shares floor to 0 swaps in the small tensors
    assert {n: int(m.sum()) for n, m in end.items()} == counts  # constant count across swaps
    assert any(not torch.equal(start[n], end[n]) for n in start)
    params = dict(model.named_parameters())
    for n, m in end.items():  # SpIEL's invariant: theta = theta_0 + scatter(values, indices)
        assert torch.equal(params[n].detach()[~m], run.reference[n][~m]), n


def test_spiel_refuses_bad_settings_and_an_optimizer_that_cannot_reselect():
    model = _toy()
    reference = snapshot(model)
    with pytest.raises(ValueError, match="accumulate must be <= every \\(4\\)"):
        SpIELDropGrow(4, 10, reference, accumulate=5)
    with pytest.raises(ValueError, match="fraction must be a number in \\(0, 1\\]"):
        SpIELDropGrow(8, 10, reference, fraction=0)
    with pytest.raises(TypeError, match="reference must be a mapping"):
        SpIELDropGrow(8, 10, [1, 2])
    hook = SpIELDropGrow(4, 10, reference, accumulate=2)
    with pytest.raises(TypeError, match="needs an optimizer with reselect"):
        hook.before_step(FitState(step=4, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1)))


def test_spiel_keeps_the_selection_of_a_tensor_the_loss_does_not_reach():
    """A multi-task model's other heads get no gradient from the target's loss: nothing to grow toward."""
    model = _toy()
    reference = snapshot(model)
    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    mask["0.weight"].view(-1)[:10] = True
    mask["2.weight"].view(-1)[:4] = True
    opt = CompactAdamW(model.named_parameters(), mask=mask, weight_decay=0.0)
    hook = SpIELDropGrow(4, 100, reference, fraction=0.5, accumulate=1)
    model[0].weight.grad = torch.arange(48, dtype=torch.float32).view(8, 6)  # '2.weight' has no gradient
    hook.before_step(FitState(step=4, model=model, optimizer=opt))
    after = opt.mask
    assert torch.equal(after["2.weight"], mask["2.weight"])  # kept
    assert not torch.equal(after["0.weight"], mask["0.weight"]) and int(after["0.weight"].sum()) == 10


def test_reset_dropped_counts_and_restores_only_the_dropped_entries():
    p = {"w": torch.tensor([1.0, 2.0, 3.0])}
    old = {"w": torch.tensor([True, True, False])}
    new = {"w": torch.tensor([False, True, True])}
    assert reset_dropped_(p, old, new, {"w": torch.zeros(3)}) == 1
    assert p["w"].tolist() == [0.0, 2.0, 3.0]


# ---------------------------------------------------------------- the benchmark


def test_spiel_row_swaps_in_the_benchmark_at_a_constant_count(setup):
    start, _ = ft.select(setup, "spiel", "d0.05", 0)
    gradient, _ = ft.select(setup, "gradient", "d0.05", 0)
    assert all(torch.equal(start[n], gradient[n]) for n in start)  # SpIEL-AG's first selection
    model, costs = ft.finetune(setup, "spiel", "d0.05", 3e-2, 0)
    assert costs["trainable"] == sum(int(m.sum()) for m in start.values())
    name = "blocks.0.mlp.fc.weight"
    moved = model.get_parameter(name).detach() != setup.reference[name]
    assert moved[~start[name]].any()  # grown entries trained
    assert int(moved.sum()) <= int(start[name].sum())  # every entry outside the last selection is at the base


def test_rosa_and_spiel_run_through_the_benchmark_report_and_frontier(tmp_path, cache):
    cfg = micro_config(**CONFIG)
    cp.run(cfg, tmp_path, ["full", "lora", "rosa", "spiel"], cache_dir=cache, progress=False)
    rows = load_results(tmp_path)
    cells = sorted((r["method"], r["budget"]) for r in rows.values())
    assert cells == [("full", "all"), ("lora", "lora_equal"), ("rosa", "lora_equal"), ("spiel", "d0.05"),
                     ("spiel", "lora_equal")]
    by = {(r["method"], r["budget"]): r for r in rows.values()}
    assert by["rosa", "lora_equal"]["trainable"] == by["lora", "lora_equal"]["trainable"]
    assert all(r.get("trace") for r in rows.values())
    report = (tmp_path / "report.md").read_text()
    assert "| rosa | LoRA-equal (r=4) |" in report and "| spiel | 5% |" in report
    fig = rep.frontier_figure(rows, cfg)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "RoSA" in legend and "SpIEL" in legend
    colours = [meth.method_color(m) for m in meth.known_methods()]
    assert meth.method_color("rosa") == "darkgoldenrod" and meth.method_color("spiel") == "teal"
    assert colours.count("darkgoldenrod") == 1 and colours.count("teal") == 1


def test_the_command_line_takes_rosa_and_spiel(tmp_path, cache, monkeypatch):
    seen = {}
    monkeypatch.setattr(cp, "run", lambda cfg, out, methods, **kw: seen.update(methods=methods))
    monkeypatch.setattr(cp, "print_report", lambda out, md: None)
    cp.main(["--preset", "micro", "--methods", "rosa,spiel", "--out", str(tmp_path)])
    assert seen["methods"] == ["rosa", "spiel"]
