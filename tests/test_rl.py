"""RL, DPO and SFT fine-tuning (scaleup.rl) and the update-sparsity measures (sparsity.metrics, scaleup.rl_study)."""

import json
import math

import pytest
import torch

from scaleup import gpt, rl, rl_study
from scaleup import tasks as tk
from sparsity import metrics

WORLD = tk.World(tk.WorldConfig(n_symbols=7, length=4, n_facts=6, n_eval=16))


def test_rewards_exact_and_per_token() -> None:
    truth = torch.tensor([[1, 2, 3], [1, 2, 3]])
    answers = torch.tensor([[1, 2, 3], [1, 0, 3]])
    assert rl.rewards(answers, truth, "exact").tolist() == [1.0, 0.0]
    assert rl.rewards(answers, truth, "token").tolist() == pytest.approx([1.0, 2 / 3])


def test_group_advantages_by_hand() -> None:
    adv = rl.group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]), eps=0.0 + 1e-12)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()  # sample std, as torch computes it
    assert adv[0].tolist() == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std])
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # all equal: nothing to learn
    with pytest.raises(ValueError, match="group >= 2"):
        rl.group_advantages(torch.ones(3, 1))


def test_grpo_loss_by_hand() -> None:
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]])
    adv = torch.tensor([1.0, -2.0])
    assert rl.grpo_loss(logp, adv).item() == pytest.approx(-(1.0 * -3.0 + -2.0 * -1.0) / 2)
    ref = torch.tensor([[-1.0, -1.0], [-0.5, -1.5]])
    k3 = [math.exp(r - l) - (r - l) - 1 for r, l in zip(ref.flatten().tolist(), logp.flatten().tolist())]
    assert rl.grpo_loss(logp, adv, ref, kl=0.5).item() == pytest.approx(0.5 + 0.5 * sum(k3) / 4)
    with pytest.raises(ValueError, match="kl > 0 needs ref_logprobs"):
        rl.grpo_loss(logp, adv, kl=0.1)


def test_dpo_loss_by_hand() -> None:
    c, r, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))
    margin = (-1.0 + 2.0) - (-3.0 + 2.0)
    assert rl.dpo_loss(c, r, rc, rr, beta=0.5).item() == pytest.approx(math.log1p(math.exp(-0.5 * margin)))
    assert rl.dpo_loss(c, c, c, c).item() == pytest.approx(math.log(2))
    # online pairs: only the kept ones count
    two = [torch.tensor([a, b]) for a, b in ((-1.0, 0.0), (-3.0, 0.0), (-2.0, 0.0), (-2.0, 0.0))]
    assert rl.dpo_loss(*two, beta=0.5, keep=torch.tensor([1.0, 0.0])).item() == pytest.approx(
        math.log1p(math.exp(-0.5 * margin)))
    assert rl.dpo_loss(*two, keep=torch.zeros(2)).item() == 0.0


def test_bf16_storage_rounds_every_step_and_small_steps_round_away() -> None:
    model = gpt.build("micro", WORLD.vocab_size, WORLD.block_size, seed=0)
    cfg = rl.RLConfig(algorithm="sft", task="add2", steps=3, prompts=4, lr=1e-7, weights="bfloat16")
    start = {n: p.detach().clone().to(torch.bfloat16).float() for n, p in model.named_parameters()}
    rl.finetune(model, cfg, WORLD)
    for n, p in model.named_parameters():
        assert torch.equal(p, p.to(torch.bfloat16).float()), n  # stored in bf16
    for n, p in model.named_parameters():
        moved = p != start[n]
        # Adam moves each entry by about lr per step: 3e-7 in all, below half a bf16 ulp of any |w| >= 1e-4
        assert not moved[start[n].abs() >= 1e-4].any(), n
    assert any((p != start[n]).any() for n, p in model.named_parameters())  # the tiny weights did move


