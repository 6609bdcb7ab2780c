"""The spine of the lab: SparseConfig + sparsify, the one training loop, the registry, the sweep store."""

import copy
import json
import math

import pytest
import torch
from torch import nn

from sparsity import SparseConfig, fit, sparsify
from sparsity import registry
from sparsity.compact import CompactAdamW
from sparsity.optim import MaskedAdamW
from sparsity.regularize import prox_l1_to_init_, snapshot
from sparsity.sweep import SweepStore, markdown_table, mean_spread
from sparsity.train import Every, ProximalL1, constant, cosine
from sparsity.validate import check_positive_int


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 6, generator=g), torch.randn(32, 3, generator=g)


def _loss(model, batch):
    return nn.functional.mse_loss(model(batch[0]), batch[1])


def test_cosine_matches_the_hand_written_forms_bit_for_bit():
    s = cosine(3e-3, 300, warmup=30, floor=0.1)
    for t in range(305):
        if t < 30:
            want = 3e-3 * (t + 1) / 30
        else:
            want = 3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min((t - 30) / 270, 1.0))))
        assert s(t) == want
    plain = cosine(1e-3, 500)
    assert all(plain(t) == 1e-3 * 0.5 * (1 + math.cos(math.pi * t / 500)) for t in range(500))
    assert constant(0.1)(7) == 0.1
    with pytest.raises(ValueError, match="floor"):
        cosine(1e-3, 10, floor=2.0)
    with pytest.raises(ValueError, match="steps"):
        cosine(1e-3, 0)


def test_fit_is_the_hand_written_loop_bit_for_bit():
    """Same ops in the same order as the loops it replaced: lr, batch, loss, zero_grad, backward, step, prox."""
    x, y = _data()
    a, b = _model(), _model()
    ref = snapshot(a)
    mask = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(3)) < 0.5 for n, p in a.named_parameters()}
    opt_a = MaskedAdamW(a.named_parameters(), mask=mask, lr=1e-2)
    for t in range(40):
        for g in opt_a.param_groups:
            g["lr"] = 1e-2 * 0.5 * (1 + math.cos(math.pi * t / 40))
        loss = _loss(a, (x, y))
        opt_a.zero_grad(set_to_none=True)
        loss.backward()
        opt_a.step()
        th = {n: 1e-3 * s for n, s in opt_a.adaptive_lr().items()}
        prox_l1_to_init_(a, {n: ref[n] for n in th}, th)
    opt_b = MaskedAdamW(b.named_parameters(), mask=mask, lr=1e-2)
    history = fit(b, opt_b, _loss, 40, batches=lambda t: (x, y), schedule=cosine(1e-2, 40),
                  hooks=[ProximalL1(snapshot(b), 1e-3)])
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    assert len(history["loss"]) == 40


def test_fit_hooks_resume_and_divergence():
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []
    fit(model, opt, _loss, 10, batches=lambda t: (x, y), hooks=[Every(4, lambda s: seen.append(s.step), at_end=True)])
    assert seen == [3, 7, 9]
    # a resumed run (start=k) is the same as one run
    m1, m2 = _model(), _model()
    o1, o2 = torch.optim.Adam(m1.parameters(), 1e-2), torch.optim.Adam(m2.parameters(), 1e-2)
    fit(m1, o1, _loss, 20, batches=lambda t: (x + t, y), schedule=cosine(1e-2, 20, 3))
    fit(m2, o2, _loss, 12, batches=lambda t: (x + t, y), schedule=cosine(1e-2, 20, 3))
    fit(m2, o2, _loss, 20, batches=lambda t: (x + t, y), schedule=cosine(1e-2, 20, 3), start=12)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
    # a diverged run is an error naming the step, not a NaN model passed on
    bad = torch.optim.SGD(_model().parameters(), lr=1e30)
    with pytest.raises(FloatingPointError, match="diverged"):
        fit(_model(), bad, lambda m, b: torch.tensor(float("nan"), requires_grad=True), 3)
    with pytest.raises(ValueError, match="ran out at step 2"):
        fit(model, opt, _loss, 5, batches=[(x, y), (x, y)])


