"""The teacher-student toy: construction, recording, the CLI, and the science claims (Liu 2026)."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sparsity.cli_args import json_ready
from sparsity.metrics import update_sparsity
from toys import teacher_student as ts

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs() -> dict[str, ts.Result]:
    """The fast-mode runs the science tests share (about 5 s each on 2 cores)."""
    base = ts.default_config(fast=True)
    return {
        "lam0": ts.train(replace(base, lam=0.0), progress=False),
        "lam1e-3": ts.train(replace(base, lam=1e-3), progress=False),
        "prox": ts.train(replace(base, lam=1e-3, penalty="prox"), progress=False),
    }


def test_student_copies_layers_1_and_3_and_redraws_2() -> None:
    teacher, student = ts.make_teacher_student(ts.Config())
    assert torch.equal(student.fc1.weight, teacher.fc1.weight)
    assert torch.equal(student.fc3.bias, teacher.fc3.bias)
    assert not torch.equal(student.fc2.weight, teacher.fc2.weight)
    assert [ts.label(n) for n, _ in student.named_parameters()] == ["W1", "b1", "W2", "b2", "W3", "b3"]


def test_architecture_is_configurable() -> None:
    cfg = ts.Config(widths=(8, 6, 5, 4, 3), activation="tanh", copy_layers=(1, 4))
    teacher, student = ts.make_teacher_student(cfg)
    assert isinstance(student.act1, torch.nn.Tanh)
    assert torch.equal(student.fc4.weight, teacher.fc4.weight)
    assert not torch.equal(student.fc2.weight, teacher.fc2.weight)
    x, y, _, _ = ts.make_data(cfg, teacher)
    assert x.shape == (cfg.n_train, 8) and y.shape == (cfg.n_train, 3)


def test_history_records_every_step_and_starts_at_the_copied_layers() -> None:
    result = ts.train(ts.Config(steps=20, lam=1e-3), progress=False)
    h = result.history
    assert len(h.loss) == len(h.task_loss) == 20
    assert set(h.to_init) == set(h.to_teacher) == {"W1", "b1", "W2", "b2", "W3", "b3"}
    assert all(len(v) == 20 for v in h.to_init.values())
    assert h.to_init["W1"][-1] == pytest.approx(h.to_teacher["W1"][-1])  # W1 started at the teacher's
    assert h.to_teacher["W2"][0] > 1.0
    assert sum(result.update_share.values()) == pytest.approx(1.0)


def test_training_is_reproducible_bit_for_bit() -> None:
    a = ts.train(ts.Config(steps=30), progress=False)
    b = ts.train(ts.Config(steps=30), progress=False)
    assert a.history.loss == b.history.loss
    assert all(torch.equal(p, q) for p, q in zip(a.student.parameters(), b.student.parameters()))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(widths=(10,)), "widths"),
        (dict(copy_layers=(4,)), "copy_layers"),
        (dict(optimizer="rmsprop"), "optimizer"),
        (dict(penalty="l2"), "penalty"),
        (dict(lam=-1.0), "lam"),
        (dict(lr=float("nan")), "lr"),
        (dict(steps=0), "steps"),
    ],
)
def test_bad_config_is_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ts.Config(**overrides)


def test_lambda_1e3_concentrates_the_update_in_w2(runs: dict[str, ts.Result]) -> None:
    """The seed's main claim, at the fast config: W2 holds >= 90% of the L1 update, loss falls >= 10x."""
    r = runs["lam1e-3"]
    assert r.update_share["W2"] >= 0.9, r.update_share
    assert r.initial_loss / r.final_loss >= 10
    assert r.update_share["W1"] < 0.01 and r.update_share["W3"] < 0.05


def test_lambda_0_raw_update_sizes_mislead(runs: dict[str, ts.Result]) -> None:
    """Without the penalty, W2 (the only layer that needed to change) moves less than W1 and W3."""
    share = runs["lam0"].update_share
    assert share["W2"] < share["W1"] and share["W2"] < share["W3"], share
    assert runs["lam0"].final_loss < runs["lam1e-3"].final_loss  # the penalty costs some fit


def test_w2_does_not_converge_to_the_teachers(runs: dict[str, ts.Result]) -> None:
    r = runs["lam1e-3"]
    # it ends about half-way from its start to the teacher (48 of 99 at seed 0), far from 0
    assert r.distance_to_teacher["W2"] > 0.3 * r.history.to_teacher["W2"][0]


def test_proximal_step_leaves_exact_zeros_where_adam_jitters(runs: dict[str, ts.Result]) -> None:
    loss_term = update_sparsity(runs["lam1e-3"].student, runs["lam1e-3"].init, tol=0.0).per_tensor
    prox = update_sparsity(runs["prox"].student, runs["prox"].init, tol=0.0).per_tensor
    assert prox["fc1.weight"] > loss_term["fc1.weight"] + 0.3
    assert prox["fc3.weight"] > loss_term["fc3.weight"] + 0.3
    assert runs["prox"].update_share["W2"] >= 0.9


