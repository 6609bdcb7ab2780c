"""The controlled benchmark: full fine-tuning vs sparse fine-tuning (every criterion) vs LoRA.

One pretrained model (the lab's GPT, or a Hugging Face architecture with ``--model``:
``scaleup.hf_model``; ``scaleup.pretrain``), one target task (``scaleup.tasks``), and every
method fine-tunes a copy of it under the same conditions (``scaleup.finetune``), with a
learning-rate sweep per method whose value is chosen on the target's *validation* split
(the smallest rate within ``lr_tie`` of the best accuracy: ``scaleup.results.best_lr``);
the test split is only reported. Each run measures learning (target test accuracy),
forgetting (retention: mean test accuracy on the source tasks), where the update went
(update sparsity and relative rank per layer type, ``sparsity.metrics``) and the costs
(trainable count, optimizer-state bytes, selection and training time, peak memory).
The same benchmark runs unchanged in the toy worlds too (``--world modular`` or
``teacher_student``; the seam is ``scaleup.bench_world``): toy, tiny and small GPT on a CPU,
``mid`` on a GPU, one table and one frontier per scale.

Methods (registered objects, ``scaleup.methods``): ``full``, ``lora`` (rank-r adapters on every block
matrix), ``2:4`` (the N:M pattern chosen by magnitude), and a mask chosen by any criterion of
``sparsity.registry`` at a budget: random, magnitude, gradient, fisher, snip, movement,
lift (LIFT principal weights, Liu et al. 2025), l1_discovered (the entries an L1-to-init
run moved, ranked by how far; Liu 2026's probe), middle_blocks (random entries of the
middle blocks' matrices), rosa (RoSA: a LoRA adapter plus Fisher-chosen entries at LoRA's count,
Nikdan et al. 2024), spiel (SpIEL's drop-and-grow in compact storage, Ansell et al. 2024), and any
criterion registered later. Budgets: ``lora_equal``
(LoRA's ``r * (m + n)`` entries per matrix) and densities (the same share of every matrix).

The module is the command line and the sweep (:func:`run`): each finished run is appended
to ``results.jsonl`` in the output folder at once (``scaleup.results``), so a killed
benchmark loses no finished run and a restarted one skips them; the summary
(``summary.csv``, ``summary.json``, ``report.md``, figures; ``scaleup.report``) is rebuilt
from that file, also without running anything (``--report``; ``--md FILE`` writes the
markdown elsewhere too, keeping a hand-written ``## Notes`` section). The learning rate is
chosen on seed 0 and reused for the other seeds unless ``sweep_all_seeds`` (then the mean
over seeds decides): the sweep costs ``len(lrs)`` runs per method instead of ``len(lrs) * seeds``.
The runs are independent: ``--workers N`` runs them on a local process pool, ``--executor ray``
(``--ray-address`` for a cluster) on Ray (``scaleup.grid``, ``sparsity.executor``); only this
process writes results, and the rows are those of a serial run on as many threads.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from scaleup import bench_world as bw
from scaleup import gpt, grid, hf_model
from scaleup import tasks as tk
from scaleup.bench_config import BenchConfig, default_config, prepare
from scaleup.method_dynamic import LiftSettings, RigLSettings
from scaleup.methods import METHODS, check_methods, known_methods
from scaleup.report import print_report, write_summary
from scaleup.results import check_one_checkpoint, store
from sparsity.cli_args import finite_list, finite_nonnegative, nonnegative_int, output_file, output_folder, positive_int
from sparsity.executor import EXECUTORS, Executor, Worker, check_executor
from sparsity.fastmode import fast_mode
from sparsity.sweep import RESULTS, command_line, machine
from sparsity.train import RIGL_SETTINGS
from sparsity.threads import use_threads


def run(cfg: BenchConfig, out: str | Path, methods: Sequence[str] = METHODS, *, cache_dir: str | Path | None = None,
        device: str = "cpu", progress: bool = True, stop_after: int | None = None, workers: int = 1,
        executor: str = "process", address: str | None = None, threads: int = 1) -> int:
    """Run every missing cell of the benchmark, appending each to ``out/results.jsonl``; write the summary.

    Returns the number of runs done by this call. ``stop_after`` stops after that many runs
    (a stand-in for a kill, for tests). ``workers`` > 1 runs the cells on that many workers
    (``executor``: "process", a local process pool, or "ray", Ray actors on the cluster at
    ``address``, a local instance if None), each on ``threads`` torch threads; the rows are the
    same as a serial run's on as many threads (timings aside). The order is ``scaleup.grid``'s.
    """
    methods = check_methods(methods)
    check_executor(executor, workers)
    unbudgeted = [m for m in methods if not cfg.budgets(m)]
    if unbudgeted:
        raise ValueError(f"no budget for the methods {unbudgeted}: give a density or lora_equal=True")
    out = Path(out)
    results = store(out, cfg)
    setup = prepare(cfg, cache_dir=cache_dir, device=device, progress=progress)  # pretrains (once) before any worker
    check_one_checkpoint(results.load(), setup.fingerprint, out)
    (out / "before.json").write_text(json.dumps(setup.before))
    pairs = [(m, b) for m in methods for b in cfg.budgets(m)]
    worker = Worker(grid.worker_setup, (cfg, cache_dir, device), partial(grid.run_row, progress=progress and workers == 1))
    with Executor(worker, workers, executor, address=address, threads=threads, state=setup) as pool:
        done, complete = grid.run_grid(cfg, pairs, results, pool, stop_after=stop_after, progress=progress)
    if complete:
        write_summary(out, methods)
    return done


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag's type checks its value, so a bad flag fails before any work."""
    p = argparse.ArgumentParser(prog="python -m scaleup.compare",
                                description="Full vs sparse (every criterion) vs LoRA fine-tuning of a small GPT.")
    p.add_argument("--world", default="gpt", choices=tuple(bw.WORLDS),
                   help="the task world (scaleup.bench_world): the GPT's token tasks or a toy MLP's (default: %(default)s)")
    p.add_argument("--preset", default=None,
                   help=f"model size (default: the world's; the gpt world's: {', '.join(gpt.PRESETS)}, default tiny)")
    p.add_argument("--model", type=model_name, default=hf_model.LAB_GPT,
                   help=f"the gpt world's model: {hf_model.LAB_GPT} (the lab's GPT), {', '.join(hf_model.BUILTIN)} "
                        "(a Hugging Face family at the preset's shape) or a local folder / config.json (default: %(default)s)")
    p.add_argument("--target", default=None,
                   help=f"target task (default: the world's first; the gpt world's: {', '.join(tk.TARGET_TASKS)})")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated, from {','.join(known_methods())} (any registered criterion); default: all "
                        f"{len(METHODS)} of %(default)s")
    p.add_argument("--density", type=densities, default=None,
                   help="comma-separated densities, e.g. 0.01,0.05 (default 0.01,0.05); 'none' for the "
                        "LoRA-equal budget alone")
    p.add_argument("--no-lora-equal", action="store_true", help="skip the LoRA-equal budget")
    p.add_argument("--seeds", type=positive_int, default=None,
                   help="seeds per method and budget (default: BenchConfig.seeds, 3; 1 with LAB_FAST=1)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="fine-tuning steps per run (default: BenchConfig.steps, 300; 30 with LAB_FAST=1)")
    p.add_argument("--out", type=output_folder, required=True,
                   help="the results folder: results.jsonl (a rerun resumes it), the report and figures")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where to train (default: cuda where there is one, else cpu)")
    for kind in ("full", "sparse", "lora"):
        p.add_argument(f"--lrs-{kind}", type=finite_list, default=None, metavar="LRS",
                       help=f"comma-separated learning-rate grid of {kind} fine-tuning "
                            f"(default: BenchConfig.lrs_{kind})")
    p.add_argument("--sweep-all-seeds", action="store_true",
                   help="run every lr on every seed (the frontier protocol) and choose the lr on their mean")
    p.add_argument("--eval-every", type=nonnegative_int, default=None, metavar="N",
                   help="trace the graded metrics every N steps of each run (the frontier's points; 0: only at the end)")
    p.add_argument("--lift-eps", type=finite_nonnegative, default=None, metavar="EPS",
                   help="lift_reselect's Adam epsilon added before the bias correction, as LIFT's optimizer "
                        "(1e-6 in its configs); default: PyTorch's AdamW")
    p.add_argument("--rigl", choices=tuple(RIGL_SETTINGS), default="paper",
                   help="the rigl row's schedule: 'paper' (Evci et al. 2020: swaps end at 0.75 of the steps, no weight "
                        "update on a swap step, counts floored) or 'lab-2025' (the lab's first RigL, which made the "
                        "committed RigL rows: to resume their folders); default paper")
    p.add_argument("--report", action="store_true", help="only rebuild the summary from the results file")
    p.add_argument("--md", type=output_file, default=None, help="also write the report's markdown to this file")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads of this process, and of each worker (default 1) with --workers; without it this "
                        "process takes sparsity.threads' choice: LAB_THREADS, else 1 below 2M parameters")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="run the independent cells on this many workers (default 1: in this process, in order)")
    p.add_argument("--executor", choices=EXECUTORS, default="process",
                   help='with --workers: a local process pool, or Ray actors (pip install -e ".[ray]"); default: %(default)s')
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="with --executor ray: the cluster to join ('auto': the one `ray start` made on this "
                        "machine); default a local Ray instance")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def densities(text: str) -> tuple[float, ...]:
    """``--density``'s type: comma-separated densities, or ``none`` (no density budget)."""
    return () if text.strip().lower() == "none" else finite_list(text)