def test_sparse_config_validates_every_field():
    with pytest.raises(ValueError, match="one budget"):
        SparseConfig(density=0.1, lora_rank=2)
    with pytest.raises(ValueError, match="criterion must be one of"):
        SparseConfig(criterion="nope")
    with pytest.raises(ValueError, match="storage"):
        SparseConfig(storage="sparse")
    with pytest.raises(ValueError, match="n_m"):
        SparseConfig(n_m=(4, 2))
    with pytest.raises(ValueError, match="reselect_every needs storage='compact'"):
        SparseConfig(storage="dense", reselect_every=10)
    with pytest.raises(ValueError, match="lora_rank must be a positive int"):
        SparseConfig(lora_rank=0)
    assert SparseConfig().density == 0.05


def test_sparsify_selects_freezes_and_trains_only_the_mask(capsys):
    x, y = _data()
    model = _model()
    before = snapshot(model)
    run = sparsify(model, SparseConfig("snip", density=0.2, include=("weight",)), loss_fn=_loss, batches=[(x, y)])
    assert isinstance(run.optimizer, CompactAdamW)
    assert set(run.mask) == {n for n, _ in model.named_parameters()}  # the coverage rule: every parameter named
    assert not model[0].bias.requires_grad
    # the default trains a selected Linear weight through its values-only gradient (sparsity.values_grad):
    # the weight itself keeps no dense gradient, its [k] anchor gets the selected entries'
    assert not model[0].weight.requires_grad and set(run.optimizer.values_grads) == {"0.weight", "2.weight"}
    fit(model, run.optimizer, _loss, 15, batches=lambda t: (x, y))
    for n, p in model.named_parameters():
        moved = p.detach() != before[n]
        assert not (moved & ~run.mask[n]).any(), n
    assert sum(int(m.sum()) for m in run.mask.values()) == run.trainable_parameters()[0]
    run.print_trainable_parameters()
    # round(0.2 * 72) + round(0.2 * 36) of the 123 entries
    assert "trainable params: 21 || all params: 123" in capsys.readouterr().out
    delta = run.delta()
    assert set(delta.tensors) == {"0.weight", "2.weight"}
    merged = run.merge()
    assert all(p.requires_grad for p in merged.parameters())


def test_sparsify_needs_data_for_gradient_criteria():
    with pytest.raises(ValueError, match="needs data"):
        sparsify(_model(), SparseConfig("fisher"))


def test_reselection_keeps_counts_and_follows_the_model():
    x, y = _data()
    model = _model()
    run = sparsify(model, SparseConfig("magnitude", density=0.25, reselect_every=5))
    first = {n: m.clone() for n, m in run.mask.items()}
    fit(model, run.optimizer, _loss, 20, batches=lambda t: (x, y), schedule=constant(0.05), hooks=run.hooks())
    assert all(int(run.mask[n].sum()) == int(first[n].sum()) for n in first)
    assert any(not torch.equal(run.mask[n], first[n]) for n in first)
    assert all(torch.equal(run.optimizer.mask[n], run.mask[n]) for n in run.optimizer.mask)


def test_a_registered_criterion_is_usable_by_name():
    def last_entries(model, inputs):
        return {n: torch.arange(p.numel(), dtype=torch.float).view(p.shape) for n, p in model.named_parameters()
                if n in inputs.names(model)}

    registry.register_criterion("test_last_entries", last_entries)
    try:
        run = sparsify(_model(), SparseConfig("test_last_entries", density=0.5, storage="dense"))
        assert isinstance(run.optimizer, MaskedAdamW)
        assert run.mask["2.weight"].view(-1)[-1] and not run.mask["2.weight"].view(-1)[0]
        with pytest.raises(ValueError, match="already registered"):
            registry.register_criterion("test_last_entries", last_entries)
    finally:
        registry.unregister_criterion("test_last_entries")
    with pytest.raises(ValueError, match="criterion must be one of"):
        registry.get_criterion("test_last_entries")


def test_lift_needs_its_rank_option():
    with pytest.raises(ValueError, match="needs the option 'rank'"):
        sparsify(_model(), SparseConfig("lift"))
    run = sparsify(_model(), SparseConfig("lift", lora_rank=1, options={"rank": 2}))
    assert int(run.mask["0.weight"].sum()) == 1 * (12 + 6)