@pytest.mark.parametrize("algorithm", rl.ALGORITHMS)
def test_every_algorithm_trains_through_fit(algorithm: str) -> None:
    model = gpt.build("micro", WORLD.vocab_size, WORLD.block_size, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    history = rl.finetune(model, rl.RLConfig(algorithm=algorithm, steps=2, prompts=4, group=3, lr=1e-3,
                                             reward="token", kl=0.1 if algorithm == "grpo" else 0.0), WORLD)
    assert len(history["loss"]) == 2 and all(math.isfinite(v) for v in history["loss"])
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_sft_on_another_tasks_answers_uses_that_rule() -> None:
    model = gpt.build("micro", WORLD.vocab_size, WORLD.block_size, seed=0)
    batch = rl.batch_maker(rl.RLConfig(algorithm="sft", sft_data="sort", prompts=5), WORLD, model, None)(0)
    inputs = batch["prompt"][:, 1:-1] - WORLD.symbol_tokens(torch.zeros((), dtype=torch.long))
    assert torch.equal(batch["answer"], WORLD.symbol_tokens(inputs.sort(1).values))


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="RLConfig.algorithm must be one of"):
        rl.RLConfig(algorithm="ppo")
    with pytest.raises(ValueError, match="RLConfig.seed must be a non-negative int"):
        rl.RLConfig(seed=-1)
    with pytest.raises(ValueError, match="RLConfig.group must be >= 2"):
        rl.RLConfig(group=1)
    with pytest.raises(ValueError, match="RLConfig.sft_data must be one of"):
        rl.RLConfig(sft_data="facts_a")
    with pytest.raises(ValueError, match="RLConfig.lr must be finite"):
        rl.RLConfig(lr=float("inf"))


def test_half_ulp_is_where_bf16_rounding_stops() -> None:
    x = torch.tensor([0.5, 1.0, 1.5, -3.0, 1e-3, 0.7, 0.0])
    half = metrics.half_ulp(x)
    stored = x.to(torch.bfloat16)
    assert torch.equal((stored.float() + 0.99 * half).to(torch.bfloat16), stored)
    assert not torch.equal((stored.float() + 1.01 * half)[:-1].to(torch.bfloat16), stored[:-1])
    assert half[0].item() == 2.0**-9 and half[-1].item() == 0.0


def test_predictor_and_deciles_on_a_hand_made_update() -> None:
    ref = {"w": torch.tensor([0.5, 0.5, 4.0, 4.0])}
    updated = {"w": ref["w"] + torch.tensor([1e-3, 1e-2, 1e-2, 0.0])}  # half ulps: 2**-9, 2**-9, 2**-6, 2**-6
    assert metrics.below_half_ulp_share(ref, updated) == pytest.approx(3 / 4)
    ref = {"w": -torch.arange(1.0, 21.0)}  # |w| = 1 .. 20
    changed = {"w": ref["w"].abs() <= 10}  # the small half moved
    assert metrics.changed_by_magnitude_decile(ref, changed) == [1.0] * 5 + [0.0] * 5


def test_the_study_runs_in_fast_mode_and_prints_json(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LAB_FAST", "1")
    small = rl_study.default_config(fast=True, preset="micro", steps=3, warmup_steps=5, algorithms=("grpo", "sft"),
                                    pretrain=rl_study.pretrain.PretrainConfig(preset="micro", world=WORLD.config,
                                                                              steps=30))
    monkeypatch.setattr(rl_study, "default_config", lambda **kw: small)
    assert rl_study.main(["--json", "--no-progress", "--cache-dir", str(tmp_path)]) == 0
    study = json.loads(capsys.readouterr().out)
    assert set(study["runs"]) == {"grpo/float32", "grpo/bfloat16", "sft/float32", "sft/bfloat16"}
    for row in study["runs"].values():
        assert 0.0 <= row["update_sparsity"] <= 1.0 and len(row["changed_by_decile"]) == 10
        assert 0.0 <= row["update_sparsity_fp32_compare"] <= 1.0
        assert set(row["per_layer_type"]) >= {"norm.weight", "norm.bias", "attn.qkv", "mlp.fc", "embedding"}
    assert {"half_ulp_predictor_total", "half_ulp_predictor_per_step"} <= set(study["runs"]["grpo/bfloat16"])
    assert study["warmup_steps_taken"] <= 5
    assert len(study["controls"]) == (2 + len(small.algorithms) - 1) * len(small.lr_sweep) + 3
    assert set(rl_study.best_lr_rows(study)) == {"grpo", "sft"}
    assert any("without warm-up" in k for k in study["controls"]) and any("own samples" in k for k in study["controls"])
    assert 0.0 <= study["overlap"]["jaccard"] <= 1.0
    assert set(study["retrain"]["agreement_all"]) == {"1e-5_bf16", "1_ulp", "1e-3"}


def test_retrain_verdict_is_untested_when_the_full_run_barely_learned() -> None:
    """Lesson 6 printed "held" for a retrain matching a full run that went 0.422 -> 0.430: nothing to get back."""
    def study(full: float) -> dict:
        return {"runs": {}, "start_target": 0.422,
                "retrain": {"full_target": full, "masked_target": full - 0.01, "agreement_in_subnetwork": {"1e-5_bf16": 0.5}}}

    (barely,) = rl_study.verdicts(study(0.430))
    assert "untested" in barely and "held" not in barely and "0.422 -> 0.430" in barely
    (learned,) = rl_study.verdicts(study(0.700))
    assert "reproduces the full run: held" in learned
