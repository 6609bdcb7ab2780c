"""What does fine-tuning a GPT cost? Full AdamW vs compact sparse (1-20%) vs LoRA at a matched count.

Sparse fine-tuning promises LoRA-like memory at full fine-tuning's speed. This script
measures one training step (forward, backward, optimizer step) of a ``scaleup.gpt`` preset
for these ways of fine-tuning it, side by side in one run:

- ``full``: every parameter trains, ``torch.optim.AdamW(fused=True)``, the fastest dense
  AdamW (the baseline of every ratio);
- ``sparse 1%`` / ``5%`` / ``20%``: that share of every block matrix (random entries, per
  tensor), made trainable by ``sparsity.sparsify`` with compact storage and the fast step
  (``CompactAdamW(fused=True)``: state only for the selected entries); embeddings and
  LayerNorms frozen (no gradient at all);
- ``sparse 5% values-grad``: the same, with backward computing only the selected entries'
  weight gradient (``SparseConfig(values_grad=True)``, ``sparsity.values_grad``): no dense
  weight gradient at all (float32 only: on CUDA's bf16 autocast this row is skipped), and, as
  ``sparsify`` does by default, no copy of a layer input that is a GELU's or a LayerNorm's output
  (``sparsity.rebuilt_inputs``: backward rebuilds those from what the GELU and LayerNorm keep anyway);
- ``sparse 5% values-grad, inputs kept``: the same with ``SparseConfig(rebuild_inputs=False)``, to show
  what rebuilding the inputs saves;
- ``LoRA r=R``: ``scaleup.lora`` adapters on every block matrix, ``AdamW(fused=True)``
  on the adapters; ``R`` is the rank whose trainable count is closest to 5%;
- ``sparse LoRA-equal``: random entries at that rank's LoRA-equal budget
  (``SparseConfig(lora_rank=R)``), so exactly LoRA's count, with ``CompactAdamW(fused=True)``;
- ``full``, ``sparse 5% values-grad`` and ``LoRA`` ``+ checkpointing``: the same with activation
  checkpointing (Chen et al. 2016; ``GPT.gradient_checkpointing_enable``): each block keeps only its
  input for backward and recomputes the rest there. At 32 x 64 tokens the saved activations are most
  of every method's peak, so a method's savings on gradients and optimizer state show against full
  fine-tuning only at the same activation policy: ``values-grad + checkpointing`` against ``full +
  checkpointing`` is the fair ratio there.

The same methods but the plain sparse ones run again at a smaller batch (``--small-batch``, 8
sequences by default), where the weight side (parameters, gradients, optimizer state) dominates.

For each it reports the median step time (interleaved rounds, ``optimizer_step.time_rounds``), with
the step-time ratio's lowest and highest within a single round (the step-time targets and the JSON's
``time_vs_full_rounds``: on a shared machine the ratio moves from run to run, and this shows by how
much; the header adds ``benchmarks.steadiness``' spread of a fixed piece of work before and after the
timing), tokens per second, and the memory of one training step by category, in live tensor bytes
(``sparsity.memory.step_memory``, measured on the second step of a fresh set-up so the
optimizer state exists): parameters, gradients kept for the step, optimizer state, saved
activations and the step's peak (the largest total of live tensors; on CUDA
``torch.cuda.max_memory_allocated``). The process's resident-set peak over the first three
steps (``scaleup.memory.PeakMemory``) stays as an extra column: it counts what the C allocator
keeps after a free, so it cannot rank methods. Every sparse row but ``values-grad`` keeps
autograd's dense weight gradient (``values_grad=False``), to show what the values-only gradient
saves. The batch is random tokens (cost does not depend on them), ``--batch`` x ``--tokens``. The
weights are a freshly initialised model. Targets, checked per batch size: values-grad step <= 0.80x
full, values-grad peak <= 0.6x full (and with checkpointing against full with checkpointing),
LoRA's and values-grad's peaks below full's.

Presets: ``small`` on the CPU, ``mid`` on CUDA (bf16 autocast); ``LAB_FAST=1``: ``micro``
and a few steps (seconds). Run from the repository root::

    PYTHONPATH=. python -m benchmarks.scaleup_memory [--preset P] [--device cpu|cuda] [--threads T] [--out PATH]

``--memory-only`` measures the bytes alone (two steps per method, no timing, no resident set): bytes
do not depend on the load, so this is the run to make on a machine too busy to time anything.

``--out PATH`` writes the markdown report and, beside it, ``PATH`` with ``.json``: one object per
method and batch size with ``method``, ``peak_bytes``, ``params``, ``grads``, ``optimizer_state``,
``activations``, ``step_ms``, the setting (``setting`` "B x T", ``batch``, ``tokens``,
``checkpointing``) and the run's facts (preset, device, threads, load).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from benchmarks import steadiness
from benchmarks.optimizer_step import STEPS_PER_ROUND, medians, round_ratios, time_rounds
from scaleup import gpt, lora
from scaleup import tasks as tk
from scaleup.memory import PeakMemory, frozen_heap
from sparsity import SparseConfig, sparsify
from sparsity.cli_args import output_file, positive_int
from sparsity.eligibility import eligible
from sparsity.fastmode import fast_mode
from sparsity.memory import StepMemory, step_memory
from sparsity.sweep import command_line, emit, load_line, machine_lines, markdown_table
from sparsity.train import fit

DENSITY = 0.05
FULL, SPARSE, LORA, SPARSE_LORA = "full", "sparse 5%", "LoRA", "sparse LoRA-equal"
SPARSE_1, SPARSE_20, SPARSE_VALUES = "sparse 1%", "sparse 20%", "sparse 5% values-grad"
SPARSE_KEPT = SPARSE_VALUES + ", inputs kept"
VALUES_ROWS = (SPARSE_VALUES, SPARSE_KEPT)
"""The values-only gradient rows: the targets are checked on each."""
CKPT = " + checkpointing"
FULL_CKPT, VALUES_CKPT, LORA_CKPT = FULL + CKPT, SPARSE_VALUES + CKPT, LORA + CKPT
METHODS = (FULL, SPARSE_1, SPARSE, SPARSE_20, SPARSE_VALUES, SPARSE_KEPT, LORA, SPARSE_LORA, FULL_CKPT, VALUES_CKPT,
           LORA_CKPT)
SMALL_BATCH_METHODS = (FULL, SPARSE_VALUES, SPARSE_KEPT, LORA, FULL_CKPT, VALUES_CKPT, LORA_CKPT)
"""The methods measured again at ``--small-batch``: the plain sparse rows add nothing there."""
DENSITIES = {SPARSE_1: 0.01, SPARSE: DENSITY, SPARSE_20: 0.20, SPARSE_VALUES: DENSITY, SPARSE_KEPT: DENSITY}
LR = 1e-3
PEAK_STEPS = 3
"""Training steps inside the resident-set window (the first allocates the optimizer state)."""
TIME_TARGET = "{} step time <= 0.80x full"
VALUES_TARGET = "{} peak <= 0.6x full"
VALUES_CKPT_TARGET = "sparse 5% values-grad + checkpointing peak <= 0.6x full + checkpointing"
BELOW_FULL_TARGET = "LoRA's and sparse 5% values-grad's peaks below full's"
SPARSE_TIME_TARGET = "sparse 5% step time <= 1.0x full"
MB = 2**20


@dataclass(frozen=True)
class Row:
    method: str
    batch: int
    tokens: int
    trainable: int
    step_ms: float | None
    time_ratio: float | None
    tokens_per_s: float | None
    memory: StepMemory
    rss_peak_mb: float | None
    ratio_spread: tuple[float, float] | None = None
    """The timed columns are None in a ``--memory-only`` run. ``ratio_spread``: the lowest and highest
    step-time ratio to full's within one interleaved round (``optimizer_step.round_ratios``)."""