def test_sweep_store_resumes_guards_its_config_and_drops_a_cut_line(tmp_path):
    store = SweepStore(tmp_path / "s", ("method", "lr", "seed"), config={"steps": 10})
    calls = []

    def run_cell(c):
        calls.append(dict(c))
        return {**c, "score": c["lr"] * 10 + c["seed"]}

    cells = [{"method": "m", "lr": lr, "seed": s} for lr in (0.1, 0.01) for s in range(2)]
    store.run(cells[:3], run_cell)
    with open(store.path, "a") as f:
        f.write('{"method": "m", "lr": 0.01, "se')  # a kill in the middle of a line
    rows = SweepStore(tmp_path / "s", ("method", "lr", "seed"), config={"steps": 10}).run(cells, run_cell)
    assert len(calls) == 4 and len(rows) == 4 and rows["m|0.01|1"]["score"] == 0.01 * 10 + 1
    assert all(json.loads(line) for line in store.path.read_text().splitlines())
    with pytest.raises(ValueError, match=r"another config \(differs in \['steps'\]\)"):
        SweepStore(tmp_path / "s", ("method", "lr", "seed"), config={"steps": 20})
    with pytest.raises(ValueError, match="non-finite"):
        store.append({"method": "m", "lr": 1.0, "seed": 0, "score": float("nan")})
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        SweepStore(tmp_path / "file", ("a",))


def test_report_kit():
    assert mean_spread([1.0, 3.0]) == (2.0, math.sqrt(2))
    assert mean_spread([5]) == (5.0, 0.0)
    table = markdown_table(["a", "b"], [[1, 2]])
    assert table.splitlines() == ["| a | b |", "| --- | ---: |", "| 1 | 2 |"]
    assert markdown_table(["a", "b"], [[1, 2]], compact_rule=True).splitlines()[1] == "|---|---:|"
    with pytest.raises(ValueError, match="one entry per header column"):
        markdown_table(["a"], [[1, 2]])


def test_check_positive_int():
    assert check_positive_int(3, "steps") == 3
    for bad in (0, -1, 1.5, True, "2", None):
        with pytest.raises(ValueError, match="steps must be a positive int"):
            check_positive_int(bad, "steps")


def test_the_coverage_rule_one_reading_of_absent_names_everywhere():
    """Absent = unconstrained (optimizer trains it, delta stores it whole); an explicit all-False
    tensor of a training mask is refused where it would be read as 'prune it all'."""
    from sparsity import masks, prune
    from sparsity.delta import extract_delta

    model = _model()
    train_mask = masks.magnitude(model, 0.5)  # names every parameter; biases all False (frozen)
    assert set(train_mask) == {n for n, _ in model.named_parameters()}
    assert not train_mask["0.bias"].any()
    with pytest.raises(ValueError, match="training mask"):
        prune.apply_mask_(model, train_mask)
    prune.apply_mask_(model, {"0.bias": torch.zeros(12, dtype=torch.bool)}, allow_empty=True)
    assert not model[0].bias.any()
    # absent from a mask: the optimizer trains it densely and the delta stores it whole
    before = snapshot(model)
    partial = {"0.weight": train_mask["0.weight"]}
    opt = MaskedAdamW(model.named_parameters(), mask=partial, lr=0.1)
    x, y = _data()
    fit(model, opt, _loss, 3, batches=lambda t: (x, y))
    assert (model[2].weight != before["2.weight"]).all()
    delta = extract_delta(model, before, partial)
    assert delta.tensors["2.weight"].indices.numel() == model[2].weight.numel()


def test_sweep_store_keeps_a_complete_last_row_that_lost_its_newline(tmp_path):
    store = SweepStore(tmp_path / "s", ("method", "seed"))
    store.append({"method": "a", "seed": 0, "score": 1.0})
    store.path.write_text(store.path.read_text() + '{"method": "a", "seed": 1, "score": 2.0}')  # no newline
    assert set(store.load()) == {"a|0", "a|1"}
    store.append({"method": "a", "seed": 2, "score": 3.0})
    assert set(store.load()) == {"a|0", "a|1", "a|2"}
    assert store.path.read_text().count("\n") == 3


def test_fused_takes_compactadamws_fast_path_and_needs_compact_storage():
    run = sparsify(_model(), SparseConfig("magnitude", density=0.2, fused=True))
    assert run.optimizer.fused is True
    with pytest.raises(ValueError, match="fused=True is CompactAdamW's fast path: it needs storage='compact'"):
        SparseConfig("magnitude", storage="dense", fused=True)
    with pytest.raises(TypeError, match="fused must be None, True or False"):
        SparseConfig("magnitude", fused=1)
