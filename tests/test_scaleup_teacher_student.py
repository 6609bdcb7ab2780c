"""Teacher-student GPT (micro preset, temporary cache): the construction, the measurements, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scaleup import teacher_student as ts

SMALL = {"preset": "micro", "blocks": (1,), "pretrain_steps": 40, "teacher_steps": 20, "teacher_lr": 1e-2,
         "steps": 20, "warmup": 2, "log_every": 5, "batch_size": 16, "lam": 1e-3}
"""A CI-sized study: the micro preset barely pretrained, a small lambda (its gradients are small)."""


@pytest.fixture(scope="module")
def study(cache: Path) -> ts.Study:
    return ts.run(ts.Config(**SMALL), cache_dir=cache, progress=False)


@pytest.mark.parametrize("bad, message", [
    ({"blocks": (2,)}, "blocks"), ({"blocks": ()}, "blocks"), ({"blocks": (0, 1)}, "every block"),
    ({"blocks": (1, 1)}, "blocks"), ({"student": "random"}, "student"), ({"objective": "mse"}, "objective"),
    ({"penalty": "l2"}, "penalty"), ({"lam": -1.0}, "lam"), ({"steps": 0}, "steps"), ({"target": "copy"}, "target"),
    ({"warmup": 20}, "warmup")])
def test_config_rejects_bad_values(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ts.Config(**{**SMALL, **bad})


def test_block_of_names_every_part() -> None:
    assert [ts.block_of(n) for n in ("tok_emb.weight", "blocks.3.attn.qkv.weight", "ln_f.bias")] == \
        ["embeddings", "block 3", "final norm"]
    with pytest.raises(ValueError, match="not a parameter name"):
        ts.block_of("head.weight")


def test_teacher_changes_only_the_chosen_block_and_the_task_token(study: ts.Study) -> None:
    t = study.teacher
    token = t.world.task_token(study.config.target)
    pre, teach = dict(t.pretrained.named_parameters()), dict(t.model.named_parameters())
    for name, p in pre.items():
        changed = (teach[name] != p).reshape(p.shape[0], -1).any(1) if p.ndim > 1 else (teach[name] != p)
        if name.startswith("blocks.1."):
            assert changed.any(), name
        elif name == "tok_emb.weight":
            assert changed.nonzero().flatten().tolist() == [token]
        else:
            assert not changed.any(), name


def test_the_student_differs_from_the_teacher_in_the_chosen_block_only(study: ts.Study) -> None:
    teach, pre = dict(study.teacher.model.named_parameters()), dict(study.teacher.pretrained.named_parameters())
    kept = dict(ts.make_student(study.teacher).named_parameters())
    for name, p in kept.items():
        assert torch.equal(p, pre[name] if name.startswith("blocks.1.") else teach[name]), name
    reinit = ts.Teacher(**{**vars(study.teacher), "config": ts.Config(**{**SMALL, "student": "reinit"})})
    redrawn = dict(ts.make_student(reinit).named_parameters())
    differs = {n for n, p in redrawn.items() if not torch.equal(p, teach[n])}
    matrices = {n for n, p in teach.items() if n.startswith("blocks.1.") and p.ndim == 2}
    assert matrices <= differs and all(n.startswith("blocks.1.") for n in differs)
    assert not any(torch.equal(redrawn[n], pre[n]) for n in matrices)  # re-drawn, not the pretrained values


def test_distillation_and_agreement_of_the_teacher_with_itself(study: ts.Study) -> None:
    t = study.teacher
    batch = t.world.train_batch(study.config.target, 0, 8, 0)
    assert ts.distill_loss(t.model, t.model, batch).item() == pytest.approx(0.0, abs=1e-6)
    assert ts.distill_loss(t.pretrained, t.model, batch).item() > 1e-4  # the teacher did change
    assert ts.agreement(t.model, t.model, t.world, study.config.target) == 1.0


def test_shares_add_up_and_the_l1_penalty_makes_the_update_sparse(study: ts.Study) -> None:
    assert list(study.runs) == [0.0, SMALL["lam"]]
    for run in study.runs.values():
        assert list(run.block_share) == ["embeddings", "block 0", "block 1", "final norm"]
        assert sum(run.block_share.values()) == pytest.approx(1.0)
        assert sum(run.type_share.values()) == pytest.approx(1.0)
        assert run.loss[-1] < run.loss[0]  # the student moves toward the teacher
        assert run.logged_steps[0] == 0 and run.logged_steps[-1] == SMALL["steps"] - 1
        assert all(len(v) == len(run.logged_steps) for v in run.block_l1.values())
    dense, sparse = study.runs[0.0], study.runs[SMALL["lam"]]
    moved = lambda r: sum(r.block_moved[b] for b in ("block 0", "block 1")) / 2
    assert moved(dense) > 0.9  # Adam moves every entry that has a gradient
    assert moved(sparse) < 0.5 * moved(dense)  # the proximal L1 step puts exact zeros back
    summary = study.summary()
    assert [r["lam"] for r in summary["runs"]] == [0.0, SMALL["lam"]]
    assert summary["runs"][1]["chosen_share"] == pytest.approx(study.chosen_share(SMALL["lam"]))
    json.dumps(summary)


def test_revealed_compares_the_chosen_blocks_with_the_rest(study: ts.Study) -> None:
    lam = SMALL["lam"]
    run = study.runs[lam]
    others = [v for k, v in run.block_share.items() if k != "block 1"]
    assert study.revealed(lam) == (run.block_share["block 1"] > max(others))


def test_plot_and_table(study: ts.Study) -> None:
    fig = ts.plot_shares(study)
    assert len(fig.axes) == 3 and len(fig.axes[0].patches) == 2 * 4 and fig.axes[2].lines
    table = ts.format_table(study)
    assert "block 1 *" in table and "mlp.fc" in table


def test_cli_json(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--preset", "micro", "--blocks", "1", "--steps", "10", "--teacher-steps", "10", "--pretrain-steps", "40",
            "--lam", "0.05", "--cache-dir", str(cache), "--json", "--no-progress"]
    assert ts.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["blocks"] == [1] and out["config"]["steps"] == 10
    assert [r["lam"] for r in out["runs"]] == [0.0, 0.05]
    assert set(out["runs"][0]["block_share"]) == {"embeddings", "block 0", "block 1", "final norm"}


def test_cli_rejects_bad_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        ts.main(["--preset", "micro", "--blocks", "5"])
    assert "blocks" in capsys.readouterr().err


def test_train_student_rejects_a_negative_lambda(study: ts.Study) -> None:
    with pytest.raises(ValueError, match="lam"):
        ts.train_student(study.teacher, -0.1, progress=False)