def matched_rank(model: nn.Module, density: float = DENSITY) -> int:
    """The LoRA rank whose trainable count, r * (m + n) summed over the block matrices, is closest to ``density``."""
    shapes = [p.shape for n, p in model.named_parameters() if n in eligible(model, "weight")]
    total = sum(m * k for m, k in shapes)
    per_rank = sum(m + k for m, k in shapes)
    return max(1, round(density * total / per_rank))


def prepare(method: str, base: gpt.GPT, rank: int) -> tuple[nn.Module, torch.optim.Optimizer, int]:
    """A copy of ``base`` set up for one method: (model, optimizer, trainable count)."""
    plain = method.removesuffix(CKPT)
    model, opt, trainable = _prepare_plain(plain, base, rank)
    if plain != method:
        model.gradient_checkpointing_enable()
    return model, opt, trainable


def _prepare_plain(method: str, base: gpt.GPT, rank: int) -> tuple[gpt.GPT, torch.optim.Optimizer, int]:
    """:func:`prepare` for a method without checkpointing."""
    model = copy.deepcopy(base).train()
    if method == FULL:
        return model, torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, fused=True), model.n_params()
    if method == LORA:
        lora.add_lora(model, lora.LoraConfig(r=rank), seed=0)
        trainable = [p for p in model.parameters() if p.requires_grad]
        return model, torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0, fused=True), lora.trainable_count(model)
    common = dict(criterion="random", scope="per_tensor", lr=LR, weight_decay=0.0, seed=0, fused=True,
                  values_grad=method in VALUES_ROWS, rebuild_inputs=False if method == SPARSE_KEPT else None)
    if method in DENSITIES:
        config = SparseConfig(density=DENSITIES[method], **common)  # type: ignore[arg-type]
    elif method == SPARSE_LORA:
        config = SparseConfig(lora_rank=rank, **common)  # type: ignore[arg-type]
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    run = sparsify(model, config)  # random entries, compact AdamW state; frozen tensors get no gradient at all
    return model, run.optimizer, run.trainable_parameters()[0]


