"""GRPO's loss as TRL runs it (``trl.GRPOTrainer``), beside the lab's first convention, as settings of one run.

GRPO (Shao et al. 2024) is PPO's clipped surrogate (Schulman et al. 2017) with a group-relative
advantage in place of a value model. TRL's ``GRPOTrainer._compute_loss`` computes, per answer
token ``t`` of answer ``i`` with advantage ``A_i``::

    ratio_it = exp(log p_it - log p_old_it)            # p_old: the model that sampled the answers
    loss_it  = -min(ratio_it * A_i, clip(ratio_it, 1 - epsilon, 1 + epsilon_high) * A_i)
             + beta * k3_it,   k3_it = exp(r_it) - r_it - 1,  r_it = log p_ref_it - log p_it

(Schulman 2020's k3 estimator of KL(p || p_ref); TRL >= 1.x multiplies it by ``ratio_it`` when
``use_bias_correction_kl``, here ``kl_ratio``), then normalises the token losses of the batch as
its ``loss_type`` says (``m`` the answer-token mask, ``B`` answers, ``L_max`` the longest allowed):

- ``"grpo"``: the mean over each answer's tokens, then over answers (per sequence);
- ``"bnpo"``: the mean over all answer tokens of the batch (per token; TRL's default ``"dapo"``
  divides by the tokens of the whole generation batch, which is this when, as here, one batch is
  sampled per generation);
- ``"dr_grpo"``: the sum over tokens divided by ``B * L_max`` (Liu et al. 2025, "Understanding
  R1-Zero-Like Training": no length bias), with ``scale_rewards="none"`` for their unscaled advantage.

``iterations`` (TRL's ``num_iterations``, the GRPO paper's mu) updates ``iterations`` times on each
sampled batch: the first update is on-policy (``p_old`` is the current model: ratio 1, clipping
inactive, and ``p_old`` is taken as ``log p.detach()`` as TRL does), the later ones off-policy, where
the ratio and its clipping act. The advantage is ``(r - mean) / (std + std_eps)`` within each group
(``scale_rewards="group"``; ``"batch"``: the std of the whole batch; ``"none"``: not divided), the std
with Bessel's correction as TRL's ``nanstd``; TRL adds ``std_eps = 1e-4``.

``loss="sum"`` is the lab's first convention (``scaleup.rl.grpo_loss``), kept as the default so the
committed RL study (``python -m scaleup.rl_study``) reproduces: ``-mean_i(A_i * sum_t log p_it)`` (summed token
log-probs, no length normalisation, no ratio: on-policy only, ``iterations=1``) plus ``kl`` times the
*mean* k3 over tokens, with ``std_eps = 1e-6``. Its policy gradient is ``L`` times TRL's per-token
one for answers of ``L`` tokens (every answer of the lab's tasks has the same length, so "grpo",
"bnpo" and "dr_grpo" coincide there) while its KL term is the same mean, so the lab's ``kl`` is ``L``
times weaker than TRL's ``beta`` of the same value: ``kl = L * beta`` gives TRL's update direction
(without ``kl_ratio``), ``L`` times larger.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from sparsity.cli_args import finite_nonnegative, positive_int
from sparsity.validate import check_positive_int

LAB_SUM = "sum"
LOSSES = (LAB_SUM, "grpo", "bnpo", "dr_grpo")
SCALES = ("group", "batch", "none")


@dataclass(frozen=True)
class GRPOSettings:
    """How GRPO turns sampled answers into a loss: the defaults are the lab's first convention (:data:`LAB_2025`)."""

    loss: str = LAB_SUM
    """One of :data:`LOSSES`: "sum" (the lab's) or TRL's loss_type "grpo", "bnpo", "dr_grpo"."""
    epsilon: float = 0.2
    """PPO's clip range: the ratio is clipped to ``[1 - epsilon, 1 + epsilon_high]`` (TRL's default 0.2)."""
    epsilon_high: float | None = None
    """The upper clip (DAPO's clip-higher, Yu et al. 2025, uses 0.28); None: ``epsilon``."""
    iterations: int = 1
    """Updates per sampled batch (TRL's ``num_iterations``); > 1 needs a clipped loss (not "sum")."""
    std_eps: float = 1e-6
    """Added to the reward std before dividing: the lab's 1e-6, TRL's 1e-4."""
    scale_rewards: str = "group"
    """One of :data:`SCALES`: divide the centred reward by the group's std, the batch's, or not at all."""
    kl_ratio: bool = False
    """Multiply the per-token k3 by the importance ratio (TRL's ``use_bias_correction_kl``)."""

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"GRPOSettings.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.scale_rewards not in SCALES:
            raise ValueError(f"GRPOSettings.scale_rewards must be one of {SCALES}, got {self.scale_rewards!r}")
        check_positive_int(self.iterations, "GRPOSettings.iterations")
        if self.iterations > 1 and self.loss == LAB_SUM:
            raise ValueError(f"GRPOSettings.iterations={self.iterations} needs a clipped loss ({LOSSES[1:]}): "
                             "loss 'sum' has no importance ratio, so it is on-policy only")
        for name in ("epsilon", "epsilon_high", "std_eps"):
            value = getattr(self, name)
            if value is None and name == "epsilon_high":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"GRPOSettings.{name} must be a finite number > 0, got {value!r}")
        if self.epsilon >= 1:
            raise ValueError(f"GRPOSettings.epsilon must be < 1 (the ratio is clipped at 1 - epsilon), "
                             f"got {self.epsilon!r}")
        if not isinstance(self.kl_ratio, bool):
            raise TypeError(f"GRPOSettings.kl_ratio must be a bool, got {self.kl_ratio!r}")

    @property
    def upper(self) -> float:
        """The upper clip, ``epsilon_high`` or else ``epsilon``."""
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


