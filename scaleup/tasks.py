"""Synthetic token tasks: a pretraining ("source") mixture and fine-tuning ("target") tasks.

Every task maps a prompt to an answer of fixed length, with exact-match accuracy (an
example counts only if *every* answer token is right). Data are generated on the fly,
deterministically, offline. One sequence is::

    [task token] [input symbols ...] [SEP] [answer symbols ...] [PAD ...]

and the model is trained to predict the answer tokens only (next-token cross-entropy on
the answer positions). Because the answer length is fixed, "every answer token is the
argmax of the teacher-forced logits" is the same as "greedy decoding writes the answer",
so accuracy needs one forward pass.

The source mixture (``SOURCE_TASKS``), what the model is pretrained on:

``copy``       the input as is
``reverse``    the input backwards
``increment``  every symbol + 1 (mod the alphabet)
``facts_a``    a key (``key_length`` symbols) -> its value, from a fixed random table

The targets (``TARGET_TASKS``), what it is fine-tuned on:

``add2``     every symbol + 2: *near* the source (a variant of ``increment``)
``sort``     the input sorted: *far*, a new skill
``facts_b``  new facts (keys not in ``facts_a``): *far*, new knowledge

Splits: an algorithmic input belongs to train, validation or test by a fixed hash of its
symbols (80/10/10), so no test input is ever trained on. A fact task *is* its table: all
three splits are the same facts (memorising them is the task), stated wherever it matters.
Retention (forgetting) is the mean test accuracy over the source tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from sparsity.validate import check_positive_int

SOURCE_TASKS = ("copy", "reverse", "increment", "facts_a")
TARGET_TASKS = {"add2": "near: a variant of increment", "sort": "far: a new skill", "facts_b": "far: new facts"}
TASKS = SOURCE_TASKS + tuple(TARGET_TASKS)
FACT_TASKS = ("facts_a", "facts_b")
SPLITS = ("train", "val", "test")
PAD, SEP = 0, 1
IGNORE = -100
"""Target value of the positions that carry no loss (cross_entropy's ignore_index)."""


@dataclass(frozen=True)
class WorldConfig:
    """The task world: alphabet size, input length, fact tables, evaluation-set size."""

    n_symbols: int = 16
    length: int = 8
    key_length: int = 2
    value_length: int = 2
    n_facts: int = 96
    n_eval: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_symbols", "length", "key_length", "value_length", "n_facts", "n_eval"):
            check_positive_int(getattr(self, name), f"WorldConfig.{name}")
        if self.n_symbols < 3:
            raise ValueError(f"WorldConfig.n_symbols must be >= 3 (add2 must differ from copy), got {self.n_symbols}")
        if 2 * self.n_facts > self.n_symbols**self.key_length:
            raise ValueError(
                f"2 * n_facts = {2 * self.n_facts} facts need distinct keys, but only "
                f"n_symbols ** key_length = {self.n_symbols ** self.key_length} keys exist"
            )

    @property
    def key(self) -> str:
        """A short string naming this world, for checkpoint file names."""
        return (f"s{self.n_symbols}-l{self.length}-k{self.key_length}-v{self.value_length}"
                f"-f{self.n_facts}-w{self.seed}")


@dataclass(frozen=True)
class Batch:
    """Model input ``idx`` [n, T] and next-token ``targets`` [n, T] (IGNORE off the answer)."""

    idx: torch.Tensor
    targets: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.idx.to(device), self.targets.to(device))


def _check_task(task: object) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return task  # type: ignore[return-value]


def _check_split(split: object) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split  # type: ignore[return-value]


def _check_tasks(tasks: object) -> list[str]:
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(tasks)  # type: ignore[call-overload]
    if not tasks:
        raise ValueError("tasks is empty: name at least one task")
    return [_check_task(t) for t in tasks]


