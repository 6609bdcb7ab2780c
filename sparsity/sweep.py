"""One sweep store and report kit for every experiment grid of the lab.

An experiment is a grid of *cells* (method x budget x learning rate x seed, or whatever
settings a study varies); each cell is run once and stored as one JSON line as soon as it
finishes, keyed by its settings. A killed sweep resumes where it stopped (a half-written
last line is dropped and its cell redone), and a folder belongs to one configuration: a
store refuses to mix cells of another config. Then the kit summarises: mean and spread
over seeds, markdown tables, and the machine the numbers came from.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from sparsity.validate import read_json_object

RESULTS = "results.jsonl"
CONFIG = "config.json"


def _json_safe(value: Any) -> Any:
    """A JSON round trip of plain data (tuples become lists), as the store reads it back."""
    return json.loads(json.dumps(value, allow_nan=False))


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def cell_key(row: Mapping[str, Any], key_fields: Sequence[str]) -> str:
    """A cell's key: its ``key_fields`` joined with ``|``, floats as ``repr`` (the shortest text that
    reads back as the same float, so lr 0.1 and 0.1000001 are two cells), e.g. ``lift|d0.05|0.001|0``.
    Stores written when keys used ``%g`` load unchanged: keys are recomputed from the stored rows."""
    missing = [f for f in key_fields if f not in row]
    if missing:
        raise KeyError(f"a cell needs the key fields {missing}")
    return "|".join(repr(row[f]) if isinstance(row[f], float) else str(row[f]) for f in key_fields)


class SweepStore:
    """Cells of one configuration in ``folder/results.jsonl``, keyed by ``key_fields``.

    ``config`` (plain JSON data) is written to ``folder/config.json`` on first use and must
    match on every later use. ``key(row)`` joins the key fields with ``|`` (:func:`cell_key`).
    A cell is stored once: appending a stored key again is refused, and a file holding one key
    twice, or a line that is not a JSON object with the key fields, is an error naming the file
    and the line.
    """

    def __init__(self, folder: str | os.PathLike[str], key_fields: Sequence[str],
                 config: Mapping[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"the sweep folder {self.folder} is a file, not a folder")
        if not key_fields or not all(isinstance(f, str) for f in key_fields):
            raise ValueError(f"key_fields must be a non-empty list of field names, got {key_fields!r}")
        self.key_fields = tuple(key_fields)
        self.path = self.folder / RESULTS
        if config is not None:
            self._guard(_json_safe(dict(config)))

    def _guard(self, want: dict[str, Any]) -> None:
        path = self.folder / CONFIG
        if path.exists():
            saved = read_json_object(path)
            diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
            if diff:
                raise ValueError(f"{self.folder} holds results of another config (differs in {diff}); "
                                 "use another folder")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(want, indent=1))

    def config(self) -> dict[str, Any]:
        """The stored configuration."""
        path = self.folder / CONFIG
        if not path.exists():
            raise FileNotFoundError(f"{self.folder} holds no sweep (no {CONFIG})")
        return read_json_object(path)

    def key(self, row: Mapping[str, Any]) -> str:
        return cell_key(row, self.key_fields)

    def _rows(self, text: bytes) -> dict[str, tuple[int, dict[str, Any]]]:
        """Cells by key with their line numbers, from the raw bytes of the results file."""
        rows: dict[str, tuple[int, dict[str, Any]]] = {}
        lines = text.splitlines()
        for i, raw in enumerate(lines):
            where = f"{self.path} line {i + 1}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                if i == len(lines) - 1 and not text.endswith(b"\n"):
                    continue  # cut off by a kill: that cell is redone
                raise ValueError(f"{where} is not JSON (only the last line may be cut off by a kill)") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where} is a JSON {type(row).__name__}, not a cell (a JSON object)")
            try:
                key = self.key(row)
            except KeyError as err:
                raise ValueError(f"{where}: {err.args[0]}") from None
            if key in rows:
                raise ValueError(f"{where} stores cell {key} again (first on line {rows[key][0]}): a cell is stored "
                                 "once; remove one of the two lines")
            rows[key] = (i + 1, row)
        return rows

    def load(self) -> dict[str, dict[str, Any]]:
        """Finished cells by key. A last line cut off by a kill is ignored (that cell is redone)."""
        if not self.path.exists():
            return {}
        return {key: row for key, (_, row) in self._rows(self.path.read_bytes()).items()}

    def append(self, row: Mapping[str, Any]) -> None:
        """Store one finished cell durably (flushed and fsynced). Non-finite numbers are refused:
        they are not JSON, and a NaN result is a diverged run to report, not a number to average."""
        key = self.key(row)
        try:
            line = json.dumps(dict(row), allow_nan=False)
        except ValueError:
            bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
            raise ValueError(f"cell {key} has non-finite values in {bad}") from None
        self.folder.mkdir(parents=True, exist_ok=True)
        text = self.path.read_bytes() if self.path.exists() else b""
        if text and not text.endswith(b"\n"):
            last = text[text.rfind(b"\n") + 1:]
            if _is_json(last.decode("utf-8", errors="replace")):  # a complete row whose newline was lost: keep it
                text += b"\n"
            else:  # a line cut off by a kill: drop it (its cell is redone)
                text = text[: text.rfind(b"\n") + 1]
            self.path.write_bytes(text)
        stored = self._rows(text)
        if key in stored:
            raise ValueError(f"cell {key} is already stored in {self.path} (line {stored[key][0]}): a cell is run once")
        with self.path.open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def run(self, cells: Iterable[Mapping[str, Any]], run_cell: Callable[[Mapping[str, Any]], Mapping[str, Any]],
            progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None) -> dict[str, dict[str, Any]]:
        """Run every cell not yet stored (``run_cell(settings) -> row``, the row holding the key
        fields), storing each as it finishes; return all cells by key."""
        done = self.load()
        todo = [c for c in cells if self.key(c) not in done]
        for cell in (progress(todo) if progress is not None else todo):
            row = self.record(cell, run_cell(cell))
            done[self.key(row)] = row
        return done

    def pending(self, cells: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The cells not yet stored, in order."""
        done = self.load()
        return [c for c in cells if self.key(c) not in done]

    def record(self, cell: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
        """Store the row a cell's run returned (it must hold the cell's key fields, unchanged); the row."""
        row = dict(row)
        if self.key(row) != self.key(cell):
            raise ValueError(f"the run of cell {self.key(cell)} returned the row of cell {self.key(row)}")
        self.append(row)
        return row


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) over seeds."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_spread needs at least one value")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None,
                   compact_rule: bool = False) -> str:
    """A markdown table; ``align`` holds one of 'l'/'r' per column (default: first left, the rest right).
    ``compact_rule`` writes the rule line as ``|---|---:|`` (the benchmark reports' style)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or any(len(r) != len(header) for r in rows):
        raise ValueError("markdown_table: every row and the alignment need one entry per header column")
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(str(c) for c in line) + " |" for line in [header, rule, *rows]]
    if compact_rule:
        lines[1] = "|" + "|".join(rule) + "|"
    return "\n".join(lines)


def command_line(module: str, argv: Sequence[str], fast: bool = False) -> str:
    """The command that reproduces a run of ``python -m module``; ``fast``: it ran in the lab's fast mode
    (the entry point read ``LAB_FAST``), so the command sets it too."""
    prefix = "LAB_FAST=1 " if fast else ""
    return f"{prefix}PYTHONPATH=. python -m {module} {shlex.join(argv)}".rstrip()


def load_average() -> str:
    """The 1-minute load average: above the thread count, other jobs competed for the CPU."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