class TrainingStep:
    """One method's training step as a ``step()`` callable, the interface ``time_rounds`` times:
    ``steps`` steps of the lab's one training loop (``sparsity.train.fit``) on the same batch."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, batch: tk.Batch, device: str) -> None:
        self.model, self.opt, self.batch, self.device = model, opt, batch, device

    def loss(self, model: nn.Module, batch: tk.Batch) -> torch.Tensor:
        with gpt.autocast(self.device):
            return tk.loss(model, batch)

    def step(self, steps: int = 1) -> None:
        fit(self.model, self.opt, self.loss, steps, batches=lambda _: self.batch)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def memory_of(method: str, base: gpt.GPT, rank: int, batch: tk.Batch, device: str) -> StepMemory:
    """The second training step of a fresh set-up, by category (``sparsity.memory.step_memory``)."""
    model, opt, _ = prepare(method, base, rank)
    runner = TrainingStep(model, opt, batch, device)
    runner.step()  # the first step allocates the optimizer state
    gc.collect()
    return step_memory(model, opt, lambda: runner.loss(model, batch), [batch.idx, batch.targets])


def rss_peak_mb(method: str, base: gpt.GPT, rank: int, batch: tk.Batch, device: str) -> float:
    """MB by which the first PEAK_STEPS training steps of a fresh set-up raise the resident-set peak."""
    model, opt, _ = prepare(method, base, rank)
    runner = TrainingStep(model, opt, batch, device)
    gc.collect()
    with PeakMemory(device) as peak:
        runner.step(PEAK_STEPS)
    del runner, model, opt
    gc.collect()
    return peak.mb


def methods_for(device: str, methods: tuple[str, ...] = METHODS) -> tuple[str, ...]:
    """The ``methods`` measured on ``device``: values-only gradients are float32 CPU layers, so not under
    CUDA's bf16 autocast (``values_grad=True`` would compute them with the gather fallback)."""
    cuda = device.startswith("cuda")
    return tuple(m for m in methods if not (cuda and m.removesuffix(CKPT) in VALUES_ROWS))


def random_batch(vocab_size: int, batch_size: int, tokens: int, device: str) -> tk.Batch:
    """``batch_size`` sequences of ``tokens`` random tokens, every position a target: cost does not depend on them."""
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(vocab_size, (batch_size, tokens + 1), generator=gen)
    return tk.Batch(idx[:, :-1].contiguous(), idx[:, 1:].contiguous()).to(device)


