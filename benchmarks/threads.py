"""Does a second torch thread pay for the lab's models? One training step on 1 thread vs more, per GPT preset.

`sparsity.threads` gives a model below ``MANY_THREADS_FROM`` parameters one thread. This script
measures the case for it: one AdamW step (forward, backward, update) of each GPT preset at a batch
of 32 x 64 tokens, timed on one thread and on ``--threads`` threads in turn, in one process (so a
change in the machine's load hits both alike), and reports the median of each and their ratio.
Above 1.00x the extra threads made the step slower. Run it on a quiet machine and on a busy one:
the load average is in the report.

Run from the repository root::

    PYTHONPATH=. python -m benchmarks.threads [--presets micro tiny small] [--threads 2] [--reps 5] [--out PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from scaleup import gpt
from sparsity.cli_args import output_file, positive_int
from sparsity.fastmode import fast_mode
from sparsity.sweep import busy_warning, command_line, emit, machine_lines, markdown_table
from sparsity.threads import MANY_THREADS_FROM, choose_threads
from sparsity.train import fit

BATCH, TOKENS, VOCAB = 32, 64, 64


def step_of(preset: str) -> tuple[int, Callable[[], None]]:
    """A preset's parameter count and a function that takes one AdamW step on a fixed random batch."""
    model = gpt.build(preset, vocab_size=VOCAB, block_size=TOKENS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, VOCAB, (BATCH, TOKENS), generator=torch.Generator().manual_seed(0))

    def loss(net: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(net(batch).reshape(-1, VOCAB), batch.reshape(-1))

    def step() -> None:
        fit(model, opt, loss, 1, batches=lambda _: tokens)

    return sum(p.numel() for p in model.parameters()), step


def time_threads(step: Callable[[], None], counts: Sequence[int], reps: int) -> dict[int, float]:
    """Median seconds of one step on each thread count, the counts taken in turn ``reps`` times (one
    untimed step after each switch)."""
    before = torch.get_num_threads()
    seconds: dict[int, list[float]] = {n: [] for n in counts}
    try:
        for _ in range(reps):
            for n in counts:
                torch.set_num_threads(n)
                step()
                start = time.perf_counter()
                step()
                seconds[n].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return {n: statistics.median(s) for n, s in seconds.items()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", choices=tuple(gpt.PRESETS), default=["micro"] if fast_mode()
                        else ["micro", "tiny", "small"], help="GPT presets to time (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=2, help="the thread count set against one (default: %(default)s)")
    parser.add_argument("--reps", type=positive_int, default=1 if fast_mode() else 5,
                        help="timed steps per preset and thread count; the median is reported (default: %(default)s)")
    parser.add_argument("--out", type=output_file, default=None, help="also write the report as markdown to this path")
    args = parser.parse_args(argv)
    if (warning := busy_warning(args.threads)) is not None:
        print(warning, file=sys.stderr, flush=True)
    rows = []
    for preset in args.presets:
        print(f"timing {preset} ...", file=sys.stderr, flush=True)
        n_params, step = step_of(preset)
        ms = {n: 1000 * s for n, s in time_threads(step, (1, args.threads), args.reps).items()}
        rows.append([preset, f"{n_params:,}", f"{ms[1]:.1f}", f"{ms[args.threads]:.1f}",
                     f"{ms[args.threads] / ms[1]:.2f}x", str(choose_threads(n_params, environ={}))])
    report = "\n".join([
        f"# One training step on 1 vs {args.threads} torch threads, per GPT preset",
        "",
        *machine_lines(command_line("benchmarks.threads", argv)),
        f"- one AdamW step at batch {BATCH} x {TOKENS} tokens; median of {args.reps} step(s) per cell, "
        "the two thread counts taken in turn in one process",
        "",
        markdown_table(["preset", "parameters", "1 thread ms", f"{args.threads} threads ms",
                        f"{args.threads} threads / 1", "sparsity.threads gives"], rows),
        "",
        f"`sparsity.threads` gives one thread below {MANY_THREADS_FROM:,} parameters and every usable CPU from "
        "there on (`LAB_THREADS` overrides both).",
    ])
    emit(report + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
