"""Fine-tuning the GPT by reinforcement learning (GRPO), preference optimisation (DPO) and SFT.

Mukherjee et al. 2025 ("Reinforcement learning fine-tunes small subnetworks", arXiv
2505.11711) observe that RL fine-tuning of LLMs changes only a fraction of the weights.
To measure that here, the three ways of fine-tuning run on the same prompts, through the
lab's one training loop (``sparsity.train.fit``) and any optimizer:

- **GRPO** (Shao et al. 2024, DeepSeekMath): for each prompt, ``group`` answers sampled
  from the current model; reward 1 for an exactly right answer (or the share of right
  tokens); the advantage is the reward minus the group's mean, divided by the group's std;
  the loss is ``-advantage * log p(answer)`` (one update per sample, so PPO's ratio is 1
  and its clipping inactive), plus optionally ``kl`` times the k3 estimate of the KL to the
  reference model (Schulman 2020). That is the lab's first convention, the default; TRL's
  (old log-probs, PPO's clipped ratio, several updates per sampled batch, its normalisations and
  ``beta``) is ``RLConfig.grpo`` (``scaleup.grpo``, which says how the two conventions relate).
- **DPO** (Rafailov et al. 2023): ``-log sigmoid(beta * (margin of the policy - margin of
  the reference))`` on (chosen, rejected) pairs: offline, the ground truth against a
  sampled wrong answer; online, the best against the worst of a sampled group.
- **SFT**: cross-entropy on answers to the same prompts: the ground truth (``sft_data="truth"``),
  the model's own samples (``"own"``, in-distribution data), or another task's answers to the
  same inputs (a task name, e.g. ``"sort"``: out-of-distribution data).

``weights="bfloat16"`` stores the weights in bf16 after every step (:class:`StoreAs`), as
the paper's models are stored: an update smaller than half a unit in the last place of a
weight then rounds away, which is part of the paper's proposed mechanism.

``python -m scaleup.rl`` runs one fine-tune from the command line, from ``theta_0``: the cached pretrained
GPT after the SFT warm-up (:class:`WarmUp`, the one the RL study uses), and prints its reward trace and
update sparsity (``scaleup.rl_measure``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scaleup import gpt, grpo, pretrain, sampling
from scaleup import tasks as tk
from scaleup.rl_measure import measure, snapshot
from sparsity.cli_args import finite_nonnegative, json_ready, nonnegative_int, output_folder, positive_int, random_seed
from sparsity.fastmode import fast_mode
from sparsity.threads import use_threads
from sparsity.train import FitState, Schedule, constant, fit
from sparsity.validate import check_finite_nonnegative, check_nonnegative_int, check_positive_int

ALGORITHMS = ("grpo", "dpo", "dpo_online", "sft")
ALGORITHMIC_TASKS = ("copy", "reverse", "increment", "add2", "sort")
SFT_DATA = ("truth", "own", *ALGORITHMIC_TASKS)
REWARDS = ("exact", "token")
WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FAST_RUN = dict(steps=12, prompts=8, group=4)
"""A run's size in the lab's fast mode (``LAB_FAST=1``): 12 steps of 8 prompts x 4 samples."""
FAST_WARMUP_STEPS = 60
"""The SFT warm-up's longest length in fast mode."""


def rewards(answers: torch.Tensor, truth: torch.Tensor, kind: str = "exact") -> torch.Tensor:
    """Per answer: 1.0 if every token is right (``exact``) or the share of right tokens (``token``)."""
    if kind not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {kind!r}")
    right = (answers == truth).float()
    return right.all(1).float() if kind == "exact" else right.mean(1)


