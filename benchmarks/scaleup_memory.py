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
  weight gradient at all (float32 only: on CUDA's bf16 autocast this row is skipped);
- ``LoRA r=R``: ``scaleup.lora`` adapters on every block matrix, ``AdamW(fused=True)``
  on the adapters; ``R`` is the rank whose trainable count is closest to 5%;
- ``sparse LoRA-equal``: random entries at that rank's LoRA-equal budget
  (``SparseConfig(lora_rank=R)``), so exactly LoRA's count, with ``CompactAdamW(fused=True)``.

For each it reports the median step time (interleaved rounds, ``optimizer_step.time_interleaved``),
tokens per second, the optimizer-state bytes (``optimizer_step.state_bytes``) and the
peak memory of the first three training steps above what model and data already held
(optimizer state allocation included): the process's peak resident set on the CPU (Linux
/proc, reset through ``clear_refs``; ``scaleup.memory.PeakMemory``), the allocator's peak
on CUDA (``torch.cuda.max_memory_allocated``). The weights are a freshly initialised
model: cost does not depend on their values. The targets, checked at the end: sparse 5%
step time <= 1.0x full, sparse 5% values-grad peak memory <= 0.6x full, sparse 5% peak
memory <= LoRA's (at the matched count).

Presets: ``small`` on the CPU, ``mid`` on CUDA (bf16 autocast); ``LAB_FAST=1``: ``micro``
and a few steps (seconds). Run from the repository root::

    PYTHONPATH=. python -m benchmarks.scaleup_memory [--preset P] [--device cpu|cuda] [--threads T] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks.optimizer_step import STEPS_PER_ROUND, state_bytes, time_interleaved
from scaleup import gpt, lora
from scaleup import tasks as tk
from scaleup.memory import PeakMemory
from sparsity import SparseConfig, sparsify
from sparsity.cli_args import output_file, positive_int
from sparsity.eligibility import eligible
from sparsity.fastmode import fast_mode
from sparsity.sweep import command_line, emit, load_average, machine_lines, markdown_table
from sparsity.train import fit

DENSITY = 0.05
FULL, SPARSE, LORA, SPARSE_LORA = "full", "sparse 5%", "LoRA", "sparse LoRA-equal"
SPARSE_1, SPARSE_20, SPARSE_VALUES = "sparse 1%", "sparse 20%", "sparse 5% values-grad"
METHODS = (FULL, SPARSE_1, SPARSE, SPARSE_20, SPARSE_VALUES, LORA, SPARSE_LORA)
DENSITIES = {SPARSE_1: 0.01, SPARSE: DENSITY, SPARSE_20: 0.20, SPARSE_VALUES: DENSITY}
LR = 1e-3
PEAK_STEPS = 3
"""Training steps inside the peak-memory window (the first allocates the optimizer state)."""
MEMORY_TARGET = "sparse 5% peak memory <= LoRA's"
TIME_TARGET = "sparse 5% step time <= 1.0x full"
VALUES_TARGET = "sparse 5% values-grad peak memory <= 0.6x full"


@dataclass(frozen=True)
class Row:
    method: str
    trainable: int
    step_ms: float
    time_ratio: float
    tokens_per_s: float
    state_bytes: int
    peak_mb: float
    saved_mb: float


def matched_rank(model: nn.Module, density: float = DENSITY) -> int:
    """The LoRA rank whose trainable count, r * (m + n) summed over the block matrices, is closest to ``density``."""
    shapes = [p.shape for n, p in model.named_parameters() if n in eligible(model, "weight")]
    total = sum(m * k for m, k in shapes)
    per_rank = sum(m + k for m, k in shapes)
    return max(1, round(density * total / per_rank))


def prepare(method: str, base: gpt.GPT, rank: int) -> tuple[nn.Module, torch.optim.Optimizer, int]:
    """A copy of ``base`` set up for one method: (model, optimizer, trainable count)."""
    model = copy.deepcopy(base).train()
    if method == FULL:
        return model, torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, fused=True), model.n_params()
    if method == LORA:
        lora.add_lora(model, lora.LoraConfig(r=rank), seed=0)
        trainable = [p for p in model.parameters() if p.requires_grad]
        return model, torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0, fused=True), lora.trainable_count(model)
    common = dict(criterion="random", scope="per_tensor", lr=LR, weight_decay=0.0, seed=0, fused=True)
    if method in DENSITIES:
        config = SparseConfig(density=DENSITIES[method], values_grad=method == SPARSE_VALUES,  # type: ignore[arg-type]
                              **common)
    elif method == SPARSE_LORA:
        config = SparseConfig(lora_rank=rank, **common)  # type: ignore[arg-type]
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    run = sparsify(model, config)  # random entries, compact AdamW state; frozen tensors get no gradient at all
    return model, run.optimizer, run.trainable_parameters()[0]