def measure(preset: str, device: str, batch_size: int, tokens: int, steps: int, warmup: int,
            methods: tuple[str, ...], timed: bool = True) -> tuple[list[Row], dict[str, object]]:
    """Each of ``methods``' rows at one batch size, and the facts of the set-up (parameters, rank, tokens);
    ``timed=False``: bytes only (the step time and resident-set columns None)."""
    world = tk.World()
    base = gpt.build(preset, world.vocab_size, tokens, seed=0, device=device)
    batch = random_batch(world.vocab_size, batch_size, tokens, device)
    rank = matched_rank(base)
    setups = {m: prepare(m, base, rank) for m in methods}
    steppers = {m: TrainingStep(model, opt, batch, device) for m, (model, opt, _) in setups.items()}
    step_ms: dict[str, float | None] = dict.fromkeys(methods)
    spreads: dict[str, tuple[float, float] | None] = dict.fromkeys(methods)
    if timed:
        print(f"{preset}: timing {len(methods)} methods, {steps} steps each ...", file=sys.stderr, flush=True)
        rounds = time_rounds(steppers, steps, warmup)  # type: ignore[arg-type]
        step_ms.update(medians(rounds))
        spreads.update({m: (min(r), max(r)) for m in methods if (r := round_ratios(rounds, m, FULL))})
    trainable = {m: count for m, (_, _, count) in setups.items()}
    del steppers, setups
    memory = {m: memory_of(m, base, rank, batch, device) for m in methods}
    rss = {m: rss_peak_mb(m, base, rank, batch, device) if timed else None for m in methods}
    n_tokens, full_ms = batch.idx.numel(), step_ms[FULL]
    rows = [Row(m, batch_size, tokens, trainable[m], ms, None if ms is None else ms / full_ms,  # type: ignore[operator]
                None if ms is None else n_tokens / (ms / 1e3), memory[m], rss[m], spreads[m])
            for m, ms in step_ms.items()]
    facts = {"preset": preset, "n_params": base.n_params(), "rank": rank,
             "n_weights": sum(p.numel() for n, p in base.named_parameters() if n in eligible(base, "weight"))}
    return rows, facts


def same_policy_full(rows: list[Row], method: str) -> Row:
    """The ``full`` row at ``method``'s activation policy (checkpointing or not): the fair baseline of its peak."""
    by = {r.method: r for r in rows}
    return by[FULL_CKPT] if method.endswith(CKPT) and FULL_CKPT in by else by[FULL]


def setting(rows: list[Row]) -> str:
    """The batch size of these rows as "B x T" (sequences x tokens)."""
    return f"{rows[0].batch} x {rows[0].tokens}"


def targets(rows: list[Row]) -> dict[str, tuple[bool, float, tuple[float, float] | None]]:
    """The targets, checked on this batch size's numbers (each only where its rows were measured): name -> (met,
    the measured ratio to the target's reference, unrounded: a peak of 0.6004x is printed as such, not as 0.60x;
    for a step time, the ratio's lowest and highest within one round, else None)."""
    by = {r.method: r for r in rows}
    full = by[FULL].memory.peak_bytes
    checks = {}

    def at_most(value: float, reference: float, bound: float,
                spread: tuple[float, float] | None = None) -> tuple[bool, float, tuple[float, float] | None]:
        return value <= bound * reference, value / reference, spread

    timed = by[FULL].step_ms is not None
    if SPARSE in by and timed:
        checks[SPARSE_TIME_TARGET] = at_most(by[SPARSE].step_ms, by[FULL].step_ms, 1.0,  # type: ignore[arg-type]
                                             by[SPARSE].ratio_spread)
    for method in (m for m in VALUES_ROWS if m in by):
        if timed:
            step_ms = by[method].step_ms
            checks[TIME_TARGET.format(method)] = at_most(step_ms, by[FULL].step_ms, 0.80,  # type: ignore[arg-type]
                                                         by[method].ratio_spread)
        checks[VALUES_TARGET.format(method)] = at_most(by[method].memory.peak_bytes, full, 0.6)
    below = LORA if SPARSE_VALUES not in by else max((LORA, SPARSE_VALUES), key=lambda m: by[m].memory.peak_bytes)
    checks[BELOW_FULL_TARGET] = (by[below].memory.peak_bytes < full, by[below].memory.peak_bytes / full, None)
    if VALUES_CKPT in by and FULL_CKPT in by:
        checks[VALUES_CKPT_TARGET] = at_most(by[VALUES_CKPT].memory.peak_bytes, by[FULL_CKPT].memory.peak_bytes, 0.6)
    return checks