LAB_2025 = GRPOSettings()
"""The lab's first GRPO: summed log-probs, on-policy, std eps 1e-6 (the committed RL study)."""
TRL_DEFAULTS = GRPOSettings(loss="bnpo", std_eps=1e-4, kl_ratio=True)
"""TRL 1.16's ``GRPOConfig`` defaults as they act here (its "dapo" is "bnpo" with one batch per generation)."""


def token_losses(logprobs: torch.Tensor, advantages: torch.Tensor, settings: GRPOSettings,
                 old_logprobs: torch.Tensor | None = None, ref_logprobs: torch.Tensor | None = None,
                 beta: float = 0.0) -> torch.Tensor:
    """TRL's per-token loss ``[n, L]``: the clipped surrogate plus ``beta`` times k3 (see the module docstring).

    ``old_logprobs`` None: on-policy, ``logprobs.detach()`` (ratio exactly 1)."""
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    if old.shape != logprobs.shape:
        raise ValueError(f"old_logprobs has shape {tuple(old.shape)}, logprobs {tuple(logprobs.shape)}")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be [n] = {tuple(logprobs.shape[:1])}, got {tuple(advantages.shape)}")
    ratio = torch.exp(logprobs - old)
    adv = advantages[:, None]
    clipped = torch.clamp(ratio, 1 - settings.epsilon, 1 + settings.upper)
    loss = -torch.min(ratio * adv, clipped * adv)
    if beta:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        log_ref = ref_logprobs - logprobs
        k3 = torch.exp(log_ref) - log_ref - 1
        loss = loss + beta * (k3 * ratio if settings.kl_ratio else k3)
    return loss


def normalise(per_token: torch.Tensor, loss: str, mask: torch.Tensor | None = None,
              max_length: int | None = None) -> torch.Tensor:
    """The batch's loss from per-token losses ``[n, L]`` as TRL's ``loss_type`` says (``mask``: 1 for an
    answer token, default all; ``max_length``: "dr_grpo"'s ``L_max``, default ``L``)."""
    m = torch.ones_like(per_token) if mask is None else mask.to(per_token.dtype)
    if m.shape != per_token.shape:
        raise ValueError(f"mask has shape {tuple(m.shape)}, the token losses {tuple(per_token.shape)}")
    if loss == "grpo":
        return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    if loss == "bnpo":
        return (per_token * m).sum() / m.sum().clamp(min=1.0)
    if loss == "dr_grpo":
        return (per_token * m).sum() / (per_token.shape[0] * (max_length or per_token.shape[1]))
    raise ValueError(f"loss must be one of {LOSSES[1:]} (TRL's normalisations), got {loss!r}")


def clipped_loss(logprobs: torch.Tensor, advantages: torch.Tensor, settings: GRPOSettings,
                 old_logprobs: torch.Tensor | None = None, ref_logprobs: torch.Tensor | None = None,
                 beta: float = 0.0, mask: torch.Tensor | None = None, max_length: int | None = None) -> torch.Tensor:
    """GRPO's loss as TRL computes it: :func:`token_losses` normalised by ``settings.loss`` (:func:`normalise`)."""
    return normalise(token_losses(logprobs, advantages, settings, old_logprobs, ref_logprobs, beta),
                     settings.loss, mask, max_length)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """GRPO's command-line options (their defaults: :data:`LAB_2025`)."""
    d = LAB_2025
    g = parser.add_argument_group("GRPO's loss (scaleup.grpo; the defaults are the lab's first convention)")
    g.add_argument("--grpo-loss", choices=LOSSES, default=d.loss,
                   help="'sum': -A * sum of the answer's token log-probs, no ratio (the lab's); TRL's loss_type "
                        "'grpo' (per sequence), 'bnpo' (per token) or 'dr_grpo' (sum / (answers * length)), "
                        "each PPO's clipped ratio (default %(default)s)")
    g.add_argument("--epsilon", type=finite_nonnegative, default=d.epsilon,
                   help="clip the importance ratio to [1 - epsilon, 1 + epsilon-high] (default %(default)s)")
    g.add_argument("--epsilon-high", type=finite_nonnegative, default=None,
                   help="upper clip (DAPO: 0.28; default: --epsilon)")
    g.add_argument("--iterations", type=positive_int, default=d.iterations, metavar="K",
                   help="updates per sampled batch (TRL's num_iterations; > 1 needs a clipped --grpo-loss; "
                        "default %(default)s)")
    g.add_argument("--std-eps", type=finite_nonnegative, default=d.std_eps,
                   help="added to the reward std of the advantage (TRL: 1e-4; default %(default)g)")
    g.add_argument("--scale-rewards", choices=SCALES, default=d.scale_rewards,
                   help="divide the centred rewards by the group's std, the batch's, or none (Dr. GRPO; "
                        "default %(default)s)")
    g.add_argument("--kl", type=finite_nonnegative, default=0.0,
                   help="GRPO's KL coefficient: TRL's beta for a clipped loss (per-token k3); for 'sum' the "
                        "mean k3, L times weaker per answer of L tokens (default %(default)g)")
    g.add_argument("--kl-ratio", action="store_true",
                   help="multiply the k3 by the importance ratio (TRL's use_bias_correction_kl)")


def from_arguments(args: argparse.Namespace) -> GRPOSettings:
    """The :class:`GRPOSettings` of parsed :func:`add_arguments` options (raises ValueError on a bad mix)."""
    return GRPOSettings(loss=args.grpo_loss, epsilon=args.epsilon, epsilon_high=args.epsilon_high,
                        iterations=args.iterations, std_eps=args.std_eps, scale_rewards=args.scale_rewards,
                        kl_ratio=args.kl_ratio)