def test_cli_json_reports_every_tensor(capsys: pytest.CaptureFixture[str]) -> None:
    assert ts.main(["--lam", "0.001", "--steps", "50", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    keys = ["W1", "b1", "W2", "b2", "W3", "b3"]
    for field in ("update_share", "distance_to_init", "distance_to_teacher"):
        assert list(out[field]) == keys
    assert out["final_loss"] < out["initial_loss"]
    assert out["config"]["steps"] == 50


def test_cli_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "run.png"
    assert ts.main(["--lam", "0", "--steps", "20", "--plot", str(png), "--optimizer", "sgd", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "share of L1 update" in out and "W2" in out
    assert png.stat().st_size > 10_000


def test_cli_rejects_bad_input() -> None:
    with pytest.raises(SystemExit):
        ts.main(["--lam", "-1", "--no-progress"])
    with pytest.raises(SystemExit):
        ts.main(["--widths", "10,x", "--no-progress"])


def test_cli_runs_as_a_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "toys.teacher_student", "--steps", "10", "--json", "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    assert set(json.loads(proc.stdout)["update_share"]) == {"W1", "b1", "W2", "b2", "W3", "b3"}


def test_training_with_a_mask_moves_only_the_subnetwork() -> None:
    from sparsity import criteria, masks

    cfg = ts.Config(steps=100)
    teacher, student = ts.make_teacher_student(cfg)
    mask = masks.top_k(student, criteria.snip(student, ts.mse_loss, ts.batches(cfg, teacher)), 0.05)
    result = ts.train(cfg, progress=False, mask=mask)
    for name, p in result.student.named_parameters():
        assert torch.equal(p[~mask[name]], result.init[name][~mask[name]])
    assert result.final_loss < result.initial_loss


def test_sgd_with_the_proximal_step_records_every_step_and_leaves_exact_zeros() -> None:
    """The proximal step after SGD thresholds at lam * lr (sparsity.train.ProximalL1, no adaptive_lr)."""
    prox = ts.train(ts.Config(steps=60, optimizer="sgd", lam=1e-2, penalty="prox"), progress=False)
    term = ts.train(ts.Config(steps=60, optimizer="sgd", lam=1e-2), progress=False)
    assert len(prox.history.loss) == len(prox.history.task_loss) == 60
    assert prox.history.loss == prox.history.task_loss  # the penalty is a step, not a loss term
    assert term.history.loss[0] == term.history.task_loss[0]  # at the start the L1 distance is 0
    assert all(a > b for a, b in zip(term.history.loss[1:], term.history.task_loss[1:]))  # then a loss term
    unchanged = update_sparsity(prox.student, prox.init, tol=0.0).per_tensor
    assert unchanged["fc1.weight"] > update_sparsity(term.student, term.init, tol=0.0).per_tensor["fc1.weight"]


def test_a_diverging_run_fails_loudly() -> None:
    with pytest.raises(FloatingPointError, match="diverged"):
        ts.train(ts.Config(steps=50, optimizer="sgd", lr=1e3, schedule="constant"), progress=False)


def test_plot_update_shares_draws_one_bar_per_tensor_and_run(runs: dict[str, ts.Result]) -> None:
    ax = ts.plot_update_shares({"lambda = 0": runs["lam0"], "lambda = 1e-3": runs["lam1e-3"]})
    assert len(ax.patches) == 2 * 6
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lambda = 0", "lambda = 1e-3"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr", "inf"], "argument --lr: must be a finite number >= 0, got 'inf'"),
        (["--lam", "nan"], "argument --lam: must be a finite number >= 0, got 'nan'"),
        (["--steps", "0"], "argument --steps: must be a positive int, got 0"),
        (["--seed", "-1"], "argument --seed: must be a non-negative int, got -1"),
        (["--plot", "/no/such/folder/x.png"], "argument --plot: the folder /no/such/folder does not exist"),
    ],
)
def test_bad_flags_are_argparse_errors_before_any_training(argv, message, capsys, monkeypatch) -> None:
    monkeypatch.setattr(ts, "train", lambda *a, **k: pytest.fail("bad flags must fail before training"))
    with pytest.raises(SystemExit) as exit_info:
        ts.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_diverged_run_exits_nonzero_with_the_reason(capsys) -> None:
    assert ts.main(["--optimizer", "sgd", "--lr", "1e3", "--lam", "0", "--steps", "30", "--no-progress", "--json"]) == 1
    out = capsys.readouterr()
    assert "the run diverged" in out.err and "try a smaller --lr" in out.err
    assert out.out == ""  # no NaN-filled JSON


def test_json_output_never_holds_nan() -> None:
    clean = json_ready({"loss": float("nan"), "shares": {"W1": 0.5, "W2": float("inf")}, "xs": [1.0, float("-inf")]})
    assert clean == {"loss": None, "shares": {"W1": 0.5, "W2": None}, "xs": [1.0, None],
                     "non_finite": ["loss", "shares.W2", "xs[1]"]}
    json.dumps(clean, allow_nan=False)
