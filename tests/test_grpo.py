"""GRPO as TRL runs it (scaleup.grpo): the clipped ratio, the normalisations, the KL in TRL's convention,
several updates per sampled batch, the advantage's options, and the lab's first convention beside them."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from scaleup import gpt, grpo, rl, rl_study, sampling
from scaleup import tasks as tk
from sparsity.train import constant, fit

WORLD = tk.World(tk.WorldConfig(n_symbols=7, length=4, n_facts=6, n_eval=16))

# Two answers of up to 3 tokens; the second has 2 (its last token is padding). Ratios chosen so the
# clipping acts both ways: A > 0 with ratio 1.5 (clipped to 1 + 0.28) and A < 0 with ratio 0.5 (clipped to 0.8).
RATIOS = [[1.5, 0.9, 1.1], [0.5, 1.3, 7.0]]
LOGP = [[-0.5, -1.0, -0.2], [-2.0, -0.1, -0.7]]
REF = [[-0.7, -1.0, -0.1], [-1.5, -0.3, -0.2]]
ADV = [1.0, -2.0]
MASK = [[1, 1, 1], [1, 1, 0]]
SETTINGS = dict(epsilon=0.2, epsilon_high=0.28)


def tensors():
    logp = torch.tensor(LOGP, requires_grad=True)
    old = torch.tensor(LOGP) - torch.tensor(RATIOS).log()
    return logp, old, torch.tensor(ADV), torch.tensor(REF), torch.tensor(MASK)


def close(got: torch.Tensor, want: list[list[float]]) -> None:
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def by_hand(beta: float, kl_ratio: bool = False) -> list[list[float]]:
    """TRL's per-token loss written out with Python floats."""
    out = []
    for logps, refs, ratios, a in zip(LOGP, REF, RATIOS, ADV):
        row = []
        for lp, rf, r in zip(logps, refs, ratios):
            clipped = min(max(r, 1 - 0.2), 1 + 0.28)
            loss = -min(r * a, clipped * a)
            k3 = math.exp(rf - lp) - (rf - lp) - 1
            row.append(loss + beta * (k3 * r if kl_ratio else k3))
        out.append(row)
    return out