def reading(rows: list[Row]) -> str:
    """How far to trust the table: every number quoted comes from this run."""
    by = {r.method: r for r in rows}
    full, sparse, lora_row = by[FULL], by[SPARSE], by[LORA]

    def peak(r: Row) -> str:
        return f"{r.memory.peak_bytes / full.memory.peak_bytes:.2f}x"

    values = by.get(SPARSE_VALUES)
    return (
        "**Reading the table.** Every byte column counts live tensors (one count per storage), so the "
        f"categories explain the peak: full fine-tuning keeps a gradient and two moments per parameter "
        f"({full.memory.grads / MB:.1f} + {full.memory.optimizer_state / MB:.1f} MB). `sparse 5%` keeps the "
        f"dense weight gradient of every block matrix ({sparse.memory.grads / MB:.1f} MB) but [k]-sized state "
        f"(peak {peak(sparse)} full's)"
        + (f"; `sparse 5% values-grad` keeps only the selected entries' gradient "
           f"({values.memory.grads / MB:.2f} MB; peak {peak(values)} full's)" if values else "")
        + (f" at {values.time_ratio:.2f}x full's step time (plain sparse 5%: {sparse.time_ratio:.2f}x)"
           if values and values.time_ratio is not None else "")
        + f"; LoRA keeps no base-weight gradient ({lora_row.memory.grads / MB:.2f} MB of adapter gradients; "
        f"peak {peak(lora_row)} full's) but saves more activations ({lora_row.memory.activations / MB:.1f} MB "
        f"against {full.memory.activations / MB:.1f}) for its extra matmuls."
        + (f" `sparse 5%` and `sparse LoRA-equal` run the same code on nearly the same count ({sparse.trainable:,} vs "
           f"{by[SPARSE_LORA].trainable:,}): their time ratios, {sparse.time_ratio:.2f} and "
           f"{by[SPARSE_LORA].time_ratio:.2f}, show this run's timing noise. The resident-set column counts what the "
           "C allocator keeps after a free, so it does not rank methods." if sparse.time_ratio is not None else "")
    )


def activations_reading(settings: list[list[Row]]) -> str:
    """Which setting brings values-grad's peak to 0.6x full's and why, in bytes by category, from this run."""
    parts = []
    for rows in settings:
        by = {r.method: r for r in rows}
        if SPARSE_VALUES not in by:
            continue
        full, values = by[FULL].memory, by[SPARSE_VALUES].memory
        text = (f"At {setting(rows)} tokens the saved activations are {full.activations / MB:.1f} MB of full's "
                f"{full.peak_bytes / MB:.1f} MB peak ({full.activations / full.peak_bytes:.0%})")
        if SPARSE_KEPT in by:
            kept = by[SPARSE_KEPT]
            floor = kept.memory.params + kept.memory.activations
            text += (f"; values-grad with its layers' inputs kept saves nearly as many "
                     f"({kept.memory.activations / MB:.1f} MB), so its peak cannot go below parameters + activations, "
                     f"{floor / MB:.1f} MB = {floor / full.peak_bytes:.2f}x full's, however little gradient and "
                     f"state it keeps: it is {kept.memory.peak_bytes / full.peak_bytes:.2f}x. Rebuilding the GELU "
                     f"outputs and the normalised inputs in backward instead (the default) keeps "
                     f"{values.activations / MB:.1f} MB "
                     f"({(kept.memory.activations - values.activations) / MB:.1f} MB fewer) and peaks at "
                     f"{values.peak_bytes / full.peak_bytes:.2f}x full's")
            if kept.step_ms is not None:
                text += f", in {by[SPARSE_VALUES].step_ms / kept.step_ms:.2f}x the step time of the inputs-kept variant"
        if VALUES_CKPT in by and FULL_CKPT in by:
            fc, vc = by[FULL_CKPT].memory, by[VALUES_CKPT].memory
            text += (f". With checkpointing both keep {fc.activations / MB:.1f} / {vc.activations / MB:.1f} MB of "
                     f"activations (the blocks' inputs, the head's and the loss's) and the weight side decides: full keeps "
                     f"{(fc.grads + fc.optimizer_state) / MB:.1f} MB of gradients and state, values-grad "
                     f"{(vc.grads + vc.optimizer_state) / MB:.1f} MB; values-grad + checkpointing peaks at "
                     f"{vc.peak_bytes / fc.peak_bytes:.2f}x full + checkpointing "
                     f"({vc.peak_bytes / full.peak_bytes:.2f}x plain full)")
            if by[FULL_CKPT].step_ms is not None:
                text += f" and steps in {by[VALUES_CKPT].step_ms / by[FULL_CKPT].step_ms:.2f}x its time"
        parts.append(text + ".")
    return "**What reaches 0.6x, and why.** " + " ".join(parts)


