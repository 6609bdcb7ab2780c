"""Benchmark methods as registered objects (scaleup.methods): a method added in a test file, with one
registration line, runs through the benchmark, its report and its frontier figure; committed results
still load and rebuild their committed reports; budget keys are looked up, never parsed."""

from pathlib import Path

import pytest
from torch import nn

from scaleup import bench_config as bc
from scaleup import compare as cp
from scaleup import methods as meth
from scaleup import report as rep
from scaleup.bench_teacher_student import TeacherStudentConfig
from scaleup.method_base import FAMILIES, Budget, Method
from scaleup.results import load_results, summarize
from sparsity.compact import CompactAdamW
from sparsity.train import Every

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
BENCHMARK_FOLDERS = sorted(p.parent for p in RESULTS.glob("*/report.md"))
"""The controlled benchmark's committed folders (config, results, report.md); other stores, such as the RL
scale study's, keep their report beside the folder."""


class BitFit(Method):
    """Biases only (Ben Zaken et al. 2022), with a training hook that counts its calls: a method the
    harness has never heard of, declared in one class."""

    family = "sparse"

    def __init__(self, name, label, color=None):
        super().__init__(name, label, color)
        self.calls = []

    def budgets(self, cfg):
        return [Budget("biases", "biases only", "X")]

    def optimizer(self, setup, model, mask, budget, lr, seed):
        biases = [(n, p) for n, p in model.named_parameters() if n.endswith(".bias")]
        for n, p in model.named_parameters():
            p.requires_grad_(n.endswith(".bias"))
        return CompactAdamW(biases, lr=lr, weight_decay=0.0)

    def trainable(self, model: nn.Module, mask) -> int:
        return sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias"))

    def hooks(self, setup, model, optimizer):
        return [Every(5, lambda state: self.calls.append(state.step + 1))]


@pytest.fixture
def bitfit():
    method = meth.register_method(BitFit("bitfit", "BitFit", color="black"))  # the one registration line
    yield method
    meth.unregister_method("bitfit")


def test_a_method_registered_in_a_test_runs_through_benchmark_report_and_frontier(bitfit, tmp_path):
    cfg = bc.BenchConfig(world_kind="teacher_student", world=TeacherStudentConfig(n_eval=200), steps=20, warmup=2,
                         seeds=1, densities=(), lrs_full=(3e-3,), lrs_sparse=(3e-2,), eval_every=10)
    assert "bitfit" in meth.known_methods() and cfg.budgets("bitfit") == ["biases"]
    assert cfg.lrs("bitfit") == cfg.lrs_sparse
    cp.run(cfg, tmp_path, ["full", "bitfit"], progress=False)
    rows = load_results(tmp_path)
    row = next(r for r in rows.values() if r["method"] == "bitfit")
    assert row["budget"] == "biases" and row["trainable"] == 20 + 20 + 100  # the MLP's biases
    assert bitfit.calls == [5, 10, 15, 20]  # its training hook ran
    weights = {t: row["update_sparsity"][t] for t in ("fc1", "fc2", "fc3")}
    assert all(share > 0.8 for share in weights.values())  # the weight matrices stayed where they were
    table = summarize(tmp_path)
    assert [(r["method"], r["budget"]) for r in table] == [("full", "all"), ("bitfit", "biases")]
    report = (tmp_path / "report.md").read_text()
    assert "| bitfit | biases only |" in report and "bitfit @ biases" in report  # table and frontier verdict
    assert (tmp_path / "frontier.png").exists() and (tmp_path / "summary.png").exists()
    fig = rep.frontier_figure(rows, cfg)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "BitFit" in legend and "full FT" in legend and "biases only" not in legend  # labels from the methods
    assert meth.method_color("bitfit") == "black"


def test_a_name_taken_or_not_a_method_is_refused(bitfit):
    with pytest.raises(ValueError, match="'bitfit' is already registered"):
        meth.register_method(BitFit("bitfit", "again"))
    with pytest.raises(TypeError, match="must be a scaleup.method_base.Method"):
        meth.register_method("bitfit")
    with pytest.raises(ValueError, match="without '\\|'"):
        meth.register_method(BitFit("a|b", "bad"))
    with pytest.raises(ValueError, match="method must be one of .*got 'bitfitt'"):
        meth.get_method("bitfitt")


def test_a_stored_budget_key_is_looked_up_among_the_configs_budgets():
    cfg = bc.BenchConfig(preset="micro", world=bc.MICRO_WORLD, densities=(0.05,), lora_rank=2)
    assert cfg.budget("lift", "d0.05").sparse == {"density": 0.05}
    assert cfg.budget_of("lora_equal").label == "LoRA-equal (r=2)"
    with pytest.raises(ValueError, match="runs at budgets \\['all'\\], got 'd0.05'"):
        cfg.budget("full", "d0.05")
    with pytest.raises(ValueError, match="no method of this config runs at a budget 'd0.2'"):
        cfg.budget_of("d0.2")  # a density the config does not list is not parsed into one


@pytest.mark.parametrize("folder", [p.name for p in BENCHMARK_FOLDERS])
def test_committed_results_load_and_rebuild_their_committed_report(folder):
    """Every committed benchmark folder loads through the registry and its report.md rebuilds byte for byte."""
    out = RESULTS / folder
    assert rep.report_markdown(out) == (out / "report.md").read_text()


def test_every_registered_method_declares_a_known_family_and_grid():
    cfg = bc.BenchConfig()
    for name in meth.known_methods():
        method = meth.get_method(name)
        assert method.family in FAMILIES, name
        assert cfg.lrs(name) and method.label, name
    assert [n for n in meth.known_methods() if meth.get_method(n).reference] == ["full"]


def test_a_method_of_an_unknown_family_is_refused():
    odd = BitFit("odd", "odd")
    odd.family = "hybrid"
    with pytest.raises(ValueError, match="family must be one of .*got 'hybrid'"):
        meth.register_method(odd)


def test_the_methods_settings_keep_their_config_json_keys():
    """``lift``, ``rigl`` and ``l1`` belong to their methods, yet a results folder's config.json keeps the flat
    keys it always had, so a committed folder's stored config equals the config read back from it."""
    from dataclasses import replace

    from scaleup.method_dynamic import LiftSettings, RigLSettings
    from scaleup.method_mask import L1Settings
    from scaleup.results import load_config, store

    cfg = bc.BenchConfig(lift=LiftSettings(rank=2, eps=1e-6), rigl=RigLSettings(every=7), l1=L1Settings(lam=1e-4))
    data = cfg.to_json()
    assert {"lift_rank", "lift_reselect_every", "lift_betas", "lift_eps", "rigl_every", "rigl_fraction", "l1_lam",
            "l1_lr"} <= set(data) and not {"lift", "rigl", "l1"} & set(data)
    assert (data["lift_rank"], data["rigl_every"], data["l1_lam"]) == (2, 7, 1e-4)
    assert bc.BenchConfig.from_json(data) == cfg
    assert "lift_eps" not in replace(cfg, lift=LiftSettings()).to_json()
    assert len(BENCHMARK_FOLDERS) >= 7
    for folder in BENCHMARK_FOLDERS:
        store(folder, load_config(folder))  # the store's guard accepts it: a rerun would resume the folder
