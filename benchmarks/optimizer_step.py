"""What does masking cost per optimizer step? The masked optimizers against torch's fastest AdamW.

Sparse fine-tuning trains only the entries a mask selects. The hope is that a sparse
subnetwork is also cheaper to train: fewer entries to update, less optimizer state.
Whether that happens depends on how the optimizer is written, so this script
measures it instead of guessing. It compares seven optimizer set-ups on the same MLP:

- ``sparsity.compact.CompactAdamW()``, its default (``fused=True``): state and update only for
  the selected entries, through the one-pass kernel of ``sparsity.kernels.sparse_cpu``;
- the same, fed the values-only ``[k]`` gradient that ``sparsify``'s defaults make backward compute
  for float32 CPU ``nn.Linear`` weights (``sparsity.values_grad``) instead of a dense one;
- ``sparsity.compact.CompactAdamW(fused=False)``: the same storage, the bit-exact reference step;
- ``sparsity.optim.MaskedAdamW``: the dense-mask reference (dense state, dense update
  written back through the mask); all three with a random mask (``sparsity.masks.random``,
  seed 0, weights only) at densities 1%, 5%, 20% and 100%;
- ``torch.optim.AdamW(fused=True)``, the fastest dense AdamW: the baseline of every ratio
  (comparing against a slower dense form would flatter the sparse optimizers);
- ``torch.optim.AdamW(foreach=True)`` and ``(foreach=False)``, the single-tensor loop the
  masked optimizers reproduce with a full mask.

For each optimizer it reports:

- the time of one ``opt.step()``: the median over ``--steps`` timed steps, after a
  few warm-up steps (the first step allocates the state). Only ``opt.step()`` is
  timed: the gradients are filled once with a fixed random tensor, so no forward or
  backward pass is run or measured;
- the bytes of optimizer state: every tensor in ``opt.state`` (and the compact
  optimizer's int32 indices);
- the peak memory of a whole training step (forward, backward, step on a batch of
  ``BATCH`` rows): how far three steps raise the process's peak resident memory above
  what model, data and mask already occupied (Linux /proc; see ``peak_training_step_mb``).

Timing is noisy (other processes, CPU frequency, caches), so the optimizers are timed
in interleaved rounds of a few steps each (A, B, C, A, B, C, ...): a noisy moment hits
all of them alike, and every ratio compares numbers measured side by side in one run.

The MLP is made of ``Linear`` layers without bias, so "weights only" covers every
parameter and a 100% mask trains exactly what AdamW trains. ``LAB_FAST=1`` shrinks
the MLP to about 1M parameters and the run to a few steps.

The timed loop calls ``opt.step()`` alone on purpose: this is an optimizer benchmark, and
a training loop would time the forward and backward passes too. The peak-memory
measurement trains for real, through the lab's one training loop ``sparsity.train.fit``.

Run from the repository root::

    PYTHONPATH=. python -m benchmarks.optimizer_step [--steps N] [--threads T] [--out PATH]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks import steadiness
from scaleup.memory import PeakMemory, frozen_heap
from sparsity import masks, values_grad
from sparsity.cli_args import output_file, positive_int
from sparsity.compact import CompactAdamW
from sparsity.fastmode import fast_mode
from sparsity.optim import MaskedAdamW
from sparsity.sweep import command_line, emit, load_line, machine_lines, markdown_table
from sparsity.train import fit

FULL_WIDTHS = (1024, 2048, 2048, 1024, 1024)
"""Layer widths of the full-size MLP: 9,437,184 parameters."""
FAST_WIDTHS = (160, 320, 320, 160, 160)
"""The same shape with every width divided by 6.4 (LAB_FAST=1): 230,400 parameters, a CI-sized run."""

DENSITIES = (0.01, 0.05, 0.20, 1.0)
"""Share of the weights the MaskedAdamW mask selects."""

FULL_STEPS, FAST_STEPS = 40, 10
"""Timed steps per optimizer and density (the --steps default)."""

FULL_WARMUP, FAST_WARMUP = 3, 2
"""Untimed steps per optimizer before timing starts."""

STEPS_PER_ROUND = 5
"""Timed steps an optimizer takes in a row before the next optimizer's turn."""

LR, WEIGHT_DECAY = 1e-3, 1e-2
"""Hyperparameters given to every optimizer (AdamW's defaults)."""

BATCH = 256
"""Rows per batch in the peak-memory training step."""