def load_line(loads: tuple[str, str], threads: int) -> str:
    """The report line of a timed run's 1-minute load averages at its start and end (:func:`load_average`), with
    what a load above the ``threads`` the run timed on means: other jobs shared the CPU, so the absolute times are
    not a quiet machine's (ratios of interleaved measurements suffer less). One wording for every benchmark."""
    busy = any(float(load) > threads for load in loads if load.replace(".", "", 1).isdigit())
    return (f"- 1-minute load average at start / end: {loads[0]} / {loads[1]}"
            + (f" (above the {threads} thread(s): other jobs shared the CPU; the ratios are interleaved medians, the "
               "absolute times are not a quiet machine's)" if busy else ""))


def busy_warning(threads: int) -> str | None:
    """A warning to print before timing on ``threads`` threads when the 1-minute load average exceeds
    that count (other jobs then compete for the cores, and timings come out slower and noisier); None
    when the machine is quiet enough or the platform has no load average."""
    if not hasattr(os, "getloadavg"):
        return None
    load = os.getloadavg()[0]
    if load <= threads:
        return None
    return (f"warning: the 1-minute load average is {load:.1f}, above this benchmark's {threads} thread(s): other "
            f"jobs compete for the CPU, so the timings will be slower and noisier than on a quiet machine")


def cpu_name() -> str:
    """The CPU as far as it decides speed and rounding: its model name, vendor, family and model numbers
    (``/proc/cpuinfo``; a virtual machine's model name is often just the brand), and the instruction set
    torch's kernels dispatch to, e.g. ``AMD EPYC; AuthenticAMD family 25 model 17; AVX512``."""
    parts = [platform.processor() or platform.machine()]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        first = cpuinfo.read_text().split("\n\n", 1)[0]
        info = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        if "vendor_id" in info:
            parts = [info.get("model name", "?"),
                     f"{info['vendor_id']} family {info.get('cpu family', '?')} model {info.get('model', '?')}"]
    return "; ".join([*parts, torch.backends.cpu.get_cpu_capability()])


def machine_lines(command: str) -> list[str]:
    """Markdown bullet lines that start every report: torch version, device, threads, load, date, command.

    A number means little without the command, the torch version, the CPU, the thread count and how busy
    the machine was."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({cpu_name()})"
    return [
        f"- torch {torch.__version__}; device: {device}; {torch.get_num_threads()} torch CPU threads "
        f"of {os.cpu_count()} logical CPUs; 1-minute load average {load_average()}",
        f"- date: {datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- command: `{command}`",
    ]


def emit(report: str, out: Path | None) -> None:
    """Print a report and, if asked, write it as markdown (creating the folder)."""
    print(report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)


def machine(device: str = "cpu") -> dict[str, Any]:
    """Where numbers were measured: CPU count and model, torch threads, torch version, platform, device (and GPU)."""
    info = dict(cpus=os.cpu_count(), cpu=cpu_name(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                platform=platform.platform(), device=device)
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info
