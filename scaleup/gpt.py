"""A small decoder-only transformer (GPT), in one readable file, in the spirit of nanoGPT.

Token + position embeddings, ``n_layer`` pre-norm blocks (LayerNorm -> causal
self-attention -> residual, LayerNorm -> MLP -> residual), a final LayerNorm and an
output head tied to the token embedding (Press & Wolf 2017). Attention uses
``F.scaled_dot_product_attention`` with ``is_causal=True`` (a fused kernel on GPUs).
Linear layers have no bias, as in most recent GPTs: every matrix of a block is then a
plain weight a mask, a criterion or a LoRA adapter can address by name::

    tok_emb.weight, pos_emb.weight
    blocks.{i}.ln1.weight / .bias      blocks.{i}.attn.qkv.weight   (3d, d)
    blocks.{i}.attn.proj.weight (d, d) blocks.{i}.ln2.weight / .bias
    blocks.{i}.mlp.fc.weight   (4d, d) blocks.{i}.mlp.proj.weight   (d, 4d)
    ln_f.weight / .bias

``sparsity.eligibility.parameter_kinds`` sees the embeddings as "embedding", the
LayerNorms as "norm" and the block matrices as "weight": ``include="weight"`` budgets
exactly the transformer's matrices.

Activation checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"):
``model.gradient_checkpointing_enable()``, Hugging Face's name for it, keeps only each block's
input from the forward and recomputes the block's inside during backward
(``torch.utils.checkpoint``, non-reentrant), trading one more forward of the blocks for the
activations they would save; loss and gradients are unchanged. Off by default.

Presets (``PRESETS``): ``micro`` for tests (seconds), ``tiny`` (~0.4M parameters, CPU
benchmark), ``small`` (~4.8M, CPU single runs), ``mid`` (~200M, GPU). On CUDA, train
inside :func:`autocast` (bf16) with float32 master weights.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sparsity.validate import check_positive_int


@dataclass(frozen=True)
class GPTConfig:
    """Shape of the model. ``n_embd`` must be divisible by ``n_head``."""

    vocab_size: int = 32
    block_size: int = 32
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 96
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check_positive_int(getattr(self, name), f"GPTConfig.{name}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise TypeError(f"GPTConfig.dropout must be a number in [0, 1), got {type(self.dropout).__name__} "
                            f"{self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")


PRESETS: dict[str, GPTConfig] = {
    "micro": GPTConfig(n_layer=2, n_head=2, n_embd=32),
    "tiny": GPTConfig(n_layer=4, n_head=4, n_embd=96),
    "small": GPTConfig(n_layer=6, n_head=8, n_embd=256),
    "mid": GPTConfig(n_layer=16, n_head=16, n_embd=1024),
}
"""Model sizes by name. ``vocab_size`` and ``block_size`` are set by the task (see :func:`config`)."""


def config(preset: str, **overrides: object) -> GPTConfig:
    """The preset's config with fields replaced, e.g. ``config("tiny", vocab_size=world.vocab_size)``."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
    return replace(PRESETS[preset], **overrides)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only itself and earlier ones."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cache: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``cache`` (sampling only): keys and values of earlier positions, extended in place. The first
        call sees the whole prompt (causal); each later call one new position, which attends to all."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        causal = True
        if cache is not None:
            if "k" in cache:
                if t != 1:
                    raise ValueError(f"with a filled cache, feed one position at a time, got {t}")
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                causal = False
            cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """Position-wise feed-forward network: d -> 4d -> GELU -> d."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.act = nn.GELU()  # a module, so a forward hook can see it (sparsity.rebuilt_inputs)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only transformer: ``model(idx)`` maps token ids ``[b, t]`` to logits ``[b, t, vocab]``."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"cfg must be a GPTConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.gradient_checkpointing = False
        """Whether training forwards recompute each block in backward (:meth:`gradient_checkpointing_enable`)."""
        self.apply(self._init_weights)
        # GPT-2's scaled init: residual projections shrink with depth so the residual stream stays O(1).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, cache: list[dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
        """Logits of every position. ``cache`` (one dict per block, start with empty ones) keeps the keys
        and values of the positions already seen, so sampling feeds only the new one (a KV cache)."""
        if idx.ndim != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"idx must be a 2-D integer tensor [batch, time], got {idx.dtype} {tuple(idx.shape)}")
        t = idx.shape[1]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            raise ValueError(f"idx holds token ids in [{int(idx.min())}, {int(idx.max())}], outside the vocabulary "
                             f"[0, {self.config.vocab_size})")
        start = cache[0]["k"].shape[2] if cache and "k" in cache[0] else 0
        if start + t > self.config.block_size:
            raise ValueError(f"sequence length {start + t} exceeds block_size {self.config.block_size}")
        pos = torch.arange(start, start + t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        recompute = self.gradient_checkpointing and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:  # the RNG state is kept, so a recomputed dropout drops the same entries
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, None if cache is None else cache[i])
        return F.linear(self.ln_f(x), self.tok_emb.weight)  # tied head

    def gradient_checkpointing_enable(self) -> None:
        """Keep only each block's input for backward and recompute the block there (see the module docstring)."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Save every block's activations for backward again (the default)."""
        self.gradient_checkpointing = False

    def n_params(self) -> int:
        """Number of parameters (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters())


def approx_parameters(preset: str) -> int:
    """A preset's parameter count without building it: ``12 * n_layer * n_embd**2``, the blocks'
    matrices (Kaplan et al. 2020); embeddings, norms and biases add a few percent at these sizes.
    Enough to decide, e.g., how many CPU threads its training gets (``sparsity.threads``)."""
    cfg = config(preset)
    return 12 * cfg.n_layer * cfg.n_embd ** 2


def autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (weights stay float32), nothing on the CPU (float32 throughout)."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build(preset: str, vocab_size: int, block_size: int, seed: int = 0, device: str | torch.device = "cpu") -> GPT:
    """A freshly initialised GPT of a preset, seeded (same seed, same weights on the CPU)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    cfg = config(preset, vocab_size=vocab_size, block_size=block_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT(cfg)
    return model.to(device)