def _cell(value: float | None, spec: str) -> str:
    """A timed number formatted, or a dash where the run measured bytes only."""
    return "-" if value is None else format(value, spec)


def format_table(rows: list[Row], rank: int) -> str:
    """One batch size's table: step time, bytes by category, peak against full and full at the same policy."""
    full_peak = {r.method: r.memory.peak_bytes for r in rows}[FULL]
    return markdown_table(
        ["method", "trainable", "step ms (median)", "time vs full", "tokens/s", "params MB", "grads MB",
         "optimizer state MB", "activations MB", "peak MB", "peak vs full", "peak vs full, same checkpointing",
         "RSS peak MB (3 steps)"],
        [[r.method + (f" (r={rank})" if r.method.removesuffix(CKPT) in (LORA, SPARSE_LORA) else ""),
          f"{r.trainable:,}", _cell(r.step_ms, ".1f"), _cell(r.time_ratio, ".2f"), _cell(r.tokens_per_s, ",.0f"),
          f"{r.memory.params / MB:.2f}", f"{r.memory.grads / MB:.2f}", f"{r.memory.optimizer_state / MB:.2f}",
          f"{r.memory.activations / MB:.2f}", f"{r.memory.peak_bytes / MB:.2f}", f"{r.memory.peak_bytes / full_peak:.2f}",
          f"{r.memory.peak_bytes / same_policy_full(rows, r.method).memory.peak_bytes:.2f}", _cell(r.rss_peak_mb, ".1f")]
         for r in rows])


def format_report(settings: list[list[Row]], facts: dict[str, object], device: str, steps: int | None, command: str,
                  loads: tuple[str, str], threads: int, steady: Sequence[str] = ()) -> str:
    """The markdown report; ``steps`` None: a ``--memory-only`` run (bytes only, no step times); ``threads``: the
    torch threads it timed on; ``steady``: the machine-steadiness line (``benchmarks.steadiness.line``) of a timed
    run, none for a bytes-only one (``TimingSession.lines``)."""
    timing = (f"median of {steps} training steps (forward, backward, step) per method, interleaved rounds of "
              f"{STEPS_PER_ROUND} within each batch size" if steps is not None else
              "not measured (`--memory-only`: bytes by category only, which do not depend on the load)")
    peak_kind = "torch.cuda.max_memory_allocated" if device.startswith("cuda") else \
        "the largest total of live tensor storages (sparsity.memory.LiveTensors)"
    lines = [
        f"# Fine-tuning cost on GPT `{facts['preset']}` ({device}): full vs compact sparse vs LoRA, "
        "with and without activation checkpointing",
        "",
        *machine_lines(command),
        load_line(loads, threads),
        *steady,
        f"- model: {facts['n_params']:,} parameters, {facts['n_weights']:,} in block matrices; random tokens, "
        + ("bf16 autocast" if device.startswith("cuda") else "float32"),
        (f"- timing: {timing}; memory: the second training step of a fresh set-up, in live "
         f"tensor bytes by category (`sparsity.memory.step_memory`), peak = {peak_kind}; `+ checkpointing`: "
         "activation checkpointing per block (`GPT.gradient_checkpointing_enable`); RSS: the process's resident-set "
         f"peak over the first {PEAK_STEPS} steps, above model + data"),
        *([] if device.startswith("cuda") else
          ["- GPU rows: not run (no GPU in this session); `--device cuda` measures the `mid` preset under bf16 "
           "autocast with `torch.cuda.max_memory_allocated`"]),
    ]
    for i, rows in enumerate(settings):
        lines += ["", f"## Batch {setting(rows)} tokens", "", format_table(rows, facts["rank"]), "",  # type: ignore[arg-type]
                  *[f"- target {name} (batch {setting(rows)}): {'met' if ok else 'NOT met'} ({ratio:.3f}x"
                    + ("" if spread is None else f"; {spread[0]:.3f}x to {spread[1]:.3f}x within single rounds") + ")"
                    for name, (ok, ratio, spread) in targets(rows).items()]]
        if i == 0:
            lines += ["", reading(rows)]
    lines += ["", activations_reading(settings)
              + (" Checkpointing costs one more forward of the blocks in backward (the `time vs full` column)."
                 if steps is not None else ""), ""]
    return "\n".join(lines)


