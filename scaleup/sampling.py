"""Sampling answers from the GPT, with a KV cache, and the log-probabilities RL and DPO train on.

A prompt of the synthetic tasks is ``[task] inputs [SEP]`` (``scaleup.tasks``), and an
answer a fixed number of symbols. Reinforcement learning samples many answers per prompt
at every step, so sampling is the cost of an RL step: :func:`sample` feeds the prompt once
and then one new position per answer token, reusing the keys and values of the earlier
positions (the KV cache of ``scaleup.gpt.GPT.forward``) instead of recomputing the whole
sequence for every token. :func:`answer_logprobs` is the differentiable side: one forward
pass over prompt + answer gives the log-probability of every answer token.
"""

from __future__ import annotations

import torch
from torch import nn

from scaleup import tasks as tk
from sparsity.validate import check_positive_int


def prompts(world: tk.World, task: str, split: str, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` prompts of ``task`` (token ids ``[n, p]``) and their ground-truth answers (token ids ``[n, a]``)."""
    inputs, answers = world.sample(task, split, n, gen)
    batch = world.encode(task, inputs, answers)
    p = inputs.shape[1] + 2  # [task] inputs [SEP]
    return batch.idx[:, :p], world.symbol_tokens(answers)


@torch.no_grad()
def sample(model: nn.Module, prompt: torch.Tensor, answer_len: int, gen: torch.Generator | None = None, *,
           temperature: float = 1.0, greedy: bool = False, cache: bool = True) -> torch.Tensor:
    """Answers ``[n, answer_len]`` drawn token by token from ``model`` after ``prompt`` ``[n, p]``.

    ``greedy`` takes the argmax (then ``gen`` and ``temperature`` are unused); ``cache=False``
    recomputes the whole sequence at every token (the reference the cached path is tested
    against). Draws use ``gen`` on the CPU, so a run is reproducible whatever the device.
    """
    check_positive_int(answer_len, "answer_len")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    was_training = model.training
    model.eval()
    kv: list[dict[str, torch.Tensor]] | None = [{} for _ in model.blocks] if cache else None
    seq, new = prompt, prompt
    out = []
    for _ in range(answer_len):
        logits = model(new, kv)[:, -1].float() if cache else model(seq)[:, -1].float()
        if greedy:
            token = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, -1).cpu()
            token = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(prompt.device)
        out.append(token)
        new = token[:, None]
        if not cache:
            seq = torch.cat([seq, new], 1)
    model.train(was_training)
    return torch.stack(out, 1)


def answer_logprobs(model: nn.Module, prompt: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """``log p(answer_t | prompt, answer_<t)`` for every answer token, ``[n, a]``, differentiable."""
    seq = torch.cat([prompt, answer], 1)
    logits = model(seq[:, :-1])[:, prompt.shape[1] - 1:].float()
    return torch.log_softmax(logits, -1).gather(2, answer[:, :, None]).squeeze(2)
