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
tokens per second, and the memory of one training step by category, in live tensor bytes
(``sparsity.memory.step_memory``, measured on the second step of a fresh set-up so the
optimizer state exists): parameters, gradients kept for the step, optimizer state, saved
activations and the step's peak (the largest total of live tensors; on CUDA
``torch.cuda.max_memory_allocated``). The process's resident-set peak over the first three
steps (``scaleup.memory.PeakMemory``) stays as an extra column: it counts what the C allocator
keeps after a free, so it cannot rank methods. Every sparse row but ``values-grad`` keeps
autograd's dense weight gradient (``values_grad=False``), to show what the values-only gradient
saves. The batch is random tokens (cost does not depend on them), ``--batch`` x ``--tokens``. The
weights are a freshly initialised model. Targets, checked at the end: values-grad step <= 0.80x
full, values-grad peak <= 0.6x full, LoRA's and values-grad's peaks below full's.

Presets: ``small`` on the CPU, ``mid`` on CUDA (bf16 autocast); ``LAB_FAST=1``: ``micro``
and a few steps (seconds). Run from the repository root::

    PYTHONPATH=. python -m benchmarks.scaleup_memory [--preset P] [--device cpu|cuda] [--threads T] [--out PATH]

``--out PATH`` writes the markdown report and, beside it, ``PATH`` with ``.json``: one object per
method with ``method``, ``peak_bytes``, ``params``, ``grads``, ``optimizer_state``, ``activations``,
``step_ms`` and the run's facts (preset, device, tokens, threads, load).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from benchmarks.optimizer_step import STEPS_PER_ROUND, time_interleaved
from scaleup import gpt, lora
from scaleup import tasks as tk
from scaleup.memory import PeakMemory
from sparsity import SparseConfig, sparsify
from sparsity.cli_args import output_file, positive_int
from sparsity.eligibility import eligible
from sparsity.fastmode import fast_mode
from sparsity.memory import StepMemory, step_memory
from sparsity.sweep import command_line, emit, load_average, machine_lines, markdown_table
from sparsity.train import fit

DENSITY = 0.05
FULL, SPARSE, LORA, SPARSE_LORA = "full", "sparse 5%", "LoRA", "sparse LoRA-equal"
SPARSE_1, SPARSE_20, SPARSE_VALUES = "sparse 1%", "sparse 20%", "sparse 5% values-grad"
METHODS = (FULL, SPARSE_1, SPARSE, SPARSE_20, SPARSE_VALUES, LORA, SPARSE_LORA)
DENSITIES = {SPARSE_1: 0.01, SPARSE: DENSITY, SPARSE_20: 0.20, SPARSE_VALUES: DENSITY}
LR = 1e-3
PEAK_STEPS = 3
"""Training steps inside the resident-set window (the first allocates the optimizer state)."""
TIME_TARGET = "sparse 5% values-grad step time <= 0.80x full"
VALUES_TARGET = "sparse 5% values-grad peak <= 0.6x full"
BELOW_FULL_TARGET = "LoRA's and sparse 5% values-grad's peaks below full's"
SPARSE_TIME_TARGET = "sparse 5% step time <= 1.0x full"
MB = 2**20


@dataclass(frozen=True)
class Row:
    method: str
    trainable: int
    step_ms: float
    time_ratio: float
    tokens_per_s: float
    memory: StepMemory
    rss_peak_mb: float


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
    common = dict(criterion="random", scope="per_tensor", lr=LR, weight_decay=0.0, seed=0, fused=True,
                  values_grad=method == SPARSE_VALUES)
    if method in DENSITIES:
        config = SparseConfig(density=DENSITIES[method], **common)  # type: ignore[arg-type]
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


def methods_for(device: str) -> tuple[str, ...]:
    """The methods measured on ``device``: values-only gradients are float32 CPU layers, so not under CUDA's
    bf16 autocast (``values_grad=True`` would compute them with the gather fallback)."""
    return tuple(m for m in METHODS if not (m == SPARSE_VALUES and device.startswith("cuda")))


def random_batch(vocab_size: int, batch_size: int, tokens: int, device: str) -> tk.Batch:
    """``batch_size`` sequences of ``tokens`` random tokens, every position a target: cost does not depend on them."""
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(vocab_size, (batch_size, tokens + 1), generator=gen)
    return tk.Batch(idx[:, :-1].contiguous(), idx[:, 1:].contiguous()).to(device)


