"""What every benchmark report shares: the reproducing command, the machine facts, the output.

A benchmark number means little without the command, the torch version, the thread count
and how busy the machine was, so every report starts with these lines.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import torch

from sparsity.fastmode import fast_mode


def command_line(module: str, argv: Sequence[str]) -> str:
    """The command that reproduces this run, the fast-mode switch included."""
    prefix = "LAB_FAST=1 " if fast_mode() else ""
    return f"{prefix}PYTHONPATH=. python -m {module} {shlex.join(argv)}".rstrip()


def load_average() -> str:
    """The 1-minute load average: above the thread count, other jobs competed for the CPU."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


def machine_lines(command: str) -> list[str]:
    """Markdown bullet lines: torch version, device, threads, load, date and the command."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return [
        f"- torch {torch.__version__}; device: {device}; {torch.get_num_threads()} torch CPU threads "
        f"of {os.cpu_count()} logical CPUs; 1-minute load average {load_average()}",
        f"- date: {datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- command: `{command}`",
    ]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A markdown table; ``align`` holds one of 'l'/'r' per column (default: first left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or any(len(r) != len(header) for r in rows):
        raise ValueError("markdown_table: every row and the alignment need one entry per header column")
    rule = ["---" if a == "l" else "---:" for a in align]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in [header, rule, *rows])


def emit(report: str, out: Path | None) -> None:
    """Print the report and, if asked, write it as markdown (creating the folder)."""
    print(report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
