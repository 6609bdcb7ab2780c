"""RigL as its authors run it (Evci et al. 2020): the options of sparsity.train.RigL and of the benchmark's rigl row.

Each option is tested on a case where it changes what happens: the end step (no swap after it, the
cosine over its span), no weight update on a swap step, and floor against round for the counts.
"""

import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from scaleup import compare as cp
from scaleup.bench_config import BenchConfig, default_config
from scaleup.method_dynamic import RigLSettings
from sparsity import masks
from sparsity.compact import CompactAdamW
from sparsity.dynamic import rigl_swap
from sparsity.regularize import snapshot
from sparsity.train import RIGL_LAB_2025, RIGL_PAPER, FitState, RigL, fit

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step % 4)
    return torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g)


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _run(steps: int, rigl: RigL, watch: object = None) -> tuple[nn.Module, CompactAdamW]:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(8, 16), act=nn.Tanh(), fc2=nn.Linear(16, 4)))
    opt = CompactAdamW(model.named_parameters(), masks.random(model, 0.2, seed=0, scope="per_tensor", include="all"),
                       lr=1e-2)
    rigl.reference = snapshot(model)
    fit(model, opt, _mse, steps, batches=_batch, hooks=[h for h in (watch, rigl) if h is not None])
    return model, opt


class Recorder:
    """Before RigL (hooks run in order): the mask and weights; after the optimizer's step: the same again."""

    def __init__(self) -> None:
        self.before: dict[int, tuple[dict, dict]] = {}
        self.after: dict[int, tuple[dict, dict]] = {}

    @staticmethod
    def _copy(state: FitState) -> tuple[dict, dict]:
        return ({n: m.clone() for n, m in state.optimizer.mask.items()},
                {n: p.detach().clone() for n, p in state.model.named_parameters()})

    def before_step(self, state: FitState) -> None:
        self.before[state.step] = self._copy(state)

    def after_step(self, state: FitState) -> None:
        self.after[state.step] = self._copy(state)


def _swapped(rec: Recorder, step: int) -> int:
    before, after = rec.before[step][0], rec.after[step][0]
    return sum(int((before[n] & ~after[n]).sum()) for n in before)


# ---------------------------------------------------------------- floor against round


def test_floor_and_round_differ_where_the_count_is_fractional() -> None:
    mask = {"w": torch.tensor([True] * 5 + [False] * 5)}
    delta = {"w": torch.arange(10.0)}  # entry 0 moved least, then 1
    grad = {"w": -torch.arange(10.0)}  # entry 9 has the largest gradient, then 8
    floor = rigl_swap(mask, delta, grad, 0.3)  # 0.3 * 5 = 1.5: floor 1 (RigL's int cast)
    rounded = rigl_swap(mask, delta, grad, 0.3, "round")  # round 2
    assert floor["w"].nonzero().squeeze(1).tolist() == [1, 2, 3, 4, 9]
    assert rounded["w"].nonzero().squeeze(1).tolist() == [2, 3, 4, 8, 9]
    with pytest.raises(ValueError, match="rounding must be one of"):
        rigl_swap(mask, delta, grad, 0.3, "ceil")


# ---------------------------------------------------------------- the end step


def test_no_swap_after_the_end_step_and_the_share_decays_over_its_span() -> None:
    steps, every = 40, 4
    rec = Recorder()
    rigl = RigL(every, steps, {}, 0.5, end=0.5, update_on_swap=True)  # end step 20
    _, opt = _run(steps, rigl, rec)
    swaps = [t for t in range(steps) if _swapped(rec, t)]
    assert swaps == [4, 8, 12, 16]  # at 20 the cosine over [0, 20] reaches 0: nothing left to swap
    assert all(not rigl.swaps_at(t) for t in range(21, steps))
    final = rec.after[steps - 1][0]
    assert all(torch.equal(rec.after[20][0][n], final[n]) for n in final)  # the mask stays put after the end
    counts = {n: int(m.sum()) for n, m in opt.mask.items() if 0 < int(m.sum()) < m.numel()}
    for t in swaps:
        share = 0.5 * (1 + math.cos(math.pi * t / 20)) / 2
        assert _swapped(rec, t) == sum(math.floor(share * k) for k in counts.values()), t
    everywhere = RigL(every, steps, {}, 0.5, end=1.0)
    assert [t for t in range(steps) if everywhere.swaps_at(t)] == list(range(4, steps, 4))


# ---------------------------------------------------------------- no weight update on a swap step