def measure(preset: str, device: str, batch_size: int, tokens: int, steps: int,
            warmup: int) -> tuple[list[Row], dict[str, object]]:
    """Every method's row, and the facts of the set-up (parameters, rank, tokens per step)."""
    methods = methods_for(device)
    world = tk.World()
    base = gpt.build(preset, world.vocab_size, tokens, seed=0, device=device)
    batch = random_batch(world.vocab_size, batch_size, tokens, device)
    rank = matched_rank(base)
    setups = {m: prepare(m, base, rank) for m in methods}
    steppers = {m: TrainingStep(model, opt, batch, device) for m, (model, opt, _) in setups.items()}
    print(f"{preset}: timing {len(methods)} methods, {steps} steps each ...", file=sys.stderr, flush=True)
    medians = time_interleaved(steppers, steps, warmup)  # type: ignore[arg-type]
    trainable = {m: count for m, (_, _, count) in setups.items()}
    del steppers, setups
    memory = {m: memory_of(m, base, rank, batch, device) for m in methods}
    rss = {m: rss_peak_mb(m, base, rank, batch, device) for m in methods}
    n_tokens = batch.idx.numel()
    rows = [Row(m, trainable[m], medians[m], medians[m] / medians[FULL], n_tokens / (medians[m] / 1e3), memory[m],
                rss[m]) for m in methods]
    facts = {"preset": preset, "n_params": base.n_params(), "rank": rank, "batch": batch_size, "tokens": n_tokens,
             "n_weights": sum(p.numel() for n, p in base.named_parameters() if n in eligible(base, "weight"))}
    return rows, facts


def targets(rows: list[Row]) -> dict[str, bool]:
    """The targets, checked on this run's numbers (the values-grad ones only where that row was measured)."""
    by = {r.method: r for r in rows}
    full = by[FULL].memory.peak_bytes
    checks = {SPARSE_TIME_TARGET: by[SPARSE].step_ms <= by[FULL].step_ms}
    if SPARSE_VALUES in by:
        checks[TIME_TARGET] = by[SPARSE_VALUES].step_ms <= 0.80 * by[FULL].step_ms
        checks[VALUES_TARGET] = by[SPARSE_VALUES].memory.peak_bytes <= 0.6 * full
        checks[BELOW_FULL_TARGET] = max(by[LORA].memory.peak_bytes, by[SPARSE_VALUES].memory.peak_bytes) < full
    else:
        checks[BELOW_FULL_TARGET] = by[LORA].memory.peak_bytes < full
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
           f"({values.memory.grads / MB:.2f} MB; peak {peak(values)} full's) at {values.time_ratio:.2f}x full's "
           f"step time (plain sparse 5%: {sparse.time_ratio:.2f}x)" if values else "")
        + f"; LoRA keeps no base-weight gradient ({lora_row.memory.grads / MB:.2f} MB of adapter gradients; "
        f"peak {peak(lora_row)} full's) but saves more activations ({lora_row.memory.activations / MB:.1f} MB "
        f"against {full.memory.activations / MB:.1f}) for its extra matmuls. `sparse 5%` and `sparse LoRA-equal` "
        f"run the same code on nearly the same count ({sparse.trainable:,} vs {by[SPARSE_LORA].trainable:,}): "
        f"their time ratios, {sparse.time_ratio:.2f} and {by[SPARSE_LORA].time_ratio:.2f}, show this run's timing "
        "noise. The resident-set column counts what the C allocator keeps after a free, so it does not rank methods."
    )