def group_advantages(reward: torch.Tensor, eps: float = 1e-6, scale: str = "group") -> torch.Tensor:
    """GRPO's advantage, ``(r - mean) / (std + eps)`` within each group (rows of ``[prompts, group]``).

    ``scale``: divide by the group's std ("group"), the whole batch's ("batch") or not at all ("none",
    Dr. GRPO); the std is the sample std (Bessel's correction, as torch and TRL compute it).
    A group whose answers all got the same reward has advantage 0 everywhere: nothing to learn."""
    if reward.ndim != 2 or reward.shape[1] < 2:
        raise ValueError(f"rewards must be [prompts, group >= 2], got shape {tuple(reward.shape)}")
    if scale not in grpo.SCALES:
        raise ValueError(f"scale must be one of {grpo.SCALES}, got {scale!r}")
    centred = reward - reward.mean(1, keepdim=True)
    if scale == "none":
        return centred
    return centred / ((reward.std(1, keepdim=True) if scale == "group" else reward.std()) + eps)


def grpo_loss(logprobs: torch.Tensor, advantages: torch.Tensor, ref_logprobs: torch.Tensor | None = None,
              kl: float = 0.0) -> torch.Tensor:
    """``-mean(advantage * sum_t log p)`` over answers, plus ``kl`` times the mean per-token k3 KL estimate.

    ``logprobs`` and ``ref_logprobs`` are ``[n, answer_len]``, ``advantages`` ``[n]``."""
    loss = -(advantages[:, None] * logprobs).sum(1).mean()
    if kl:
        if ref_logprobs is None:
            raise ValueError("kl > 0 needs ref_logprobs")
        log_ratio = ref_logprobs - logprobs
        loss = loss + kl * (log_ratio.exp() - log_ratio - 1).mean()
    return loss


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float = 0.1, keep: torch.Tensor | None = None) -> torch.Tensor:
    """DPO on sequence log-probabilities ``[n]``: ``-log sigmoid(beta * ((c - c_ref) - (r - r_ref)))``, mean
    over the pairs, or over those with ``keep`` 1 (online pairs whose answers all scored alike teach nothing)."""
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    per_pair = -F.logsigmoid(beta * margin)
    if keep is None:
        return per_pair.mean()
    return (per_pair * keep).sum() / keep.sum().clamp(min=1.0)


class StoreAs:
    """A hook that stores the weights in ``dtype`` after every step (rounded, kept in the model's dtype).

    With bf16 (8 bits of mantissa) an entry moves only if its step reaches half a unit in
    the last place of its value: the numerical part of RL's update sparsity."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    @torch.no_grad()
    def after_step(self, state: FitState) -> None:
        for p in state.model.parameters():
            p.copy_(p.to(self.dtype).to(p.dtype))


@dataclass(frozen=True)
class RLConfig:
    """One fine-tuning run: which algorithm on which task, and how."""

    algorithm: str = "grpo"
    task: str = "add2"
    steps: int = 100
    prompts: int = 16
    group: int = 8
    lr: float = 1e-4
    weights: str = "float32"
    reward: str = "exact"
    kl: float = 0.0
    beta: float = 0.1
    temperature: float = 1.0
    sft_data: str = "truth"
    seed: int = 0
    grpo: grpo.GRPOSettings = field(default_factory=grpo.GRPOSettings)
    """GRPO's loss, clipping, iterations per sampled batch and advantage (``scaleup.grpo``); with a clipped
    loss ``kl`` is TRL's ``beta``. ``steps`` counts optimizer steps: ``steps / grpo.iterations`` batches are sampled."""

    def __post_init__(self) -> None:
        for name, value, allowed in [("algorithm", self.algorithm, ALGORITHMS), ("reward", self.reward, REWARDS),
                                     ("weights", self.weights, tuple(WEIGHT_DTYPES)),
                                     ("sft_data", self.sft_data, SFT_DATA),
                                     ("task", self.task, tuple(tk.TARGET_TASKS) + tk.SOURCE_TASKS)]:
            if value not in allowed:
                raise ValueError(f"RLConfig.{name} must be one of {allowed}, got {value!r}")
        for name in ("steps", "prompts", "group"):
            check_positive_int(getattr(self, name), f"RLConfig.{name}")
        check_nonnegative_int(self.seed, "RLConfig.seed")
        if not isinstance(self.grpo, grpo.GRPOSettings):
            raise TypeError(f"RLConfig.grpo must be a scaleup.grpo.GRPOSettings, got {type(self.grpo).__name__}")
        if self.grpo.iterations > 1 and self.algorithm != "grpo":
            raise ValueError(f"RLConfig.grpo.iterations > 1 is GRPO's; {self.algorithm} samples anew every step")
        if self.group < 2 and self.algorithm in ("grpo", "dpo_online"):
            raise ValueError(f"RLConfig.group must be >= 2 for {self.algorithm}, got {self.group}")
        for name in ("lr", "kl", "beta", "temperature"):
            check_finite_nonnegative(getattr(self, name), f"RLConfig.{name}")
        if self.lr == 0 or self.temperature == 0:
            raise ValueError("RLConfig.lr and RLConfig.temperature must be > 0")