def test_a_swap_step_changes_the_mask_instead_of_the_weights() -> None:
    steps, every = 20, 4  # the paper's settings: swaps at 4, 8, 12 (end step 15)

    class WithMoments(Recorder):
        """Also the optimizer's selection and state of each partly selected tensor after the step."""

        def __init__(self) -> None:
            super().__init__()
            self.state: dict[int, dict] = {}

        def after_step(self, state: FitState) -> None:
            super().after_step(state)
            params, opt = dict(state.model.named_parameters()), state.optimizer
            self.state[state.step] = {
                n: (opt.indices[n].clone(), {k: v.clone() for k, v in opt.state[params[n]].items()})
                for n in opt.indices}

    rec = WithMoments()
    _run(steps, RigL(every, steps, {}, 0.5), rec)
    for t in (4, 8, 12):
        assert _swapped(rec, t) > 0, t
        before, after = rec.before[t][1], rec.after[t][1]
        assert all(torch.equal(before[n], after[n]) for n in before), t  # not one weight moved
        for n, (idx, moments) in rec.state[t].items():
            assert torch.equal(moments["step"], rec.state[t - 1][n][1]["step"]), (t, n)  # Adam's count stood still
            grown = (rec.after[t][0][n] & ~rec.before[t][0][n]).flatten().nonzero().squeeze(1)
            at = torch.isin(idx.long(), grown)
            assert not moments["exp_avg"][at].any() and not moments["exp_avg_sq"][at].any(), (t, n)  # zero moments
    for t in (3, 5, 9, 16):  # the other steps train
        before, after = rec.before[t][1], rec.after[t][1]
        assert any(not torch.equal(before[n], after[n]) for n in before), t

    updated = Recorder()  # the lab's first RigL also stepped on a swap step
    _run(steps, RigL(every, steps, {}, 0.5, update_on_swap=True), updated)
    assert _swapped(updated, 4) > 0
    assert any(not torch.equal(updated.before[4][1][n], updated.after[4][1][n]) for n in updated.before[4][1])


def test_bad_options_are_refused() -> None:
    for bad in (0.0, 1.5, True, "0.75"):
        with pytest.raises(ValueError, match="end must be a share of the steps"):
            RigL(5, 10, {}, end=bad)
    with pytest.raises(TypeError, match="update_on_swap must be a bool"):
        RigL(5, 10, {}, update_on_swap=1)
    with pytest.raises(ValueError, match="rounding must be one of"):
        RigL(5, 10, {}, rounding="ceil")


# ---------------------------------------------------------------- the benchmark's rigl row


def test_new_runs_take_the_papers_settings_and_committed_folders_keep_theirs() -> None:
    assert BenchConfig().rigl.options() == RIGL_PAPER
    data = BenchConfig().to_json()
    assert (data["rigl_end"], data["rigl_update_on_swap"], data["rigl_rounding"]) == (0.75, False, "floor")
    lab = BenchConfig(rigl=RigLSettings(**RIGL_LAB_2025))
    assert not any(k in lab.to_json() for k in ("rigl_end", "rigl_update_on_swap", "rigl_rounding"))
    assert BenchConfig.from_json(lab.to_json()) == lab
    assert BenchConfig.from_json(json.loads(json.dumps(data))).rigl.options() == RIGL_PAPER
    committed = RESULTS / "frontier_small_facts_b" / "config.json"
    if committed.exists():  # a folder written before the options holds the lab's first RigL, and still resumes
        saved = json.loads(committed.read_text())
        cfg = BenchConfig.from_json(saved)
        assert cfg.rigl.options() == RIGL_LAB_2025
        assert json.loads(json.dumps(cfg.to_json())) == saved
    args = cp.parse_args(["--out", "x", "--rigl", "lab-2025"])
    assert cp._overrides(args)["rigl"].options() == RIGL_LAB_2025
    assert default_config(**cp._overrides(cp.parse_args(["--out", "x"]))).rigl.options() == RIGL_PAPER
    for bad, match in (({"end": 0.0}, "rigl_end"), ({"rounding": "up"}, "rigl_rounding"),
                       ({"update_on_swap": "no"}, "rigl_update_on_swap")):
        with pytest.raises((ValueError, TypeError), match=match):
            RigLSettings(**bad)
        with pytest.raises((ValueError, TypeError), match=match):
            BenchConfig.from_json({**BenchConfig().to_json(), f"rigl_{next(iter(bad))}": next(iter(bad.values()))})
