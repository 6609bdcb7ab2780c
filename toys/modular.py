"""Modular subnetworks: a compositional multi-task world with known modules, and the three experiments on it.

Networks trained on compositional tasks split them into separate subnetworks: ablating one
damages only its own function, pretraining makes that structure more consistent, and
freezing a task's core parameters protects it while another task is learnt. Three
experiments (Csordás et al. 2021; Lepori et al. 2023; core-parameter isolation, Wang et al.
2025), run by :func:`run` and the CLI ``python -m toys.modular --json``. One concept per module:

* :mod:`toys.modular_world`: the world (tasks made of parities of primitives) and the
  network (a shared trunk, one head per task);
* :mod:`toys.modular_training`: training, accuracy and the learned task mask;
* :mod:`toys.modular_consistency`: experiments 1 and 2, modularity and its consistency
  across seeds;
* :mod:`toys.modular_isolation`: experiment 3, core isolation;
* :mod:`toys.modular_report`: the whole experiment, its summary and tables;
* :mod:`toys.modular_plots`: its figures.

This module is the command line; callers import from the module that defines what they use.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from sparsity.cli_args import nonnegative_int, positive_int, random_seed
from sparsity.fastmode import fast_mode
from sparsity.threads import use_threads
from toys.modular_report import format_report, run
from toys.modular_world import default_config


def main(argv: list[str] | None = None) -> int:
    base = default_config(fast=fast_mode())
    parser = argparse.ArgumentParser(
        prog="python -m toys.modular",
        description="Modular subnetworks: find them, ablate them, protect them "
                    "(Csordás et al. 2021; Wang et al. 2025).",
    )
    parser.add_argument("--seeds", type=positive_int, default=base.n_seeds, help="seeds per arm (default %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=base.steps, help="training steps per run (default %(default)s)")
    parser.add_argument("--mask-steps", type=positive_int, default=base.mask_steps,
                        help="mask-learning steps (default %(default)s)")
    parser.add_argument("--overlap", type=nonnegative_int, default=base.overlap, help="features shared by neighbouring groups (default: %(default)s)")
    parser.add_argument("--ablation", choices=("zero", "mean"), default=base.ablation,
                        help="an ablated unit is set to zero or to its mean (default: %(default)s)")
    parser.add_argument("--seed", type=random_seed, default=base.seed, help="the first seed (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    use_threads()
    try:
        cfg = replace(base, n_seeds=args.seeds, steps=args.steps, mask_steps=args.mask_steps, overlap=args.overlap,
                      ablation=args.ablation, seed=args.seed)
    except ValueError as err:
        parser.error(str(err))
    report = run(cfg, progress=not args.no_progress)
    if args.json:
        json.dump(report.summary(), sys.stdout, indent=2)
        print()
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
