"""The RL command lines (``python -m scaleup.rl``, ``rl_study --preset``) and the scale study (``scaleup.rl_scale``)."""

import json
from dataclasses import replace

import matplotlib.pyplot as plt
import pytest

from scaleup import pretrain, rl, rl_scale, rl_study
from scaleup import tasks as tk

WORLD = tk.World()
GRPO_FLAGS = ("--grpo-loss", "--epsilon", "--epsilon-high", "--iterations", "--std-eps", "--scale-rewards", "--kl",
              "--kl-ratio")


def _short_pretrain(preset: str = "micro", fast: bool = False) -> pretrain.PretrainConfig:
    return pretrain.PretrainConfig(preset=preset, world=WORLD.config, steps=30)


@pytest.mark.parametrize("module", [rl, rl_study, rl_scale])
def test_help_shows_grpos_clipping_and_iteration_options(module, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert all(flag in shown for flag in GRPO_FLAGS), shown
    assert ("--presets" if module is rl_scale else "--preset") in shown


def test_one_run_prints_its_reward_trace_and_update_sparsity(cache, monkeypatch, capsys) -> None:
    monkeypatch.setattr(rl.pretrain, "default_config", _short_pretrain)
    argv = ["--preset", "micro", "--weights", "bfloat16", "--steps", "3", "--prompts", "4", "--group", "2",
            "--warmup-steps", "5", "--cache-dir", str(cache), "--no-progress"]
    assert rl.main(argv) == 0
    text = capsys.readouterr().out
    assert "micro GPT (30 pretraining steps)" in text and "bfloat16 weights, lr 0.0001, 3 steps" in text
    trace = next(line for line in text.splitlines() if line.startswith("mean reward every 1 step(s):"))
    assert len(trace.split(":")[1].split()) == 3
    assert "compared in bf16" in text and "norm.weight" in text
    assert rl.main([*argv, "--json", "--grpo-loss", "bnpo", "--iterations", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["grpo"]["iterations"] == 3 and out["config"]["preset"] == "micro"
    assert len(out["history"]["reward"]) == 3 and 0.0 <= out["update_sparsity"] <= 1.0
    assert out["warmup_steps_taken"] <= 5


def test_a_bad_grpo_mix_or_warm_up_is_refused_before_any_work(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        rl.main(["--iterations", "2"])  # the lab's summed loss has no ratio: on-policy only
    assert done.value.code == 2 and "needs a clipped loss" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        rl.main(["--lr", "0"])
    assert done.value.code == 2 and "lr" in capsys.readouterr().err
    with pytest.raises(ValueError, match="WarmUp.target"):
        rl.WarmUp(target=1.5)
    with pytest.raises(ValueError, match="WarmUp.chunk"):
        rl.WarmUp(chunk=0)


def test_the_study_takes_its_preset_from_the_command_line(monkeypatch, capsys) -> None:
    seen = {}

    def fake_study(cfg, cache_dir=None, progress=False):
        seen["cfg"] = cfg
        return {"preset": cfg.preset}

    monkeypatch.setattr(rl_study, "run_study", fake_study)
    assert rl_study.main(["--preset", "small", "--json", "--no-progress"]) == 0
    assert seen["cfg"].preset == "small" and json.loads(capsys.readouterr().out) == {"preset": "small"}


def _tiny_scale(**overrides) -> rl_scale.ScaleConfig:
    study = rl_study.default_config(fast=True, steps=3, prompts=4, group=2, warmup_steps=5,
                                    pretrain=_short_pretrain())
    return rl_scale.ScaleConfig(**{"presets": ("micro",), "lrs": (1e-4, 1e-2), "study": study, **overrides})


def test_the_scale_study_writes_its_report_and_resumes_without_rerunning(tmp_path, cache, monkeypatch) -> None:
    calls = []
    real = rl_study.run_one

    def counted(*args, **kwargs):
        calls.append((args[4], kwargs["lr"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(rl_study, "run_one", counted)
    cfg = _tiny_scale(lrs=(1e-2,))
    monkeypatch.setattr(rl_scale, "default_config", lambda fast=False: cfg)
    out = tmp_path / "rl_scale"
    argv = ["--out", str(out), "--cache-dir", str(cache), "--no-progress"]
    assert rl_scale.main(argv) == 0
    assert sorted(calls) == sorted((w, lr) for lr in cfg.lrs for w in rl_scale.WEIGHTS)
    summary = json.loads(out.with_suffix(".json").read_text())
    runs = summary["sizes"]["micro"]["runs"]
    assert len(runs) == 2 and all(r["wall_s"] > 0 and 0 <= r["update_sparsity"] <= 1 for r in runs)
    bf16 = [r for r in runs if r["weights"] == "bfloat16"]
    assert all("half_ulp_predictor_total" in r and "half_ulp_predictor_per_step" in r for r in bf16)
    assert summary["sizes"]["micro"]["verdicts"] and "## micro" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")

    assert rl_scale.main(argv) == 0  # resumed: nothing left to run
    assert len(calls) == 2
    assert rl_scale.main([*argv, "--lrs", "1e-2,1e-3"]) == 0  # one more learning rate: only its two runs
    assert calls[2:] == [("float32", 1e-3), ("bfloat16", 1e-3)]
    assert len(json.loads(out.with_suffix(".json").read_text())["sizes"]["micro"]["runs"]) == 4
    assert rl_scale.main([*argv, "--report-only", "--lrs", "3e-3"]) == 0  # rebuilds from the store, runs nothing
    assert len(calls) == 4
    assert "not run yet (a rerun resumes them): micro float32 lr 0.003, micro bfloat16 lr 0.003." in \
        out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):  # nothing to report from a folder without runs, and no folder made
        rl_scale.main(["--out", str(tmp_path / "empty"), "--report-only"])
    assert not (tmp_path / "empty").exists()
    with pytest.raises(SystemExit):  # runs of another configuration are not mixed into the store
        rl_scale.main([*argv, "--kl", "0.5"])
    assert len(calls) == 4


def _cell(preset: str, weights: str, lr: float, unchanged: float, gain: float) -> dict:
    target = 0.3 + gain
    row = dict(preset=preset, weights=weights, lr=lr, seed=0, start_target=0.3, warmup_steps_taken=20,
               parameters={"micro": 26_000, "tiny": 460_000}[preset],
               median_half_ulp={"micro": 1e-4, "tiny": 5e-5}[preset], start_wall_s=9.0, target=target,
               target_val=target, update_sparsity=unchanged, update_sparsity_fp32_compare=unchanged,
               per_layer_type={"norm.weight": 1.0, "mlp.fc": unchanged}, relative_rank=0.95,
               changed_by_decile=[0.5] * 10, reward_first_last=[0.3, 0.3 + gain], wall_s=2.0, load_average=1.0)
    if weights == "float32":
        row.update(half_ulp_predictor_total=0.7, half_ulp_predictor_per_step=0.8)
    return row


def _store(bf16_shares: dict[str, tuple[float, float]], gain: float) -> dict[str, dict]:
    cells = {}
    for preset, shares in bf16_shares.items():
        for lr, share in zip((1e-4, 1e-3), shares):
            for weights, unchanged in (("bfloat16", share), ("float32", 0.1)):
                cells[f"{preset}|{weights}|{lr!r}|0"] = _cell(preset, weights, lr, unchanged, gain)
    return cells


def test_the_verdicts_are_worded_from_the_numbers(tmp_path) -> None:
    sparse = rl_scale.summarise(_store({"micro": (0.9, 0.5), "tiny": (0.95, 0.7)}, gain=0.5))
    dense = rl_scale.summarise(_store({"micro": (0.4, 0.5), "tiny": (0.3, 0.2)}, gain=0.5))
    held = "RL updates a small subnetwork: held"
    assert any(held in v for v in sparse["sizes"]["tiny"]["verdicts"])
    assert not any(held in v for v in dense["sizes"]["tiny"]["verdicts"])
    assert any("Sparse while learning (target up by >= 0.4, GRPO bfloat16): held" in v
               for v in sparse["sizes"]["micro"]["verdicts"])
    assert any("Sparse while learning (target up by >= 0.4, GRPO bfloat16): did not hold" in v
               for v in dense["sizes"]["micro"]["verdicts"])
    assert sparse["trend"][0] == "At lr 0.0001 in bf16 the unchanged share rises with size: micro 90%, tiny 95%."
    assert dense["trend"][0] == "At lr 0.0001 in bf16 the unchanged share falls with size: micro 40%, tiny 30%."
    flat = rl_scale.summarise(_store({"micro": (0.9, 0.5), "tiny": (0.91, 0.5)}, gain=0.5))
    assert flat["trend"][1].startswith("At lr 0.001 in bf16 the unchanged share stays flat")
    assert any("shrinks as the model grows" in v for v in sparse["trend"])
    dense_cells = _store({"micro": (0.4, 0.5), "tiny": (0.3, 0.2)}, gain=0.5)
    rl_scale.write_report(dense_cells, _tiny_scale(), tmp_path / "r", "cmd")
    report = (tmp_path / "r.md").read_text()
    assert "## tiny (460,000 parameters)" in report and dense["trend"][0] in report
    assert "| 0.0001 | 2 | bfloat16 | 0.300 -> 0.800 | 0.30 -> 0.80 | 30.0% | 70.0% | 80.0% | 2 |" in report
    # tiny's x is twice micro's: its share at lr 1e-4 lies on micro's curve (log-x interpolated)
    collapsed = rl_scale.summarise(_store({"micro": (0.9, 0.5), "tiny": (0.78, 0.1)}, gain=0.5))
    assert "lr / half-ulp lines micro and tiny up in bfloat16: held; mean gap 0.0 points at equal lr / half-ulp, " \
           "26.0 at equal lr." in collapsed["trend"]
    assert any(v.startswith("lr / half-ulp lines micro and tiny up in bfloat16: did not hold") for v in sparse["trend"])
    assert any(v.startswith("lr / half-ulp lines micro and tiny up in float32: no difference") for v in sparse["trend"])
    untested = rl_scale.summarise(_store({"micro": (0.9, 0.5)}, gain=0.0))
    assert untested["trend"] == ["Across sizes: untested, only micro finished."]
    assert any("Sparse while learning: untested" in v for v in untested["sizes"]["micro"]["verdicts"])


def test_a_bf16_run_carries_its_float32_twins_predictors_and_the_figure_normalises_lr() -> None:
    summary = rl_scale.summarise(_store({"micro": (0.9, 0.5), "tiny": (0.95, 0.7)}, gain=0.5))
    for entry in summary["sizes"].values():
        for r in entry["runs"]:
            assert ("half_ulp_predictor_total" in r) == (r["weights"] == "bfloat16")
    fig = rl_scale.plot_trend(summary)
    plt.close(fig)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert len(lines) == 4 and ax.get_xscale() == "log" and "half bf16 ulp" in ax.get_xlabel()
    tiny_bf16 = lines["tiny (0.46M), bfloat16"]
    assert list(tiny_bf16.get_xdata()) == pytest.approx([1e-4 / 5e-5, 1e-3 / 5e-5])
    assert tiny_bf16.get_linestyle() == "-" and lines["tiny (0.46M), float32"].get_linestyle() == "--"
    assert tiny_bf16.get_color() != lines["micro (0.03M), bfloat16"].get_color()


def test_bad_scale_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="presets"):
        _tiny_scale(presets=("huge",))
    with pytest.raises(ValueError, match="lrs"):
        _tiny_scale(lrs=(1e-4, 1e-4))
    with pytest.raises(ValueError, match="lrs"):
        _tiny_scale(lrs=(0.0,))
    assert replace(_tiny_scale(), seed=3).cells()[0] == dict(preset="micro", weights="float32", lr=1e-4, seed=3)
