"""The GPT benchmark on the spine: criteria from the registry, budgets as SparseConfigs, training through fit."""

import json

import pytest
import torch

from scaleup import compare as cp
from scaleup import finetune as ft
from scaleup import pretrain as pt
from scaleup import tasks as tk
from sparsity import registry
from sparsity.compact import CompactAdamW
from sparsity.train import cosine

TIMINGS = ("train_s", "select_s", "peak_mb")


def micro_config(**kw):
    base = dict(preset="micro", world=cp.MICRO_WORLD, steps=10, warmup=1, seeds=1, pretrain_steps=200,
                densities=(0.05,), lora_equal=False, lrs_full=(3e-3,), lrs_sparse=(3e-2,), lrs_lora=(3e-2,),
                l1_lam=1e-4, score_batches=2, batch_size=32)
    base.update(kw)
    return cp.BenchConfig(**base)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def setup(cache):
    return cp.prepare(micro_config(), cache_dir=cache, progress=False)


def _squared_magnitude(model, inputs):
    """Squared magnitude: the same ranking as magnitude, written as a user would add a criterion."""
    params = dict(model.named_parameters())
    return {n: params[n].detach() ** 2 for n in inputs.names(model)}


def test_a_newly_registered_criterion_runs_through_the_benchmark(tmp_path, cache, setup):
    assert "squared_magnitude" not in cp.known_methods()
    registry.register_criterion("squared_magnitude", _squared_magnitude)
    try:
        assert "squared_magnitude" in cp.known_methods()
        assert cp.run(micro_config(), tmp_path, ["full", "squared_magnitude"], cache_dir=cache, progress=False) == 2
        row = cp.load_results(tmp_path)[cp.cell_key("squared_magnitude", "d0.05", 3e-2, 0)]
        same = cp.run_cell(setup, "magnitude", "d0.05", 3e-2, 0)  # squaring keeps the order: the same mask
        assert {k: v for k, v in row.items() if k not in TIMINGS + ("method",)} == \
            {k: v for k, v in same.items() if k not in TIMINGS + ("method",)}
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert [r["method"] for r in summary] == ["full", "squared_magnitude"]
        assert "| squared_magnitude | 5% |" in (tmp_path / "report.md").read_text()
        assert "squared_magnitude @ d0.05" in cp.verdict(summary)  # counted among the sparse criteria
    finally:
        registry.unregister_criterion("squared_magnitude")
    assert "squared_magnitude" not in cp.known_methods()
    with pytest.raises(ValueError, match="unknown: \\['squared_magnitude'\\]"):
        cp.check_methods(["squared_magnitude"])


def test_budget_labels_become_sparse_configs(setup):
    density = cp.sparse_config(setup, "lift", "d0.05", lr=1e-2, seed=3)
    assert (density.criterion, density.density, density.options, density.lr, density.seed) == \
        ("lift", 0.05, {"rank": setup.cfg.lift_rank}, 1e-2, 3)
    assert (density.storage, density.scope, density.include, density.weight_decay) == \
        ("compact", "per_tensor", "weight", 0.0)
    assert cp.sparse_config(setup, "random", "lora_equal").lora_rank == setup.cfg.lora_rank
    two_four = cp.sparse_config(setup, "2:4", "2:4")
    assert (two_four.criterion, two_four.n_m) == ("magnitude", (2, 4))
    middle = cp.sparse_config(setup, "middle_blocks", "d0.05")
    assert (middle.criterion, middle.options) == ("layers", {"layers": ["blocks.1"]})
    l1 = cp.sparse_config(setup, "l1_discovered", "d0.05")
    assert l1.options == {"lam": setup.cfg.l1_lam, "lr": setup.cfg.l1_lr}
    with pytest.raises(ValueError, match="trains no mask"):
        cp.sparse_config(setup, "full", "all")
    with pytest.raises(ValueError, match="budget must be"):
        cp.budget_count(setup, "all")


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


def test_pretraining_schedule_is_the_cosine_with_a_tenth_floor():
    cfg = pt.PretrainConfig(preset="micro", steps=50, warmup=5, lr=2e-3)
    assert [pt.schedule(cfg)(s) for s in range(60)] == [cosine(2e-3, 50, 5, floor=0.1)(s) for s in range(60)]