@pytest.mark.parametrize("loss", ["grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("kl_ratio", [False, True])
def test_each_normalisation_by_hand(loss: str, kl_ratio: bool) -> None:
    logp, old, adv, ref, mask = tensors()
    settings = grpo.GRPOSettings(loss=loss, kl_ratio=kl_ratio, **SETTINGS)
    per_token = by_hand(0.04, kl_ratio)
    k3 = [math.exp(-0.2) + 0.2 - 1, math.exp(0.5) - 0.5 - 1]  # the first token of each answer
    assert per_token[0][0] == pytest.approx(-1.28 + 0.04 * k3[0] * (1.5 if kl_ratio else 1))  # clipped above
    assert per_token[1][0] == pytest.approx(2 * 0.8 + 0.04 * k3[1] * (0.5 if kl_ratio else 1))  # and below
    got = grpo.token_losses(logp, adv, settings, old, ref, beta=0.04)
    close(got, per_token)
    kept = [[v for v, m in zip(row, ms) if m] for row, ms in zip(per_token, MASK)]
    expected = {
        "grpo": sum(sum(r) / len(r) for r in kept) / 2,  # per answer, then over answers
        "bnpo": sum(map(sum, kept)) / 5,  # over the 5 answer tokens
        "dr_grpo": sum(map(sum, kept)) / (2 * 4),  # over answers * L_max (4 here)
    }[loss]
    value = grpo.clipped_loss(logp, adv, settings, old, ref, 0.04, mask=mask, max_length=4)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_the_clipped_tokens_get_no_gradient() -> None:
    logp, old, adv, _, _ = tensors()
    grpo.clipped_loss(logp, adv, grpo.GRPOSettings(loss="bnpo", **SETTINGS), old).backward()
    # d/dlogp of -r * A / 6 is -r * A / 6 where the ratio is inside its clip range, 0 where the clip binds
    # (1.5, A > 0 and 0.5, A < 0 are clipped; 7.0 with A < 0 is not: min picks the unclipped 7 * A)
    inside = [[0.0, -0.9 / 6, -1.1 / 6], [0.0, 2 * 1.3 / 6, 2 * 7.0 / 6]]
    close(logp.grad, inside)


@pytest.mark.parametrize("loss", ["grpo", "bnpo", "dr_grpo"])
def test_on_policy_the_clipped_loss_has_the_unclipped_gradient(loss: str) -> None:
    """K = 1: the sampling model is the current one, ratio == 1, so clipping cannot act."""
    logp, _, adv, _, mask = tensors()
    settings = grpo.GRPOSettings(loss=loss, epsilon=0.01)  # a narrow clip, which the ratio 1 never reaches
    grpo.clipped_loss(logp, adv, settings, mask=mask).backward()
    clipped = logp.grad.clone()
    logp.grad = None
    grpo.normalise(-adv[:, None] * logp, loss, mask).backward()  # the plain policy gradient, same normalisation
    assert torch.equal(clipped, logp.grad)
    assert clipped.abs().sum() > 0


def test_the_labs_sum_is_L_times_trls_per_token_loss_and_its_kl_L_times_weaker() -> None:
    logp, _, adv, ref, _ = tensors()
    L, beta = logp.shape[1], 0.04
    grpo.clipped_loss(logp, adv, grpo.GRPOSettings(loss="grpo"), ref_logprobs=ref, beta=beta).backward()
    trl = logp.grad.clone()
    logp.grad = None
    rl.grpo_loss(logp, adv, ref, kl=L * beta).backward()  # the lab's kl = L * TRL's beta: the same direction
    torch.testing.assert_close(logp.grad, L * trl)
    logp.grad = None
    rl.grpo_loss(logp, adv, ref, kl=beta).backward()  # the same number as kl: the KL counts L times less
    assert not torch.allclose(logp.grad, L * trl)


def test_advantage_scales_and_the_std_epsilon() -> None:
    reward = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    std = [math.sqrt(sum((x - 0.5) ** 2 for x in (1, 0, 0, 1)) / 3), math.sqrt((3 * 0.25**2 + 0.75**2) / 3)]
    centred = [[0.5, -0.5, -0.5, 0.5], [0.25, 0.25, 0.25, -0.75]]
    for eps in (1e-6, 1e-4):
        got = rl.group_advantages(reward, eps, "group")
        want = [[c / (s + eps) for c in row] for row, s in zip(centred, std)]
        close(got, want)
    flat = [1, 0, 0, 1, 1, 1, 1, 0]
    batch_std = math.sqrt(sum((x - 5 / 8) ** 2 for x in flat) / 7)
    close(rl.group_advantages(reward, 1e-4, "batch"), [[c / (batch_std + 1e-4) for c in row] for row in centred])
    close(rl.group_advantages(reward, 1e-4, "none"), centred)
    with pytest.raises(ValueError, match="scale must be one of"):
        rl.group_advantages(reward, 1e-4, "token")


def test_several_updates_per_sampled_batch_reuse_it_with_the_sampling_models_logprobs() -> None:
    model = gpt.build("micro", WORLD.vocab_size, WORLD.block_size, seed=0)
    cfg = rl.RLConfig(steps=4, prompts=4, group=3, lr=1e-2, reward="token",
                      grpo=grpo.GRPOSettings(loss="grpo", iterations=2))
    batch = rl.batch_maker(cfg, WORLD, model, None)
    b0 = batch(0)
    with torch.no_grad():
        assert torch.equal(b0["old_logprobs"], sampling.answer_logprobs(model, b0["prompt"], b0["answer"]))
    assert batch(1) is b0 and batch(2) is not b0 and batch(3) is batch(2)
    ratios = []

    def loss(m, b):  # record the ratio each step sees
        with torch.no_grad():
            ratios.append((sampling.answer_logprobs(m, b["prompt"], b["answer"]) - b["old_logprobs"]).exp())
        return rl.loss_of(cfg)(m, b)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    fit(model, opt, loss, cfg.steps, batches=rl.batch_maker(cfg, WORLD, model, None), schedule=constant(cfg.lr))
    for on_policy in (ratios[0], ratios[2]):
        assert torch.allclose(on_policy, torch.ones_like(on_policy))
    assert not torch.allclose(ratios[1], torch.ones_like(ratios[1]))  # the second update is off-policy
    history = rl.finetune(gpt.build("micro", WORLD.vocab_size, WORLD.block_size, seed=0), cfg, WORLD)
    assert len(history["loss"]) == 4 and all(math.isfinite(v) for v in history["loss"])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="needs a clipped loss"):
        grpo.GRPOSettings(iterations=2)
    with pytest.raises(ValueError, match="GRPOSettings.loss must be one of"):
        grpo.GRPOSettings(loss="dapo")
    with pytest.raises(ValueError, match="GRPOSettings.epsilon must be < 1"):
        grpo.GRPOSettings(epsilon=1.0)
    with pytest.raises(ValueError, match="GRPOSettings.std_eps must be a finite number > 0"):
        grpo.GRPOSettings(std_eps=0.0)
    with pytest.raises(ValueError, match="GRPOSettings.iterations must be a positive int"):
        grpo.GRPOSettings(loss="grpo", iterations=0)
    with pytest.raises(ValueError, match="RLConfig.grpo.iterations > 1 is GRPO's"):
        rl.RLConfig(algorithm="sft", grpo=grpo.GRPOSettings(loss="grpo", iterations=2))
    with pytest.raises(TypeError, match="RLConfig.grpo must be"):
        rl.RLConfig(grpo={"loss": "grpo"})
    logp, old, adv, _, _ = tensors()
    with pytest.raises(ValueError, match="beta > 0 needs ref_logprobs"):
        grpo.token_losses(logp, adv, grpo.GRPOSettings(loss="grpo"), beta=0.1)
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        grpo.token_losses(logp, adv, grpo.GRPOSettings(loss="grpo"), old[:, :2])
    with pytest.raises(ValueError, match="loss must be one of"):
        grpo.normalise(logp, "sum")


def test_the_command_line_shows_and_passes_the_grpo_options(monkeypatch, capsys) -> None:
    with pytest.raises(SystemExit):
        rl_study.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--grpo-loss", "default sum"), ("--epsilon", "default 0.2"), ("--iterations", "default 1"),
                          ("--std-eps", "default 1e-06"), ("--kl", "default 0")):
        assert flag in text and default in text, flag
    seen = {}

    class Given(Exception):
        """Raised by the stand-in study once it has the config: nothing runs."""

    def study(cfg, *args, **kwargs):
        seen["cfg"] = cfg
        raise Given

    monkeypatch.setattr(rl_study, "run_study", study)
    with pytest.raises(Given):
        rl_study.main(["--grpo-loss", "dr_grpo", "--iterations", "2", "--epsilon-high", "0.28", "--std-eps", "1e-4",
                       "--scale-rewards", "none", "--kl", "0.04", "--no-progress"])
    cfg = seen["cfg"]
    assert cfg.grpo == grpo.GRPOSettings(loss="dr_grpo", iterations=2, epsilon_high=0.28, std_eps=1e-4,
                                         scale_rewards="none")
    assert cfg.run_config("grpo", "float32").grpo == cfg.grpo and cfg.run_config("grpo", "float32").kl == 0.04
    assert cfg.run_config("sft", "float32").grpo == grpo.LAB_2025  # the other algorithms keep theirs
    assert rl_study.default_config().grpo == grpo.LAB_2025  # the committed study's convention stays the default
    with pytest.raises(SystemExit):
        rl_study.main(["--iterations", "2"])
    assert "needs a clipped loss" in capsys.readouterr().err