class TrainingStep:
    """One method's training step as a ``step()`` callable, the interface ``time_interleaved`` times:
    ``steps`` steps of the lab's one training loop (``sparsity.train.fit``) on the same batch."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, batch: tk.Batch, device: str) -> None:
        self.model, self.opt, self.batch, self.device = model, opt, batch, device

    def _loss(self, model: nn.Module, batch: tk.Batch) -> torch.Tensor:
        with gpt.autocast(self.device):
            return tk.loss(model, batch)

    def step(self, steps: int = 1) -> None:
        fit(self.model, self.opt, self._loss, steps, batches=lambda _: self.batch)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def peak_mb(method: str, base: gpt.GPT, rank: int, batch: tk.Batch, device: str) -> float:
    """MB by which the first PEAK_STEPS training steps of a fresh set-up raise peak memory."""
    model, opt, _ = prepare(method, base, rank)
    runner = TrainingStep(model, opt, batch, device)
    gc.collect()
    with PeakMemory(device) as peak:
        runner.step(PEAK_STEPS)
    del runner, model, opt
    gc.collect()
    return peak.mb


def saved_activation_mb(method: str, base: gpt.GPT, rank: int, batch: tk.Batch, device: str) -> float:
    """MB of the tensors autograd saves for backward in one forward pass (parameters excluded).

    Counted through ``torch.autograd.graph.saved_tensors_hooks``, one count per storage:
    what the methods keep alive between forward and backward, independent of the allocator.
    """
    model, _, _ = prepare(method, base, rank)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), gpt.autocast(device):
        tk.loss(model, batch)
    return sum(saved.values()) / 2**20


def methods_for(device: str) -> tuple[str, ...]:
    """The methods measured on ``device``: values-only gradients need float32, so not under CUDA's bf16 autocast."""
    return tuple(m for m in METHODS if not (m == SPARSE_VALUES and device.startswith("cuda")))


def measure(preset: str, device: str, batch_size: int, steps: int, warmup: int) -> tuple[list[Row], dict[str, object]]:
    """Every method's row, and the facts of the set-up (parameters, rank, tokens per step)."""
    methods = methods_for(device)
    world = tk.World()
    base = gpt.build(preset, world.vocab_size, world.block_size, seed=0, device=device)
    batch = world.train_batch("add2", 0, batch_size, seed=0).to(device)
    rank = matched_rank(base)
    setups = {m: prepare(m, base, rank) for m in methods}
    steppers = {m: TrainingStep(model, opt, batch, device) for m, (model, opt, _) in setups.items()}
    print(f"{preset}: timing {len(methods)} methods, {steps} steps each ...", file=sys.stderr, flush=True)
    medians = time_interleaved(steppers, steps, warmup)  # type: ignore[arg-type]
    nbytes = {m: state_bytes(opt) for m, (_, opt, _) in setups.items()}
    trainable = {m: count for m, (_, _, count) in setups.items()}
    del steppers, setups
    peaks = {m: peak_mb(m, base, rank, batch, device) for m in methods}
    saved = {m: saved_activation_mb(m, base, rank, batch, device) for m in methods}
    tokens = batch.idx.numel()
    rows = [Row(m, trainable[m], medians[m], medians[m] / medians[FULL], tokens / (medians[m] / 1e3),
                nbytes[m], peaks[m], saved[m]) for m in methods]
    facts = {"preset": preset, "n_params": base.n_params(), "rank": rank, "batch": batch_size, "tokens": tokens,
                 "n_weights": sum(p.numel() for n, p in base.named_parameters() if n in eligible(base, "weight"))}
    return rows, facts


def targets(rows: list[Row]) -> dict[str, bool]:
    """The targets, checked on this run's numbers (the values-grad one only where that row was measured)."""
    by = {r.method: r for r in rows}
    checks = {TIME_TARGET: by[SPARSE].step_ms <= by[FULL].step_ms,
              MEMORY_TARGET: by[SPARSE].peak_mb <= by[LORA].peak_mb}
    if SPARSE_VALUES in by:
        checks[VALUES_TARGET] = by[SPARSE_VALUES].peak_mb <= 0.6 * by[FULL].peak_mb
    return checks


def reading(rows: list[Row], device: str) -> str:
    """How far to trust the table: every number quoted comes from this run."""
    by = {r.method: r for r in rows}
    sparse, lora_eq = by[SPARSE], by[SPARSE_LORA]
    peak_source = ("the process's resident set, so it includes what the C allocator keeps after a free "
                   "(not only live tensors)" if not device.startswith("cuda") else "the CUDA allocator's live bytes")
    return (
        "**Reading the table.** `sparse 5%` and `sparse LoRA-equal` run the same code on nearly the same count "
        f"({sparse.trainable:,} vs {lora_eq.trainable:,} entries); their time ratios, {sparse.time_ratio:.2f} and "
        f"{lora_eq.time_ratio:.2f}, show this run's timing noise. The sparse runs without values-grad still compute "
        "the dense weight gradient of every block matrix in backward, so they save optimizer state, not gradient "
        "memory; `sparse 5% values-grad` computes only the selected entries' gradient (a sampled matmul and two "
        "transposes instead of one dense matmul), which saves the gradient's memory"
        + (f" (peak {by[SPARSE_VALUES].peak_mb / by[FULL].peak_mb:.2f}x full against "
           f"{sparse.peak_mb / by[FULL].peak_mb:.2f}x without it) at {by[SPARSE_VALUES].time_ratio:.2f}x full's step "
           f"time (against {sparse.time_ratio:.2f}x)" if SPARSE_VALUES in by else "")
        + "; LoRA computes no base-weight gradient but three matmuls per layer. Saved activations (what autograd keeps for backward) are "
        f"{min(r.saved_mb for r in rows):.1f} to {max(r.saved_mb for r in rows):.1f} MB for every method, so "
        f"differences in peak memory come from gradients, optimizer state and transient buffers. The peak is "
        f"{peak_source}."
    )