def format_report(rows: list[Row], facts: dict[str, object], device: str, steps: int, command: str,
                  loads: tuple[str, str]) -> str:
    by = {r.method: r for r in rows}
    full_peak = by[FULL].memory.peak_bytes
    table = markdown_table(
        ["method", "trainable", "step ms (median)", "time vs full", "tokens/s", "params MB", "grads MB",
         "optimizer state MB", "activations MB", "peak MB", "peak vs full", "RSS peak MB (3 steps)"],
        [[f"{r.method}" + (f" (r={facts['rank']})" if r.method in (LORA, SPARSE_LORA) else ""), f"{r.trainable:,}",
          f"{r.step_ms:.1f}", f"{r.time_ratio:.2f}", f"{r.tokens_per_s:,.0f}", f"{r.memory.params / MB:.2f}",
          f"{r.memory.grads / MB:.2f}", f"{r.memory.optimizer_state / MB:.2f}", f"{r.memory.activations / MB:.2f}",
          f"{r.memory.peak_bytes / MB:.2f}", f"{r.memory.peak_bytes / full_peak:.2f}", f"{r.rss_peak_mb:.1f}"]
         for r in rows])
    checks = targets(rows)
    peak_kind = "torch.cuda.max_memory_allocated" if device.startswith("cuda") else \
        "the largest total of live tensor storages (sparsity.memory.LiveTensors)"
    lines = [
        f"# Fine-tuning cost on GPT `{facts['preset']}` ({device}): full vs compact sparse vs LoRA",
        "",
        *machine_lines(command),
        (f"- 1-minute load average at start / end: {loads[0]} / {loads[1]} (above the thread count: other jobs "
         "shared the CPU)"),
        f"- model: {facts['n_params']:,} parameters, {facts['n_weights']:,} in block matrices; batch "
        f"{facts['batch']} x {facts['tokens'] // facts['batch']} random tokens"  # type: ignore[operator]
        + (", bf16 autocast" if device.startswith("cuda") else ", float32"),
        (f"- timing: median of {steps} training steps (forward, backward, step) per method, interleaved rounds of "
         f"{STEPS_PER_ROUND}; memory: the second training step of a fresh set-up, in live tensor bytes by category "
         f"(`sparsity.memory.step_memory`), peak = {peak_kind}; RSS: the process's resident-set peak over the first "
         f"{PEAK_STEPS} steps, above model + data"),
        *([] if device.startswith("cuda") else
          ["- GPU rows: not run (no GPU in this session); `--device cuda` measures the `mid` preset under bf16 "
           "autocast with `torch.cuda.max_memory_allocated`"]),
        "",
        table,
        "",
        *[f"- target {name}: {'met' if ok else 'NOT met'}" for name, ok in checks.items()],
        "",
        reading(rows),
        "",
    ]
    return "\n".join(lines)


def json_rows(rows: list[Row], facts: dict[str, object], device: str, threads: int,
              loads: tuple[str, str]) -> list[dict[str, object]]:
    """One object per method: the byte categories, the step time and the run's facts."""
    return [{"method": r.method, **asdict(r.memory), "step_ms": round(r.step_ms, 3),
             "time_vs_full": round(r.time_ratio, 4), "trainable": r.trainable, "rss_peak_mb": round(r.rss_peak_mb, 2),
             "preset": facts["preset"], "device": device, "batch": facts["batch"], "tokens": facts["tokens"],
             "threads": threads, "load_1min_start": loads[0], "load_1min_end": loads[1]} for r in rows]


def parse_args(argv: list[str]) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaleup_memory",
                                description="Step time, peak memory and optimizer state: full vs sparse vs LoRA.")
    p.add_argument("--device", default="cuda" if cuda else "cpu", choices=("cpu", "cuda"),
                   help="where to measure (default: cuda where there is one, else cpu)")
    p.add_argument("--preset", default=None, choices=tuple(gpt.PRESETS),
                   help="default: micro with LAB_FAST=1, else small on the CPU and mid on CUDA")
    p.add_argument("--batch", type=positive_int, default=None, help="sequences per step (default 32 CPU, 64 CUDA)")
    p.add_argument("--tokens", type=positive_int, default=None, help="tokens per sequence (default 64; 16 in fast mode)")
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
    args.tokens = args.tokens or (16 if fast else 64)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    load_start = load_average()
    start = time.perf_counter()
    try:
        rows, facts = measure(args.preset, args.device, args.batch, args.tokens, args.steps,
                              warmup=2 if args.fast else 3)
        loads = (load_start, load_average())
        command = command_line("benchmarks.scaleup_memory", argv, args.fast)
        report = format_report(rows, facts, args.device, args.steps, command,
                               loads)
    finally:
        torch.set_num_threads(previous)  # tests call main in-process
    print(f"measured in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    emit(report, args.out)
    if args.out is not None:
        args.out.with_suffix(".json").write_text(
            json.dumps(json_rows(rows, facts, args.device, args.threads, loads), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