def json_rows(settings: list[list[Row]], facts: dict[str, object], device: str, threads: int,
              loads: tuple[str, str]) -> list[dict[str, object]]:
    """One object per method and batch size: the byte categories, the step time, the setting and the run's facts."""
    def rounded(value: float | None, digits: int) -> float | None:
        return None if value is None else round(value, digits)

    return [{"method": r.method, **asdict(r.memory), "step_ms": rounded(r.step_ms, 3),
             "time_vs_full": rounded(r.time_ratio, 4),
             "time_vs_full_rounds": None if r.ratio_spread is None else [round(v, 4) for v in r.ratio_spread],
             "trainable": r.trainable,
             "rss_peak_mb": rounded(r.rss_peak_mb, 2),
             "setting": setting(rows), "batch": r.batch, "tokens": r.batch * r.tokens,
             "checkpointing": r.method.endswith(CKPT), "preset": facts["preset"], "device": device,
             "threads": threads, "load_1min_start": loads[0], "load_1min_end": loads[1]}
            for rows in settings for r in rows]


def parse_args(argv: list[str]) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaleup_memory",
                                description="Step time, peak memory and optimizer state: full vs sparse vs LoRA.")
    p.add_argument("--device", default="cuda" if cuda else "cpu", choices=("cpu", "cuda"),
                   help="where to measure (default: cuda where there is one, else cpu)")
    p.add_argument("--preset", default=None, choices=tuple(gpt.PRESETS),
                   help="default: micro with LAB_FAST=1, else small on the CPU and mid on CUDA")
    p.add_argument("--batch", type=positive_int, default=None, help="sequences per step (default 32 CPU, 64 CUDA)")
    p.add_argument("--small-batch", type=positive_int, default=None,
                   help="a second, smaller batch where the weight side dominates (default 8 CPU, 16 CUDA; fewer "
                        "sequences than --batch)")
    p.add_argument("--tokens", type=positive_int, default=None, help="tokens per sequence (default 64; 16 in fast mode)")
    p.add_argument("--steps", type=positive_int, default=None, help="timed steps per method (default 30; 6 in fast mode)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default %(default)s)")
    p.add_argument("--memory-only", action="store_true",
                   help="bytes by category only, no step times or resident set (bytes do not depend on the load)")
    p.add_argument("--out", type=output_file, default=None, help="also write the report as markdown to this path")
    args = p.parse_args(argv)
    if args.device == "cuda" and not cuda:
        p.error("--device cuda: CUDA is not available here")
    fast = args.fast = fast_mode()  # the entry point reads LAB_FAST once and passes it down
    args.preset = args.preset or ("micro" if fast else "mid" if args.device == "cuda" else "small")
    args.batch = args.batch or (64 if args.device == "cuda" else 32)
    args.small_batch = args.small_batch or (16 if args.device == "cuda" else 8)
    if args.small_batch >= args.batch:
        p.error(f"--small-batch ({args.small_batch}) must be below --batch ({args.batch})")
    args.steps = args.steps or (6 if fast else 30)
    args.tokens = args.tokens or (16 if fast else 64)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    with steadiness.TimingSession(args.threads, 3 if args.fast else 30, timed=not args.memory_only) as session:
        start = time.perf_counter()
        settings, facts = [], {}
        with frozen_heap():  # the per-measurement gc.collect() then walks the benchmark's objects only
            for batch, methods in ((args.batch, METHODS), (args.small_batch, SMALL_BATCH_METHODS)):
                rows, facts = measure(args.preset, args.device, batch, args.tokens, args.steps,
                                      2 if args.fast else 3, methods_for(args.device, methods), not args.memory_only)
                settings.append(rows)
        session.finish()
        loads = session.loads
        command = command_line("benchmarks.scaleup_memory", argv, args.fast)
        report = format_report(settings, facts, args.device, None if args.memory_only else args.steps, command, loads,
                               args.threads, session.lines)
    print(f"measured in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    emit(report, args.out)
    if args.out is not None:
        args.out.with_suffix(".json").write_text(
            json.dumps(json_rows(settings, facts, args.device, args.threads, loads), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