COMPACT_FUSED = "CompactAdamW (default: fused)"
COMPACT_VALUES = "CompactAdamW (fused), values-only gradient"
COMPACT = "CompactAdamW (fused=False)"
MASKED = "MaskedAdamW"
BASELINE = "AdamW (fused=True)"
FOREACH = "AdamW (foreach=True)"
SINGLE = "AdamW (foreach=False)"
OPTIMIZERS = (COMPACT_FUSED, COMPACT_VALUES, COMPACT, MASKED, BASELINE, FOREACH, SINGLE)
"""The baseline of every ratio is the fastest dense AdamW torch has: ``fused=True`` (on the CPU
since torch 2.4). ``SINGLE`` is the form the masked optimizers reproduce with a full mask.
``COMPACT_VALUES`` is the step ``sparsify``'s defaults set up for float32 CPU ``nn.Linear`` layers
(``SparseConfig(values_grad=None)``, ``sparsity.values_grad``): the gradient arrives as the ``[k]``
values of the selected entries, so the kernel reads it in order instead of gathering a dense one."""


@dataclass(frozen=True)
class Settings:
    """What one run measures."""

    widths: tuple[int, ...]
    steps: int
    warmup: int
    threads: int


@dataclass(frozen=True)
class Row:
    """One line of the table: one optimizer at one mask density."""

    density: float
    optimizer: str
    step_ms: float
    time_ratio: float
    state_bytes: int
    state_ratio: float
    peak_mb: float


# --- the model and its gradients ----------------------------------------------------


def build_mlp(widths: tuple[int, ...]) -> nn.Sequential:
    """Linear layers (no bias) with ReLU in between; the same weights on every call."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        if i > 0:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(n_in, n_out, bias=False))
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fill_gradients(model: nn.Module, seed: int = 1) -> None:
    """Give every parameter a fixed random gradient, as if backward() had just run."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


# --- the optimizers -----------------------------------------------------------------


def make_optimizer(name: str, model: nn.Module, density: float) -> torch.optim.Optimizer:
    """One of the optimizers compared, on its own copy of the model."""
    if name in (COMPACT_FUSED, COMPACT_VALUES, COMPACT, MASKED):
        mask = masks.random(model, density, seed=0)
        if name == MASKED:
            return MaskedAdamW(model.named_parameters(), mask=mask, lr=LR, weight_decay=WEIGHT_DECAY)
        return CompactAdamW(model.named_parameters(), mask=mask, lr=LR, weight_decay=WEIGHT_DECAY,
                            fused=name != COMPACT)
    if name in (BASELINE, FOREACH, SINGLE):
        flag = {BASELINE: dict(fused=True), FOREACH: dict(foreach=True), SINGLE: dict(foreach=False)}[name]
        return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, **flag)
    raise ValueError(f"unknown optimizer {name!r}, expected one of {OPTIMIZERS}")


def values_only_gradients(model: nn.Module, opt: CompactAdamW, seed: int = 1) -> None:
    """Install ``sparsity.values_grad`` (backward then fills the ``[k]`` anchors, no dense weight gradient)
    and hand every anchor a fixed random gradient before each step, as if backward had just run (the
    step consumes the anchors' gradients); the dense ones are dropped."""
    values_grad.install(model, opt, "sampled")
    gen = torch.Generator().manual_seed(seed)
    grads = {name: torch.randn(anchor.shape, generator=gen) for name, anchor in opt.values_grads.items()}
    for name, p in model.named_parameters():
        if name in grads:
            p.grad = None

    def backward_just_ran(*_: object) -> None:
        for name, anchor in opt.values_grads.items():
            anchor.grad = grads[name]

    opt.register_step_pre_hook(backward_just_ran)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer state: every tensor in opt.state (moments and step counts)."""
    if isinstance(opt, CompactAdamW):
        return opt.state_bytes()  # its indices too
    return sum(
        value.nbytes
        for per_param in opt.state.values()
        for value in per_param.values()
        if isinstance(value, torch.Tensor)
    )


def peak_training_step_mb(widths: tuple[int, ...], name: str, density: float) -> float:
    """MB by which three full training steps raise this process's peak resident memory.

    Model, data and mask are built first; then freed memory is handed back to the OS
    (``malloc_trim``), the kernel's peak-RSS mark is reset to the current RSS (writing 5 to
    /proc/self/clear_refs, Linux >= 4.0), and the steps run. NaN where /proc is missing.
    """
    if not Path("/proc/self/clear_refs").exists():
        return float("nan")
    model = build_mlp(widths)
    opt = make_optimizer(name, model, density)
    if name == COMPACT_VALUES:
        values_grad.install(model, opt, "sampled")  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(BATCH, widths[0], generator=gen), torch.randn(BATCH, widths[-1], generator=gen)
    gc.collect()
    with PeakMemory("cpu") as peak:
        fit(model, opt, lambda m, _: nn.functional.mse_loss(m(x), y), 3)
    return peak.mb


# --- timing -------------------------------------------------------------------------


def time_steps(step: Callable[[], object], n: int) -> list[float]:
    """Milliseconds taken by each of n calls of step()."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def time_rounds(optimizers: dict[str, torch.optim.Optimizer], steps: int,
                warmup: int) -> dict[str, list[list[float]]]:
    """Each optimizer's step times (ms), round by round: ``steps`` in interleaved rounds.

    Each round gives every optimizer STEPS_PER_ROUND timed steps in turn; the order is
    rotated from round to round so no optimizer is always the one that runs first. The
    rounds are kept apart so that a ratio can be read within each one (:func:`round_ratios`):
    both sides of it ran within seconds of each other, under the same load.
    """
    for opt in optimizers.values():
        time_steps(opt.step, warmup)
    names = list(optimizers)
    rounds: dict[str, list[list[float]]] = {name: [] for name in names}
    gc.disable()  # as timeit does: no garbage collection pause inside a timed step
    try:
        done = 0
        while done < steps:
            n = min(STEPS_PER_ROUND, steps - done)
            shift = len(rounds[names[0]]) % len(names)
            for name in names[shift:] + names[:shift]:
                rounds[name].append(time_steps(optimizers[name].step, n))
            done += n
    finally:
        gc.enable()
    return rounds