def model_name(text: str) -> str:
    """``--model``'s type: a name ``scaleup.hf_model.check_model`` accepts (argparse reports its error)."""
    try:
        return hf_model.check_model(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The BenchConfig fields the command line sets."""
    overrides: dict[str, Any] = {}
    if args.density is not None:
        overrides["densities"] = args.density
    for kind in ("full", "sparse", "lora"):
        if (grid := getattr(args, f"lrs_{kind}")) is not None:
            overrides[f"lrs_{kind}"] = grid
    if args.no_lora_equal:
        overrides["lora_equal"] = False
    if args.model != hf_model.LAB_GPT:
        overrides["model"] = args.model
    for name in ("seeds", "steps", "eval_every"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.lift_eps is not None:
        overrides["lift"] = LiftSettings(eps=args.lift_eps)
    if args.sweep_all_seeds:
        overrides["sweep_all_seeds"] = True
    overrides["rigl"] = RigLSettings(**RIGL_SETTINGS[args.rigl])
    if "steps" in overrides:
        overrides.setdefault("warmup", max(0, overrides["steps"] // 10))
    return overrides


def _check_scale_out(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Scale-out flags that only make sense together, and Ray installed where it is asked for."""
    if args.ray_address is not None and args.executor != "ray":
        parser.error("argument --ray-address: needs --executor ray")
    if args.executor == "ray" and args.workers < 2:
        parser.error("argument --executor: ray needs --workers 2 or more (one worker runs in this process)")
    try:
        check_executor(args.executor, args.workers)
    except ImportError as e:
        parser.error(f"argument --executor: {e}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        methods = check_methods(m.strip() for m in args.methods.split(",") if m.strip())
    except ValueError as e:
        parser.error(f"argument --methods: {e}")
    if args.report:
        if not (args.out / "config.json").exists():
            parser.error(f"--report: {args.out} holds no benchmark (no config.json)")
        write_summary(args.out, methods)
        print_report(args.out, args.md)
        return 0
    _check_scale_out(parser, args)
    fast = fast_mode()  # the entry point reads LAB_FAST once and passes it down
    try:
        cfg = default_config(args.preset, fast=fast, target=args.target, world_kind=args.world, **_overrides(args))
        store(args.out, cfg)  # refuses a folder of another config before anything in it is written
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    else:
        use_threads(gpt.approx_parameters(cfg.preset) if args.world == "gpt" else None)
    (args.out / "machine.json").write_text(json.dumps(machine(args.device)))
    if args.device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = True
    if not (args.out / "command.txt").exists():  # fast mode changes the defaults (one lr, ...): command_line says so
        (args.out / "command.txt").write_text(command_line("scaleup.compare", sys.argv[1:] if argv is None else argv,
                                                                  fast))
    pairs = [(m, b) for m in methods for b in cfg.budgets(m)]
    print(f"scaleup.compare: {grid.total_runs(cfg, pairs)} runs in all ({len(pairs)} method-budget pairs x learning "
          f"rates x {cfg.seeds} seed(s)); those already in {args.out / RESULTS} are skipped", flush=True)
    run(cfg, args.out, methods, device=args.device, progress=not args.no_progress, workers=args.workers,
        executor=args.executor, address=args.ray_address, threads=args.threads or 1)
    print_report(args.out, args.md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