class World:
    """The vocabulary, the fact tables and the samplers of every task, fixed by a :class:`WorldConfig`."""

    def __init__(self, cfg: WorldConfig | None = None) -> None:
        cfg = WorldConfig() if cfg is None else cfg
        if not isinstance(cfg, WorldConfig):
            raise TypeError(f"cfg must be a WorldConfig, got {type(cfg).__name__}")
        self.config = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        keys = torch.randperm(cfg.n_symbols**cfg.key_length, generator=gen)[: 2 * cfg.n_facts]
        digits = cfg.n_symbols ** torch.arange(cfg.key_length - 1, -1, -1)
        keys = keys[:, None] // digits % cfg.n_symbols
        values = torch.randint(cfg.n_symbols, (2 * cfg.n_facts, cfg.value_length), generator=gen)
        self.facts = {
            "facts_a": (keys[: cfg.n_facts], values[: cfg.n_facts]),
            "facts_b": (keys[cfg.n_facts :], values[cfg.n_facts :]),
        }
        self._hash = torch.randint(1, 1_000_003, (cfg.length,), generator=gen)

    # ---- vocabulary: PAD, SEP, one token per task, then the symbols ----
    @property
    def vocab_size(self) -> int:
        return 2 + len(TASKS) + self.config.n_symbols

    @property
    def seq_len(self) -> int:
        """Tokens of the longest example; the model sees ``seq_len - 1`` of them (its block size)."""
        c = self.config
        return max(c.length + c.length, c.key_length + c.value_length) + 2

    @property
    def block_size(self) -> int:
        return self.seq_len - 1

    def task_token(self, task: str) -> int:
        return 2 + TASKS.index(_check_task(task))

    def symbol_tokens(self, symbols: torch.Tensor) -> torch.Tensor:
        return symbols + 2 + len(TASKS)

    # ---- examples ----
    def split_of(self, inputs: torch.Tensor) -> torch.Tensor:
        """0 (train), 1 (val) or 2 (test) for each input row, by a fixed hash: 80/10/10."""
        bucket = (inputs.long() * self._hash).sum(1) % 1_000_003 % 10
        return torch.where(bucket < 8, 0, torch.where(bucket == 8, 1, 2))

    def answer(self, task: str, inputs: torch.Tensor) -> torch.Tensor:
        """The answer symbols of an algorithmic task for input symbols ``[n, length]``."""
        s = self.config.n_symbols
        rules = {
            "copy": lambda x: x,
            "reverse": lambda x: x.flip(1),
            "increment": lambda x: (x + 1) % s,
            "add2": lambda x: (x + 2) % s,
            "sort": lambda x: x.sort(1).values,
        }
        if task not in rules:
            raise ValueError(f"answer() covers the algorithmic tasks {tuple(rules)}, got {task!r}")
        return rules[task](inputs)

    def sample(self, task: str, split: str, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` examples of ``task`` from ``split``: input symbols and answer symbols."""
        task, split = _check_task(task), _check_split(split)
        check_positive_int(n, "n")
        if task in FACT_TASKS:
            keys, values = self.facts[task]
            pick = torch.randint(len(keys), (n,), generator=gen)
            return keys[pick], values[pick]
        want, found, total = SPLITS.index(split), [], 0
        while total < n:
            x = torch.randint(self.config.n_symbols, (4 * n + 16, self.config.length), generator=gen)
            x = x[self.split_of(x) == want]
            found.append(x)
            total += len(x)
        inputs = torch.cat(found)[:n]
        return inputs, self.answer(task, inputs)

    def encode(self, task: str, inputs: torch.Tensor, answers: torch.Tensor) -> Batch:
        """Lay examples out as ``[task] inputs [SEP] answers [PAD...]`` and shift them into a Batch."""
        n = len(inputs)
        seq = torch.full((n, self.seq_len), PAD, dtype=torch.long)
        p = inputs.shape[1]
        seq[:, 0] = self.task_token(task)
        seq[:, 1 : p + 1] = self.symbol_tokens(inputs)
        seq[:, p + 1] = SEP
        seq[:, p + 2 : p + 2 + answers.shape[1]] = self.symbol_tokens(answers)
        targets = torch.full((n, self.seq_len), IGNORE, dtype=torch.long)
        targets[:, p + 2 : p + 2 + answers.shape[1]] = seq[:, p + 2 : p + 2 + answers.shape[1]]
        return Batch(seq[:, :-1], targets[:, 1:])

    def batch(self, tasks: str | Sequence[str], split: str, n: int, gen: torch.Generator) -> Batch:
        """``n`` examples, each from a task drawn uniformly from ``tasks`` (a mixture), in a fixed order."""
        tasks = _check_tasks(tasks)
        check_positive_int(n, "n")
        which = torch.randint(len(tasks), (n,), generator=gen)
        idx = torch.empty((n, self.block_size), dtype=torch.long)
        targets = torch.empty_like(idx)
        for i, task in enumerate(tasks):
            rows = (which == i).nonzero().squeeze(1)
            if len(rows):
                part = self.encode(task, *self.sample(task, split, len(rows), gen))
                idx[rows], targets[rows] = part.idx, part.targets
        return Batch(idx, targets)

    def train_batch(self, tasks: str | Sequence[str], step: int, batch_size: int, seed: int = 0) -> Batch:
        """The training batch of step ``step``: a function of (seed, step) only, so every method,
        and a resumed run, sees the same data in the same order."""
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return self.batch(tasks, "train", batch_size, gen)

    def eval_set(self, task: str, split: str) -> Batch:
        """The fixed evaluation examples of a task and split (``n_eval`` of them; all facts for a fact task)."""
        return self._eval_sets[(_check_task(task), _check_split(split))]

    @cached_property
    def _eval_sets(self) -> dict[tuple[str, str], Batch]:
        out = {}
        for t, task in enumerate(TASKS):
            for s, split in enumerate(SPLITS):
                if task in FACT_TASKS:
                    out[(task, split)] = self.encode(task, *self.facts[task])
                    continue
                gen = torch.Generator().manual_seed(10_000 * (self.config.seed + 1) + 10 * t + s)
                out[(task, split)] = self.encode(task, *self.sample(task, split, self.config.n_eval, gen))
        return out


def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer positions."""
    logits = model(batch.idx)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE)


@dataclass(frozen=True)
class Scores:
    """Three views of how well a model answers a batch: all-or-nothing, per token, and graded.

    ``exact``: share of examples with every answer token right (greedy decoding is right);
    ``token``: share of answer tokens right; ``nll``: mean negative log-likelihood of the right
    answer tokens (nats). Exact match makes forgetting all-or-nothing; the other two move
    before it does (the frontier benchmark needs a forgetting measure that moves)."""

    exact: float
    token: float
    nll: float


@torch.no_grad()
def scores(model: nn.Module, batch: Batch, chunk: int = 1024) -> Scores:
    """:class:`Scores` of ``model`` on ``batch`` (in eval mode, given back as it was)."""
    if len(batch.idx) == 0:
        raise ValueError("scores need a batch of at least one example, got an empty one")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    right = tokens_right = tokens = 0
    nll = 0.0
    for start in range(0, len(batch.idx), chunk):
        idx = batch.idx[start : start + chunk].to(device)
        targets = batch.targets[start : start + chunk].to(device)
        logits = model(idx).float()
        pred = logits.argmax(-1)
        scored = targets != IGNORE
        right += int(((pred == targets) | ~scored).all(1).sum())
        tokens_right += int(((pred == targets) & scored).sum())
        tokens += int(scored.sum())
        nll += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"))
    model.train(was_training)
    return Scores(exact=right / len(batch.idx), token=tokens_right / tokens, nll=nll / tokens)


def exact_match(model: nn.Module, batch: Batch, chunk: int = 1024) -> float:
    """Share of examples whose every answer token is the model's argmax (= greedy decoding is right)."""
    if len(batch.idx) == 0:
        raise ValueError("exact_match needs a batch of at least one example, got an empty one")
    return scores(model, batch, chunk).exact


def accuracy(model: nn.Module, world: World, task: str, split: str = "test") -> float:
    """Exact-match accuracy of ``model`` on a task's fixed evaluation set."""
    return exact_match(model, world.eval_set(task, split))


def retention(model: nn.Module, world: World, split: str = "test") -> float:
    """Mean exact-match accuracy over the source tasks: how much of pretraining survives fine-tuning."""
    return sum(accuracy(model, world, t, split) for t in SOURCE_TASKS) / len(SOURCE_TASKS)


def task_scores(model: nn.Module, world: World, task: str, split: str = "test") -> Scores:
    """:class:`Scores` of ``model`` on a task's fixed evaluation set."""
    return scores(model, world.eval_set(task, split))