def format_report(rows: list[Row], facts: dict[str, object], device: str, steps: int, command: str,
                  loads: tuple[str, str]) -> str:
    by = {r.method: r for r in rows}
    table = markdown_table(
        ["method", "trainable", "step ms (median)", "time vs full", "tokens/s", "optimizer state bytes",
         "state vs full", "peak MB (3 steps)", "peak vs full", "saved activations MB"],
        [[f"{r.method}" + (f" (r={facts['rank']})" if r.method in (LORA, SPARSE_LORA) else ""), f"{r.trainable:,}",
          f"{r.step_ms:.1f}", f"{r.time_ratio:.2f}", f"{r.tokens_per_s:,.0f}", f"{r.state_bytes:,}",
          f"{r.state_bytes / by[FULL].state_bytes:.3f}", f"{r.peak_mb:.1f}", f"{r.peak_mb / by[FULL].peak_mb:.2f}",
          f"{r.saved_mb:.1f}"]
         for r in rows])
    checks = targets(rows)
    peak_kind = "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "peak resident set (VmHWM)"
    lines = [
        f"# Fine-tuning cost on GPT `{facts['preset']}` ({device}): full vs compact sparse vs LoRA",
        "",
        *machine_lines(command),
        (f"- 1-minute load average at start / end: {loads[0]} / {loads[1]} (above the thread count: other jobs "
        "shared the CPU)"),
        f"- model: {facts['n_params']:,} parameters, {facts['n_weights']:,} in block matrices; batch "
        f"{facts['batch']} x {facts['tokens'] // facts['batch']} tokens (target `add2`)"  # type: ignore[operator]
        + (", bf16 autocast" if device.startswith("cuda") else ", float32"),
        (f"- timing: median of {steps} training steps (forward, backward, step) per method, interleaved rounds of "
        f"{STEPS_PER_ROUND}; peak: {peak_kind} over the first {PEAK_STEPS} steps of a fresh set-up, above "
        "model + data"),
        *([] if device.startswith("cuda") else
          [("- CPU only: the CUDA table (preset `mid`, bf16 autocast, `torch.cuda.max_memory_allocated`) comes from "
           "`--device cuda` on a GPU machine and is not part of this report")]),
        "",
        table,
        "",
        *[f"- target {name}: {'met' if ok else 'NOT met'}" for name, ok in checks.items()],
        "",
        reading(rows, device),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaleup_memory",
                                description="Step time, peak memory and optimizer state: full vs sparse vs LoRA.")
    p.add_argument("--device", default="cuda" if cuda else "cpu", choices=("cpu", "cuda"),
                   help="where to measure (default: cuda where there is one, else cpu)")
    p.add_argument("--preset", default=None, choices=tuple(gpt.PRESETS),
                   help="default: micro with LAB_FAST=1, else small on the CPU and mid on CUDA")
    p.add_argument("--batch", type=positive_int, default=None, help="sequences per step (default 32 CPU, 64 CUDA)")
    p.add_argument("--steps", type=positive_int, default=None, help="timed steps per method (default 30; 6 in fast mode)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default %(default)s)")
    p.add_argument("--out", type=output_file, default=None, help="also write the report as markdown to this path")
    args = p.parse_args(argv)
    if args.device == "cuda" and not cuda:
        p.error("--device cuda: CUDA is not available here")
    fast = args.fast = fast_mode()  # the entry point reads LAB_FAST once and passes it down
    args.preset = args.preset or ("micro" if fast else "mid" if args.device == "cuda" else "small")
    args.batch = args.batch or (64 if args.device == "cuda" else 32)
    args.steps = args.steps or (6 if fast else 30)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    load_start = load_average()
    start = time.perf_counter()
    try:
        rows, facts = measure(args.preset, args.device, args.batch, args.steps, warmup=2 if args.fast else 3)
        report = format_report(rows, facts, args.device, args.steps,
                               command_line("benchmarks.scaleup_memory", argv, args.fast), (load_start, load_average()))
    finally:
        torch.set_num_threads(previous)  # tests call main in-process
    print(f"measured in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