def _sequence_logprob(model: nn.Module, prompt: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    return sampling.answer_logprobs(model, prompt, answer).sum(1)


def batch_maker(cfg: RLConfig, world: tk.World, model: nn.Module, reference: nn.Module | None,
                device: str | torch.device = "cpu") -> Callable[[int], dict[str, torch.Tensor]]:
    """``batch(step)``: the prompts of the step (a function of seed and step) and what the algorithm
    needs from them, sampled from the *current* model for the on-policy algorithms. GRPO with
    ``grpo.iterations = K`` samples at steps 0, K, 2K, ... and reuses that batch for the next K - 1
    steps, with the sampling model's log-probs (``old_logprobs``) for the importance ratio."""
    sampled: dict[int, dict[str, torch.Tensor]] = {}

    def batch(step: int) -> dict[str, torch.Tensor]:
        if cfg.algorithm != "grpo" or cfg.grpo.iterations == 1:
            return fresh(step)
        at = step - step % cfg.grpo.iterations
        if at not in sampled:
            sampled.clear()
            sampled[at] = fresh(at)
            with torch.no_grad():
                sampled[at]["old_logprobs"] = sampling.answer_logprobs(model, sampled[at]["prompt"],
                                                                       sampled[at]["answer"])
        return sampled[at]

    def fresh(step: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        prompt, truth = (t.to(device) for t in sampling.prompts(world, cfg.task, "train", cfg.prompts, gen))
        if cfg.algorithm == "sft":
            return dict(prompt=prompt, answer=_sft_answers(cfg, world, model, prompt, truth, gen))
        if cfg.algorithm == "dpo":  # offline pairs: the ground truth against one sampled answer that is wrong
            drawn = sampling.sample(model, prompt, truth.shape[1], gen, temperature=cfg.temperature)
            wrong = (drawn != truth).any(1)
            rejected = torch.where(wrong[:, None], drawn, (truth + 1) % world.vocab_size)
            return _with_reference(dict(prompt=prompt, chosen=truth, rejected=rejected), reference)
        repeated = prompt.repeat_interleave(cfg.group, 0)
        answers = sampling.sample(model, repeated, truth.shape[1], gen, temperature=cfg.temperature)
        reward = rewards(answers, truth.repeat_interleave(cfg.group, 0), cfg.reward).view(cfg.prompts, cfg.group)
        if cfg.algorithm == "grpo":
            advantage = group_advantages(reward, cfg.grpo.std_eps, cfg.grpo.scale_rewards)
            out = dict(prompt=repeated, answer=answers, advantage=advantage.flatten(), reward=reward.flatten())
            if cfg.kl:
                with torch.no_grad():
                    out["ref_logprobs"] = sampling.answer_logprobs(reference, repeated, answers)  # type: ignore[arg-type]
            return out
        answers = answers.view(cfg.prompts, cfg.group, -1)  # dpo_online: best against worst of each group
        rows = torch.arange(cfg.prompts)
        pairs = dict(prompt=prompt, chosen=answers[rows, reward.argmax(1)], rejected=answers[rows, reward.argmin(1)],
                     keep=(reward.max(1).values > reward.min(1).values).float())
        return _with_reference(pairs, reference)

    return batch


def _sft_answers(cfg: RLConfig, world: tk.World, model: nn.Module, prompt: torch.Tensor, truth: torch.Tensor,
                 gen: torch.Generator) -> torch.Tensor:
    """SFT's targets for ``prompt``: the ground truth, the model's own samples, or another task's answers."""
    if cfg.sft_data == "truth":
        return truth
    if cfg.sft_data == "own":
        return sampling.sample(model, prompt, truth.shape[1], gen, temperature=cfg.temperature)
    inputs = prompt[:, 1:-1] - world.symbol_tokens(torch.zeros((), dtype=torch.long))  # [task] inputs [SEP]
    return world.symbol_tokens(world.answer(cfg.sft_data, inputs))[:, : truth.shape[1]].to(truth.device)


@torch.no_grad()
def _with_reference(pairs: dict[str, torch.Tensor], reference: nn.Module | None) -> dict[str, torch.Tensor]:
    assert reference is not None
    pairs["ref_chosen"] = _sequence_logprob(reference, pairs["prompt"], pairs["chosen"])
    pairs["ref_rejected"] = _sequence_logprob(reference, pairs["prompt"], pairs["rejected"])
    return pairs


def loss_of(cfg: RLConfig) -> Callable[[nn.Module, dict[str, torch.Tensor]], Any]:
    """The algorithm's ``loss_of_batch(model, batch)`` for ``fit`` (with the mean reward recorded beside it)."""

    def loss(model: nn.Module, b: dict[str, torch.Tensor]) -> Any:
        if cfg.algorithm == "sft":
            return -sampling.answer_logprobs(model, b["prompt"], b["answer"]).mean()
        if cfg.algorithm == "grpo":
            logp = sampling.answer_logprobs(model, b["prompt"], b["answer"])
            if cfg.grpo.loss == grpo.LAB_SUM:
                value = grpo_loss(logp, b["advantage"], b.get("ref_logprobs"), cfg.kl)
            else:
                value = grpo.clipped_loss(logp, b["advantage"], cfg.grpo, b.get("old_logprobs"), b.get("ref_logprobs"),
                                          cfg.kl)
            return value, {"reward": b["reward"].mean()}
        chosen = _sequence_logprob(model, b["prompt"], b["chosen"])
        rejected = _sequence_logprob(model, b["prompt"], b["rejected"])
        return dpo_loss(chosen, rejected, b["ref_chosen"], b["ref_rejected"], cfg.beta, b.get("keep"))

    return loss


def finetune(model: nn.Module, cfg: RLConfig, world: tk.World, optimizer: torch.optim.Optimizer | None = None, *,
             schedule: Schedule | None = None, hooks: tuple[Any, ...] = (), progress: bool = False,
             device: str | torch.device = "cpu") -> dict[str, list[float]]:
    """Fine-tune ``model`` in place with ``cfg``'s algorithm; return ``fit``'s history (loss, reward for GRPO).

    The optimizer defaults to AdamW (betas 0.9, 0.999, no weight decay, as RL fine-tunes usually
    run); the reference model (DPO, GRPO's KL) is a frozen copy of ``model`` as it starts."""
    reference = copy.deepcopy(model).eval() if cfg.algorithm.startswith("dpo") or cfg.kl else None
    if reference is not None:
        reference.requires_grad_(False)
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    store = (StoreAs(WEIGHT_DTYPES[cfg.weights]),) if cfg.weights != "float32" else ()
    if store:
        store[0].after_step(FitState(step=-1, model=model, optimizer=optimizer))  # theta_0 in bf16 too
    return fit(model, optimizer, loss_of(cfg), cfg.steps, batches=batch_maker(cfg, world, model, reference, device),
               schedule=schedule or constant(cfg.lr), hooks=(*store, *hooks), progress=progress,
               desc=f"{cfg.algorithm} {cfg.task} ({cfg.weights})")


@dataclass(frozen=True)
class WarmUp:
    """The SFT warm-up that makes ``theta_0`` for RL: the pretrained GPT scores 0 on the target, every
    reward would be 0 and GRPO would learn nothing, so SFT on the ground truth runs first (the paper's
    "SFT, then RL" setting) in chunks of ``chunk`` steps until the validation exact match reaches
    ``target`` (partial competence) or ``steps`` have run."""

    steps: int = 300
    lr: float = 3e-4
    target: float = 0.3
    chunk: int = 5

    def __post_init__(self) -> None:
        check_nonnegative_int(self.steps, "WarmUp.steps")
        check_positive_int(self.chunk, "WarmUp.chunk")
        if check_finite_nonnegative(self.lr, "WarmUp.lr") == 0:
            raise ValueError("WarmUp.lr must be > 0")
        if not 0 <= check_finite_nonnegative(self.target, "WarmUp.target") <= 1:
            raise ValueError(f"WarmUp.target must be an exact-match score in [0, 1], got {self.target!r}")


def warm_up(model: nn.Module, world: tk.World, task: str, warm: WarmUp, *, prompts: int, seed: int) -> int:
    """Run :class:`WarmUp`'s SFT on ``model`` in place (float32 weights); return the steps it took."""
    done = 0
    while done < warm.steps and tk.accuracy(model, world, task, "val") < warm.target:
        chunk = min(warm.chunk, warm.steps - done)
        sft = RLConfig(algorithm="sft", task=task, steps=chunk, prompts=prompts, lr=warm.lr, seed=seed + 1_000 + done)
        finetune(model.train(), sft, world)
        done += chunk
    return done


def warm_start(pretrained: pretrain.PretrainConfig, world: tk.World, task: str, warm: WarmUp, *, prompts: int,
               seed: int, cache_dir: str | Path | None = None, progress: bool = False) -> tuple[nn.Module, int]:
    """``theta_0`` and the warm-up steps it took: the cached pretrained model (trained once if absent)
    after :func:`warm_up`, in eval mode."""
    model = pretrain.pretrained(pretrained, cache_dir=cache_dir, progress=progress)
    done = warm_up(model, world, task, warm, prompts=prompts, seed=seed)
    return model.eval(), done


def add_model_arguments(parser: argparse.ArgumentParser, preset: str | None = "tiny") -> None:
    """The options the RL command lines share: the model size (``--preset``, default ``preset``; None: no
    such flag), the pretrained-model cache, the progress bars."""
    if preset is not None:
        parser.add_argument("--preset", choices=tuple(gpt.PRESETS), default=preset,
                            help="the GPT's size (default %(default)s)")
    parser.add_argument("--cache-dir", type=output_folder, default=None,
                        help="the pretrained-model cache (default: $SUBNET_LAB_CACHE, else .cache/subnet-lab/)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run_once(cfg: RLConfig, preset: str, warm: WarmUp, *, fast: bool = False, cache_dir: str | Path | None = None,
             progress: bool = False) -> dict[str, Any]:
    """One fine-tune of ``theta_0`` (the pretrained ``preset`` GPT after ``warm``), measured as plain data:
    theta_0's score, the per-step history (reward for GRPO, loss), the target and the update sparsity."""
    pretrained = pretrain.default_config(preset, fast=fast)
    world = tk.World(pretrained.world)
    start, took = warm_start(pretrained, world, cfg.task, warm, prompts=cfg.prompts, seed=cfg.seed,
                             cache_dir=cache_dir, progress=progress)
    theta0 = snapshot(start)
    model = copy.deepcopy(start).train()
    history = finetune(model, cfg, world, progress=progress)
    return dict(config=dict(preset=preset, pretrain_steps=pretrained.steps, **asdict(cfg)), warmup_steps_taken=took,
                start_target=tk.accuracy(start, world, cfg.task, "test"), history=history,
                **measure(model.eval(), theta0, world, cfg.task))



def print_json(data: dict[str, Any]) -> int:
    """Print a command line's numbers as JSON (non-finite values as null); its exit status, 0."""
    json.dump(json_ready(data), sys.stdout, indent=1, allow_nan=False)
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    fast = fast_mode()
    run = RLConfig(**FAST_RUN) if fast else RLConfig()
    p = argparse.ArgumentParser(prog="python -m scaleup.rl",
                                description="One fine-tuning run of the lab's GPT (GRPO, SFT or DPO) from theta_0, the "
                                            "cached pretrained model after the RL study's SFT warm-up: its reward "
                                            "trace, target score and update sparsity (Mukherjee et al. 2025).")
    p.add_argument("--algorithm", choices=ALGORITHMS, default=run.algorithm,
                   help="grpo (RL), sft on the ground truth, dpo (offline pairs) or dpo_online (default %(default)s)")
    p.add_argument("--task", choices=tuple(tk.TARGET_TASKS), default=run.task,
                   help="the target task (default %(default)s)")
    p.add_argument("--weights", choices=tuple(WEIGHT_DTYPES), default=run.weights,
                   help="weight storage: bfloat16 rounds the weights after every step (default %(default)s)")
    p.add_argument("--lr", type=finite_nonnegative, default=run.lr, help="AdamW's learning rate (default %(default)g)")
    p.add_argument("--steps", type=positive_int, default=run.steps,
                   help="optimizer steps (default %(default)s; 12 with LAB_FAST=1)")
    p.add_argument("--prompts", type=positive_int, default=run.prompts,
                   help="prompts per step (default %(default)s; 8 with LAB_FAST=1)")
    p.add_argument("--group", type=positive_int, default=run.group,
                   help="sampled answers per prompt, GRPO and dpo_online (default %(default)s; 4 with LAB_FAST=1)")
    p.add_argument("--seed", type=random_seed, default=run.seed, help="the run's seed (default %(default)s)")
    p.add_argument("--warmup-steps", type=nonnegative_int, default=FAST_WARMUP_STEPS if fast else WarmUp.steps,
                   help=f"the SFT warm-up's most steps; it stops at validation exact match {WarmUp.target} "
                        "(default %(default)s; 60 with LAB_FAST=1)")
    p.add_argument("--json", action="store_true", help="print every number as JSON")
    add_model_arguments(p)
    grpo.add_arguments(p)
    args = p.parse_args(argv)
    use_threads()
    try:
        cfg = RLConfig(algorithm=args.algorithm, task=args.task, steps=args.steps, prompts=args.prompts,
                       group=args.group, lr=args.lr, weights=args.weights, seed=args.seed, kl=args.kl,
                       grpo=grpo.from_arguments(args))
    except (ValueError, TypeError) as e:
        p.error(str(e))
    try:
        out = run_once(cfg, args.preset, WarmUp(steps=args.warmup_steps), fast=fast, cache_dir=args.cache_dir,
                       progress=not args.no_progress)
    except FloatingPointError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        return print_json(out)
    print(f"theta_0: {args.preset} GPT ({out['config']['pretrain_steps']} pretraining steps) after "
          f"{out['warmup_steps_taken']} SFT warm-up steps: {cfg.task} exact match {out['start_target']:.3f} (test)")
    print(f"{cfg.algorithm}, {cfg.weights} weights, lr {cfg.lr:g}, {cfg.steps} steps of {cfg.prompts} prompts")
    trace = out["history"].get("reward", out["history"]["loss"])
    every = max(1, len(trace) // 20)
    print(f"{'mean reward' if 'reward' in out['history'] else 'loss'} every {every} step(s): "
          + " ".join(f"{v:.3f}" for v in trace[::every]))
    print(f"target {out['start_target']:.3f} -> {out['target']:.3f}; unchanged entries (|delta| <= 1e-5): "
          f"{out['update_sparsity']:.1%} compared in bf16, {out['update_sparsity_fp32_compare']:.1%} in float32")
    print("unchanged per layer type: " + ", ".join(f"{t} {v:.1%}" for t, v in out["per_layer_type"].items()))
    print(f"mean relative rank of the block matrices' updates: {out['relative_rank']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