# ---------------------------------------------------------------- against TRL itself


@pytest.mark.parametrize("loss", ["grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("kl_ratio", [False, True])
def test_the_loss_equals_trls_grpo_trainer(loss: str, kl_ratio: bool) -> None:
    """TRL's own ``GRPOTrainer._compute_loss`` on the same log-probs: value and gradient."""
    pytest.importorskip("trl", reason="TRL is not installed (pip install trl): the peer check runs only then")
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import nanstd

    logp, old, adv, ref, mask = tensors()
    theirs = logp.detach().clone().requires_grad_(True)
    identity = lambda x, **k: x  # noqa: E731
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (theirs, torch.zeros_like(theirs), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=0.04,
        loss_type=loss, epsilon_low=0.2, epsilon_high=0.28, use_vllm=False, vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, max_completion_length=4,
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics={"train": defaultdict(list)},
        args=SimpleNamespace(use_bias_correction_kl=kl_ratio, delta=None),
        accelerator=SimpleNamespace(gather=identity, gather_for_metrics=identity, num_processes=1,
                                    reduce=identity, sync_gradients=True))
    inputs = dict(prompt_ids=torch.zeros(2, 1, dtype=torch.long), prompt_mask=torch.ones(2, 1, dtype=torch.long),
                  completion_ids=torch.zeros(2, 3, dtype=torch.long), completion_mask=mask, advantages=adv,
                  old_per_token_logps=old, ref_per_token_logps=ref)
    trl_loss = GRPOTrainer._compute_loss(fake, None, inputs)
    trl_loss.backward()
    ours = grpo.clipped_loss(logp, adv, grpo.GRPOSettings(loss=loss, kl_ratio=kl_ratio, **SETTINGS), old, ref, 0.04,
                             mask=mask, max_length=4)
    ours.backward()
    torch.testing.assert_close(ours, trl_loss.detach(), rtol=0, atol=1e-7)
    torch.testing.assert_close(logp.grad, theirs.grad, rtol=0, atol=1e-7)
    reward = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])  # TRL's group advantage, std eps 1e-4
    std = nanstd(reward, dim=1).repeat_interleave(4)
    want = (reward.flatten() - reward.mean(1).repeat_interleave(4)) / (std + 1e-4)
    torch.testing.assert_close(rl.group_advantages(reward, 1e-4).flatten(), want)
