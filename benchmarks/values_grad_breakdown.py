"""Where does a values-only gradient step's time go, and how low could it go on this model?

``sparsity.values_grad`` drops the dense weight gradient, so its step saves one of the three
matmuls per linear layer (forward, input gradient, weight gradient) and pays for a sampled product
instead. A "two thirds of full's step" estimate counts only those matmuls; a transformer's step also
has attention, norms, GELUs and the loss, which every method pays alike. This script measures the
step phase by phase for three variants of the same model and batch, in interleaved rounds
(``optimizer_step.time_rounds``):

- ``full``: every parameter trains, ``torch.optim.AdamW(fused=True)`` (``scaleup_memory``'s baseline);
- ``sparse 5% values-grad``: ``scaleup_memory``'s row of that name (``sparsify`` with the values-only gradient);
- ``values-grad, no weight gradient (floor)``: the same step with the selected entries' gradient not computed
  (the anchors receive zeros; a timing what-if, not training): the step time that any values-only gradient could
  reach at best on this model, whatever its kernel. The layer inputs that the kernel rebuilds block by block inside
  the product (after a GELU or a LayerNorm, ``sparsity.rebuilt_inputs.RowStep``) are then not rebuilt either. The
  sampled product's share of the step is the difference.

Per variant: the median step time, and the medians of its forward (the loss), backward (with ``zero_grad``) and
optimizer step; for ``values-grad`` also the time spent inside the sampled product's calls
(``values_grad.selected_weight_grad``, timed in place while this script runs). The steps run in the lab's one loop
(``sparsity.train.fit``), whose hooks mark where backward and the optimizer step end. ``LAB_FAST=1``: the ``micro``
preset, a small batch, a few steps. Run from the repository root::

    PYTHONPATH=. python -m benchmarks.values_grad_breakdown [--preset P] [--batch B] [--tokens T] [--steps N]
        [--threads T] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from benchmarks import steadiness
from benchmarks.optimizer_step import medians, round_ratios, time_rounds
from benchmarks.scaleup_memory import FULL, SPARSE_VALUES, matched_rank, prepare, random_batch
from scaleup import gpt
from scaleup import tasks as tk
from scaleup.memory import frozen_heap
from sparsity import rebuilt_inputs, values_grad
from sparsity.cli_args import output_file, positive_int
from sparsity.fastmode import fast_mode
from sparsity.sweep import command_line, emit, load_line, machine_lines, markdown_table
from sparsity.train import fit

FLOOR = "values-grad, no weight gradient (floor)"
VARIANTS = (FULL, SPARSE_VALUES, FLOOR)
PHASES = ("forward", "backward", "optimizer", "sampled product")


@dataclass
class PhasedStep:
    """One variant's training step as the ``step(n)`` callable ``time_rounds`` times: the lab's one loop
    (``sparsity.train.fit``), itself the hook that marks where each phase ends, recording each phase (ms).

    ``skip_sampled``: the floor variant; the sampled product is then replaced by zeros while this step runs."""

    model: nn.Module
    opt: torch.optim.Optimizer
    batch: tk.Batch
    skip_sampled: bool = False
    phases: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    _marks: list[float] = field(default_factory=list)

    def loss(self, model: nn.Module, batch: tk.Batch) -> torch.Tensor:
        self._marks[:] = [time.perf_counter()]
        loss = tk.loss(model, batch)
        self._marks.append(time.perf_counter())  # forward done; fit then clears the gradients and runs backward
        return loss

    def before_step(self, state: object) -> None:
        self._marks.append(time.perf_counter())

    def after_step(self, state: object) -> None:
        self._marks.append(time.perf_counter())

    def step(self, steps: int = 1) -> None:
        for _ in range(steps):
            with sampled_product(self.skip_sampled) as spent:
                fit(self.model, self.opt, self.loss, 1, batches=lambda _: self.batch, hooks=[self])
            a, b, c, d = self._marks
            for name, seconds in zip(PHASES, (b - a, c - b, d - c, sum(spent))):
                self.phases[name].append(seconds * 1e3)


@contextlib.contextmanager
def sampled_product(skip: bool) -> Iterator[list[float]]:
    """While active, ``values_grad.selected_weight_grad`` (what the values-only layers' backward calls) records each
    call's seconds in the yielded list or, with ``skip``, returns zeros of the right size without computing."""
    real = values_grad.selected_weight_grad
    spent: list[float] = []

    def timed(grad_out: torch.Tensor, x: torch.Tensor, flat: torch.Tensor, how: str = "sampled",
              step: rebuilt_inputs.RowStep | None = None) -> torch.Tensor:
        if skip:
            return torch.zeros(flat.numel(), dtype=grad_out.dtype, device=grad_out.device)
        start = time.perf_counter()
        out = real(grad_out, x, flat, how, step)
        spent.append(time.perf_counter() - start)
        return out

    values_grad.selected_weight_grad = timed
    try:
        yield spent
    finally:
        values_grad.selected_weight_grad = real


@dataclass(frozen=True)
class Row:
    """One variant: median step (ms), phase medians (ms), step over full's, and that ratio's range within rounds."""

    variant: str
    step_ms: float
    phases_ms: dict[str, float]
    vs_full: float
    rounds: tuple[float, float]


def measure(preset: str, batch_size: int, tokens: int, steps: int, warmup: int) -> list[Row]:
    """Each variant's row: the same model (``scaleup.gpt`` preset, seed 0) and random batch, interleaved rounds."""
    world = tk.World()
    base = gpt.build(preset, world.vocab_size, tokens, seed=0)
    batch = random_batch(world.vocab_size, batch_size, tokens, "cpu")
    rank = matched_rank(base)
    steppers = {}
    for variant in VARIANTS:
        model, opt, _ = prepare(SPARSE_VALUES if variant == FLOOR else variant, base, rank)
        steppers[variant] = PhasedStep(model, opt, batch, skip_sampled=variant == FLOOR)
    rounds = time_rounds(steppers, steps, warmup)  # type: ignore[arg-type]
    step_ms = medians(rounds)
    rows = []
    for variant, stepper in steppers.items():
        timed = {p: t[warmup:] for p, t in stepper.phases.items()}  # the warm-up steps were recorded first
        ratios = round_ratios(rounds, variant, FULL)
        rows.append(Row(variant, step_ms[variant], {p: statistics.median(t) for p, t in timed.items()},
                        step_ms[variant] / step_ms[FULL], (min(ratios), max(ratios))))
    return rows


def format_report(rows: list[Row], facts: str, command: str, loads: tuple[str, str], threads: int,
                  steady: Sequence[str]) -> str:
    """The markdown report: machine, load and steadiness lines, the table, and a reading of the floor."""
    by = {r.variant: r for r in rows}
    full, values, floor = by[FULL], by[SPARSE_VALUES], by[FLOOR]
    table = markdown_table(
        ["variant", "step ms (median)", "vs full", "within single rounds", "forward ms", "backward ms",
         "optimizer ms", "sampled product ms"],
        [[r.variant, f"{r.step_ms:.1f}", f"{r.vs_full:.3f}", f"{r.rounds[0]:.3f} to {r.rounds[1]:.3f}",
          f"{r.phases_ms['forward']:.1f}", f"{r.phases_ms['backward']:.1f}", f"{r.phases_ms['optimizer']:.1f}",
          f"{r.phases_ms['sampled product']:.1f}" if r.variant == SPARSE_VALUES else "-"] for r in rows],
        "lrrrrrrr")
    above = values.step_ms - floor.step_ms
    reading = (
        f"**Reading.** Without the selected entries' gradient the step takes {floor.vs_full:.3f}x full's: the forward "
        f"({floor.phases_ms['forward']:.1f} ms against full's {full.phases_ms['forward']:.1f}), and a backward "
        f"({floor.phases_ms['backward']:.1f} ms against full's {full.phases_ms['backward']:.1f}) of the input "
        "gradients and the attention's, norms' and GELUs' own backward (the layer inputs that the product rebuilds "
        "block by block are not rebuilt there). That is the lowest a "
        "values-only gradient can reach on this model and batch, whatever its kernel. The values-only gradient steps "
        f"in {values.vs_full:.3f}x full's, {above:.1f} ms above the floor ({above / full.step_ms:.3f} of full's step); "
        f"its calls of the sampled product took {values.phases_ms['sampled product']:.1f} ms per step. Full's dense "
        f"weight gradients cost it {full.step_ms - floor.step_ms:.1f} ms over the floor (their matmuls and the dense "
        "AdamW step).")
    return "\n".join([
        "# Values-only gradient: where the step goes, and its floor",
        "",
        *machine_lines(command),
        load_line(loads, threads),
        *steady,
        f"- {facts}",
        "- timing: median per variant over interleaved rounds (`optimizer_step.time_rounds`); phases: medians of "
        "each phase over the same steps; `sampled product`: the summed time of `values_grad.selected_weight_grad`'s "
        "calls within a step",
        "",
        table,
        "",
        reading,
        "",
    ])


def parse_args(argv: list[str]) -> argparse.Namespace:
    fast = fast_mode()
    p = argparse.ArgumentParser(prog="python -m benchmarks.values_grad_breakdown",
                                description="Phases of a values-only gradient step against full fine-tuning's, and "
                                            "the step without any weight gradient (its floor).")
    p.add_argument("--preset", default="micro" if fast else "small", choices=tuple(gpt.PRESETS),
                   help="scaleup.gpt preset (default %(default)s)")
    p.add_argument("--batch", type=positive_int, default=4 if fast else 32,
                   help="sequences per batch (default %(default)s)")
    p.add_argument("--tokens", type=positive_int, default=16 if fast else 64,
                   help="tokens per sequence (default %(default)s)")
    p.add_argument("--steps", type=positive_int, default=3 if fast else 40,
                   help="timed steps per variant (default %(default)s)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default %(default)s)")
    p.add_argument("--out", type=output_file, default=None, help="also write the report as markdown to this path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    fast = fast_mode()
    facts = (f"model: GPT `{args.preset}`, float32, CPU; batch {args.batch} x {args.tokens} random tokens; "
             "5% random entries of every block matrix")
    with steadiness.TimingSession(args.threads, 3 if fast else 30) as session:
        with frozen_heap():
            rows = measure(args.preset, args.batch, args.tokens, args.steps, 1 if fast else 3)
        session.finish()
        report = format_report(rows, facts, command_line("benchmarks.values_grad_breakdown", argv, fast),
                               session.loads, args.threads, session.lines)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
