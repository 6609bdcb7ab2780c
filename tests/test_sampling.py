"""Sampling from the GPT (scaleup.sampling): the KV cache gives the full-sequence forward's answers."""

import pytest
import torch

from scaleup import gpt, sampling
from scaleup import tasks as tk

WORLD = tk.World(tk.WorldConfig(n_symbols=7, length=4, n_facts=6, n_eval=16))


def _model(seed: int = 0) -> gpt.GPT:
    return gpt.build("micro", WORLD.vocab_size, WORLD.block_size, seed=seed)


def test_cached_logits_equal_full_sequence_logits() -> None:
    model = _model().eval()
    prompt, answer = sampling.prompts(WORLD, "add2", "train", 5, torch.Generator().manual_seed(0))
    seq = torch.cat([prompt, answer], 1)[:, :-1]
    full = model(seq)
    kv = [{} for _ in model.blocks]
    stepwise = [model(seq[:, : prompt.shape[1]], kv)]
    for t in range(prompt.shape[1], seq.shape[1]):
        stepwise.append(model(seq[:, t : t + 1], kv))
    torch.testing.assert_close(torch.cat(stepwise, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("greedy", [True, False])
def test_the_cached_sampler_draws_what_the_uncached_one_draws(greedy: bool) -> None:
    model = _model(1)
    prompt, answer = sampling.prompts(WORLD, "sort", "train", 64, torch.Generator().manual_seed(1))
    draws = [sampling.sample(model, prompt, answer.shape[1], torch.Generator().manual_seed(2), greedy=greedy,
                             cache=cache) for cache in (True, False)]
    assert torch.equal(draws[0], draws[1])
    assert draws[0].shape == answer.shape and model.training  # the model's mode is given back


def test_answer_logprobs_are_the_log_softmax_at_the_answer_positions() -> None:
    model = _model().eval()
    prompt, answer = sampling.prompts(WORLD, "copy", "train", 3, torch.Generator().manual_seed(3))
    logp = sampling.answer_logprobs(model, prompt, answer)
    seq = torch.cat([prompt, answer], 1)
    by_hand = torch.stack([torch.log_softmax(model(seq[:, : prompt.shape[1] + t]), -1)[torch.arange(3), -1, answer[:, t]]
                           for t in range(answer.shape[1])], 1)
    torch.testing.assert_close(logp, by_hand, rtol=1e-5, atol=1e-6)
    assert logp.requires_grad


def test_bad_sampling_input_is_refused() -> None:
    model = _model()
    prompt, _ = sampling.prompts(WORLD, "copy", "train", 2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="answer_len must be a positive int"):
        sampling.sample(model, prompt, 0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sampling.sample(model, prompt, 2, temperature=0.0)
    kv = [{} for _ in model.blocks]
    model(prompt, kv)
    with pytest.raises(ValueError, match="feed one position at a time"):
        model(prompt[:, :2], kv)