def medians(rounds: dict[str, list[list[float]]]) -> dict[str, float]:
    """Each name's median step time over all its rounds of :func:`time_rounds`."""
    return {name: statistics.median(t for r in rs for t in r) for name, rs in rounds.items()}


def time_interleaved(optimizers: dict[str, torch.optim.Optimizer], steps: int, warmup: int) -> dict[str, float]:
    """Median step time (ms) of each optimizer, timed in interleaved rounds (:func:`time_rounds`)."""
    return medians(time_rounds(optimizers, steps, warmup))


def round_ratios(rounds: dict[str, list[list[float]]], name: str, reference: str) -> list[float]:
    """``name``'s median step time over ``reference``'s, in each round of :func:`time_rounds`: their spread shows how
    far the machine moved the ratio of the whole run's medians."""
    return [statistics.median(a) / statistics.median(b) for a, b in zip(rounds[name], rounds[reference])]


def measure_density(settings: Settings, density: float) -> list[Row]:
    """Time all optimizers side by side at one mask density; one Row per optimizer."""
    optimizers = {}
    for name in OPTIMIZERS:
        model = build_mlp(settings.widths)
        fill_gradients(model)
        optimizers[name] = make_optimizer(name, model, density)
        if name == COMPACT_VALUES:
            values_only_gradients(model, optimizers[name])  # type: ignore[arg-type]
    step_ms = time_interleaved(optimizers, settings.steps, settings.warmup)
    nbytes = {name: state_bytes(opt) for name, opt in optimizers.items()}
    del optimizers
    peaks = {name: peak_training_step_mb(settings.widths, name, density) for name in OPTIMIZERS}
    return [
        Row(
            density=density,
            optimizer=name,
            step_ms=step_ms[name],
            time_ratio=step_ms[name] / step_ms[BASELINE],
            state_bytes=nbytes[name],
            state_ratio=nbytes[name] / nbytes[BASELINE],
            peak_mb=peaks[name],
        )
        for name in OPTIMIZERS
    ]


def run_benchmark(settings: Settings) -> list[Row]:
    rows = []
    for density in DENSITIES:
        print(f"density {density:.0%}: timing {len(OPTIMIZERS)} optimizers ...", file=sys.stderr, flush=True)
        rows += measure_density(settings, density)
    return rows


# --- the report ---------------------------------------------------------------------


def format_table(rows: list[Row]) -> str:
    header = ["density", "optimizer", "step ms (median)", f"time vs {BASELINE}", "state bytes", f"state vs {BASELINE}",
              "training-step peak MB"]
    cells = [[f"{r.density:.0%}", r.optimizer, f"{r.step_ms:.2f}", f"{r.time_ratio:.2f}", f"{r.state_bytes:,}",
              f"{r.state_ratio:.3f}", f"{r.peak_mb:.1f}"] for r in rows]
    return markdown_table(header, cells, "rl" + "r" * 5)


