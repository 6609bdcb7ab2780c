"""The invariant fixtures: what tests/test_invariant.py compares, and how a set is recorded.

The refactor onto the spine (issue 12) promised to keep every number bit for bit. The fixtures are the
outputs of the pre-refactor tree (main at ``PRE_REFACTOR``) for a few fixed commands, on one CPU thread;
the test runs the same commands on today's tree and compares. A CPU computation's rounding depends on
the torch build, the instruction set torch dispatches to and the CPU itself (the BLAS library takes
different code paths on different vendors' chips), so a set holds only on the machine kind that
recorded it: sets live in ``tests/data/invariant/<machine kind>/``, and the test skips, naming the
kinds it has, where none matches.

To record a set for the machine you are on, from the pre-refactor tree::

    git worktree add /tmp/pre-refactor af9f1ac
    PYTHONPATH=. python tests/invariant_fixtures.py /tmp/pre-refactor
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from sparsity.sweep import cpu_name

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "invariant"
PRE_REFACTOR = "af9f1ac"

COMMANDS = {
    "teacher_student_lam0.001.json": (["-m", "toys.teacher_student", "--lam", "0.001", "--json"], False),
    "teacher_student_lam0.json": (["-m", "toys.teacher_student", "--lam", "0", "--json"], False),
    "modular_fast.json": (["-m", "toys.modular", "--json"], True),
}
"""Fixture file -> (the Python command line that prints it, whether it runs in fast mode)."""

CELLS = [("full", "all", 1e-3), ("lora", "lora_equal", 1e-2), ("lift", "d0.05", 1e-2),
         ("magnitude", "lora_equal", 1e-2), ("l1_discovered", "d0.05", 1e-2), ("2:4", "2:4", 1e-2)]
"""The tiny GPT's fine-tuning cells compared metric for metric: (method, budget, learning rate), seed 0."""

# Runs in the tree on PYTHONPATH, before the refactor (scaleup.compare) or after it (scaleup.bench_config and
# scaleup.finetune): the benchmark's fast-mode settings on the tiny preset (300 pretraining steps, 30 steps).
CELLS_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
try:
    from scaleup import bench_config as bc, finetune as ft
    from scaleup.bench_config import L1Settings
    l1 = dict(l1=L1Settings(lam=1e-4))
except ImportError:
    from scaleup import compare as bc
    ft = bc
    l1 = dict(l1_lam=1e-4)
cfg = bc.default_config("tiny", densities=(0.05,), seeds=1, steps=30, warmup=3, pretrain_steps=300, **l1)
setup = bc.prepare(cfg, progress=False)
rows = [ft.run_cell(setup, method, budget, lr, 0) for method, budget, lr in json.loads(sys.argv[1])]
print(json.dumps(rows, indent=1, sort_keys=True))
"""
CELLS_FILE = "scaleup_tiny_cells.json"
VOLATILE = ("select_s", "train_s", "peak_mb")
"""Row keys that measure the machine (time, memory), not the computation."""


def machine_kind() -> dict[str, str]:
    """What decides a CPU computation's rounding here: torch's build and the CPU (model, instruction set)."""
    return {"torch": torch.__version__, "cpu": cpu_name()}


def kind_folder(kind: dict[str, str]) -> Path:
    """``tests/data/invariant/<torch>_<cpu>``, the CPU's words joined by dashes."""
    return DATA / f"{kind['torch']}_{re.sub(r'[^A-Za-z0-9.+]+', '-', kind['cpu']).strip('-')}"


def run(tree: Path, args: list[str], fast: bool) -> str:
    """The stdout of ``python ARGS`` run in ``tree`` on one thread (a failure raises with its stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(tree),
           "LAB_FAST": "1" if fast else "0"}
    done = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"`python {' '.join(args)}` failed in {tree}:\n{done.stderr[-2000:]}")
    return done.stdout


def cell_rows(tree: Path) -> list[dict]:
    """The :data:`CELLS` fine-tuned in ``tree`` (its pretrained model from the lab's cache): one row each."""
    return json.loads(run(tree, ["-c", CELLS_SCRIPT, json.dumps(CELLS)], fast=True))


def record(tree: Path) -> Path:
    """Write this machine kind's set from ``tree`` (a checkout of :data:`PRE_REFACTOR`); returns its folder."""
    kind = machine_kind()
    folder = kind_folder(kind)
    folder.mkdir(parents=True, exist_ok=True)
    for name, (args, fast) in COMMANDS.items():
        (folder / name).write_text(run(tree, args, fast))
    rows = [{k: v for k, v in row.items() if k not in VOLATILE} for row in cell_rows(tree)]
    (folder / CELLS_FILE).write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    kind.update(threads="1", recorded_from=commit.stdout.strip() or str(tree),
                commands={name: f"{'LAB_FAST=1 ' if fast else ''}OMP_NUM_THREADS=1 python {' '.join(args)}"
                          for name, (args, fast) in COMMANDS.items()}
                | {CELLS_FILE: "tests/invariant_fixtures.py CELLS_SCRIPT (the tiny GPT, fast-mode settings)"})
    (folder / "machine.json").write_text(json.dumps(kind, indent=1) + "\n")
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1], "toys").is_dir():
        sys.exit("usage: PYTHONPATH=. python tests/invariant_fixtures.py PRE_REFACTOR_CHECKOUT "
                 f"(a worktree of {PRE_REFACTOR})")
    print(f"recorded {record(Path(sys.argv[1]).resolve())}")
