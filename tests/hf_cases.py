"""Shared pieces of the Hugging Face tests: tiny models saved and loaded back, token batches."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sparsity import SparseConfig, fit, sparsify
from sparsity.hf import lm_loss, load_causal_lm, tiny_causal_lm
from sparsity.wrap import SparseModel

VOCAB = 64


def saved(family: str, folder: Path, seed: int = 0) -> Path:
    """A tiny ``family`` model written with save_pretrained to ``folder`` (the real loading path then runs)."""
    tiny_causal_lm(family, seed=seed, vocab_size=VOCAB).save_pretrained(folder)
    return folder


def token_batches(n: int = 8, batch: int = 4, length: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of random token ids (labels = inputs)."""
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, VOCAB, (n, batch, length), generator=g)]


def finetuned(folder: Path, config: SparseConfig, steps: int = 5) -> tuple[nn.Module, SparseModel]:
    """Load ``folder``, make it sparse-trainable with ``config`` and train ``steps`` steps with fit."""
    model = load_causal_lm(folder)
    data = token_batches()
    run = sparsify(model, config, loss_fn=lm_loss, batches=data[:2])
    model.train()
    fit(model, run.optimizer, lm_loss, steps, batches=lambda t: data[t % len(data)])
    return model, run