def format_note(rows: list[Row]) -> str:
    """The honest reading of the table; every number in it comes from this run."""

    def at(name: str, density: float) -> Row:
        return next(r for r in rows if r.optimizer == name and r.density == density)

    sparse = [d for d in DENSITIES if d < 1.0]

    def ratios(name: str) -> str:
        return ", ".join(f"{at(name, d).time_ratio:.2f}x at {d:.0%}" for d in sparse)

    compact_state = ", ".join(f"{at(COMPACT, d).state_ratio:.1%} at {d:.0%}" for d in sparse)
    fast_5, values_5 = at(COMPACT_FUSED, 0.05).time_ratio, at(COMPACT_VALUES, 0.05).time_ratio

    def verdict(ratio: float) -> str:
        return "meets" if ratio <= 0.5 else "misses"
    masked = [r.time_ratio for r in rows if r.optimizer == MASKED]
    single = [r.time_ratio for r in rows if r.optimizer == SINGLE]
    return (
        f"**Reading the table.** Every ratio is to `{BASELINE}`, the fastest dense AdamW torch has. "
        f"`{COMPACT_FUSED}` (our one-pass kernel: read weight and gradient at each selected position, "
        f"update the moments, write the weight) took {ratios(COMPACT_FUSED)} of its step time with a dense "
        f"gradient: the target, <= 0.5x at 5%, it {verdict(fast_5)} in this run ({fast_5:.2f}x). Fed the "
        f"values-only gradient that `sparsify`'s defaults set up for float32 CPU linear layers "
        f"(`{COMPACT_VALUES}`: the gradient read in order, not gathered from a dense tensor), it took "
        f"{ratios(COMPACT_VALUES)}: the target it {verdict(values_5)} ({values_5:.2f}x). A random mask at 5% "
        f"still touches {1 - 0.95 ** 16:.0%} of the weight's 64-byte cache lines, which the kernel reads and "
        f"writes; gathering a dense gradient adds as many again. The reference `{COMPACT}` "
        f"(gather, a dozen elementwise operations, scatter) took {ratios(COMPACT)}. Both store two "
        f"float32 moments and one int32 index per selected entry: {compact_state} of AdamW's state. "
        f"`{MASKED}`, the dense-mask reference, took {min(masked):.2f} to {max(masked):.2f}x; torch's "
        f"single-tensor AdamW, the form the masked optimizers reproduce, {min(single):.2f} to {max(single):.2f}x. "
        "The training-step peak includes the dense gradients of every weight, which all of them need "
        "here (backward computes a full weight gradient even for a 1% mask)."
    )


def format_report(settings: Settings, n_params: int, rows: list[Row], machine: list[str],
                  loads: tuple[str, str]) -> str:
    """The markdown report: ``machine`` (``sparsity.sweep.machine_lines``, taken at the end of the
    run with the benchmark's thread count), the load at the start and end, the settings, table and note."""
    widths = "-".join(str(w) for w in settings.widths)
    return "\n".join(
        [
            "# Optimizer step: CompactAdamW and MaskedAdamW vs torch.optim.AdamW(fused=True)",
            "",
            *machine,
            load_line(loads, settings.threads),
            f"- model: MLP {widths}, Linear layers without bias, {n_params:,} parameters",
            f"- timing: median of {settings.steps} timed `opt.step()` calls per optimizer and density, "
            f"after {settings.warmup} warm-up steps, in interleaved rounds of {STEPS_PER_ROUND} steps; "
            "gradients pre-filled once, no forward/backward",
            f"- masks: `sparsity.masks.random(model, density, seed=0)`, weights only; lr={LR}, weight_decay={WEIGHT_DECAY}",
            "",
            format_table(rows),
            "",
            format_note(rows),
            "",
        ]
    )


# --- the command line ---------------------------------------------------------------


def parse_args(argv: list[str] | None, fast: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.optimizer_step",
        description="Step time and state bytes of MaskedAdamW vs torch.optim.AdamW (LAB_FAST=1: small and quick).",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=FAST_STEPS if fast else FULL_STEPS,
        help="timed steps per optimizer and density (default: %(default)s)",
    )
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--out", type=output_file, default=None, help="also write the report as markdown to this path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    fast = fast_mode()  # the entry point reads LAB_FAST once and passes it down
    args = parse_args(argv, fast)
    settings = Settings(
        widths=FAST_WIDTHS if fast else FULL_WIDTHS,
        steps=args.steps,
        warmup=FAST_WARMUP if fast else FULL_WARMUP,
        threads=args.threads,
    )
    with steadiness.TimingSession(settings.threads, 3 if fast else 30) as session:
        with frozen_heap():  # the per-measurement gc.collect() then walks the benchmark's objects only
            rows = run_benchmark(settings)
        session.finish()
        machine = [*machine_lines(command_line("benchmarks.optimizer_step", argv, fast)), *session.lines]
    n_params = count_parameters(build_mlp(settings.widths))
    emit(format_report(settings, n_params, rows, machine, session.loads), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
