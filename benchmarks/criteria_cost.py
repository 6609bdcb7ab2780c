"""How long does choosing the weights take? Seconds per criterion, per 10M parameters.

A mask criterion is paid once (or every K steps for dynamic masks), so its cost matters
next to the fine-tuning it saves. This script scores an MLP of about 10M parameters with
every criterion of ``sparsity.registry`` it is given (by default the ranking criteria),
turns the scores into a 5% mask with the ``top_k`` policy (``sparsity.config.select_mask``),
and reports the wall time of each part, normalised to 10M parameters.
Gradient criteria see ``--batches`` batches of 64 random inputs (one forward and
backward each); LIFT is timed with the exact SVD and with ``torch.svd_lowrank``.

Run from the repository root::

    PYTHONPATH=. python -m benchmarks.criteria_cost [--rank 64] [--batches 4] [--criteria NAME ...] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from benchmarks.optimizer_step import FULL_WIDTHS, build_mlp
from sparsity import registry
from sparsity.cli_args import output_file, positive_int
from sparsity.config import SparseConfig, select_mask
from sparsity.fastmode import fast_mode
from sparsity.registry import CriterionInputs, Scores, Selection
from sparsity.sweep import command_line, emit, machine_lines, markdown_table

FAST_WIDTHS = (128, 256, 256, 128, 128)
DENSITY = 0.05
CRITERIA = ("random", "magnitude", "gradient", "snip", "fisher", "movement", "lift")
"""The registered criteria timed by default (``--criteria`` names any other registered one)."""
LABELS = {"snip": "SNIP", "fisher": "Fisher"}


def make_batches(widths: tuple[int, ...], n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(64, widths[0], generator=gen), torch.randn(64, widths[-1], generator=gen)) for _ in range(n)]


def mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def criteria_to_time(model: nn.Module, data: list, rank: int,
                     names: Sequence[str] = CRITERIA) -> dict[str, Callable[[], Scores | Selection]]:
    """Each criterion, by its registry name, as a zero-argument call on this model (LIFT twice:
    with the exact SVD and with ``torch.svd_lowrank``)."""
    calls: dict[str, Callable[[], Scores | Selection]] = {}
    for name in names:
        variants = [(f"LIFT rank {rank} (exact SVD)", "svd"), (f"LIFT rank {rank} (svd_lowrank)", "lowrank")] \
            if name == "lift" else [(LABELS.get(name, name), "svd")]
        for label, method in variants:
            inputs = CriterionInputs(loss_fn=mse, batches=data, options={"rank": rank, "method": method})
            calls[label] = lambda name=name, inputs=inputs: registry.score(name, model, inputs)
    return calls


def seconds(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(widths: tuple[int, ...], rank: int, n_batches: int,
        names: Sequence[str] = CRITERIA) -> tuple[int, list[tuple[str, float, float]]]:
    model = build_mlp(widths)
    n_params = sum(p.numel() for p in model.parameters())
    config = SparseConfig(density=DENSITY, scope="global")
    rows = []
    for name, score in criteria_to_time(model, make_batches(widths, n_batches), rank, names).items():
        print(f"timing {name} ...", file=sys.stderr, flush=True)
        score_s, scores = seconds(score)
        select_s, _ = seconds(lambda: select_mask(model, scores, config))
        rows.append((name, score_s, select_s))
    return n_params, rows


def format_report(widths: tuple[int, ...], n_params: int, rows: list, rank: int, n_batches: int, command: str) -> str:
    per_10m = 10_000_000 / n_params
    lines = [
        "# Cost of choosing the weights: each criterion, scored and selected",
        "",
        *machine_lines(command),
        f"- model: MLP {'-'.join(map(str, widths))} without bias, {n_params:,} parameters; "
        f"gradient criteria on {n_batches} batches of 64; selection = global top-k at {DENSITY:.0%}",
        "",
        markdown_table(["criterion", "score s", "select s", "total s per 10M params"],
                       [[name, f"{score_s:.3f}", f"{select_s:.3f}", f"{(score_s + select_s) * per_10m:.3f}"]
                        for name, score_s, select_s in rows]),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    fast = fast_mode()  # the entry point reads LAB_FAST once and passes it down
    parser = argparse.ArgumentParser(prog="python -m benchmarks.criteria_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=positive_int, default=8 if fast else 64, help="LIFT rank (default %(default)s)")
    parser.add_argument("--batches", type=positive_int, default=4, help="batches for gradient criteria (default %(default)s)")
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), metavar="NAME",
                        help="registered criteria to time (default: %(default)s)")
    parser.add_argument("--out", type=output_file, default=None, help="also write the report to this markdown file")
    args = parser.parse_args(argv)
    try:
        for name in args.criteria:
            registry.get_criterion(name)
    except ValueError as err:
        parser.error(str(err))
    widths = FAST_WIDTHS if fast else FULL_WIDTHS
    n_params, rows = run(widths, args.rank, args.batches, args.criteria)
    report = format_report(widths, n_params, rows, args.rank, args.batches,
                           command_line("benchmarks.criteria_cost", argv, fast))
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
