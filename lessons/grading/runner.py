"""Running a submission without trusting it: sandboxed child processes forked by one zygote,
watched for time limits and crashes, restarted for what is left.

The child side is ``lessons/assignments/sandbox.py`` (``python -I``, its own session and
temp folder, resource limits, an audit hook that blocks the lab's modules, the
repository's files, subprocesses, signals and ctypes). This side starts it, sends each job
(the code cells, the graded functions and their inputs), follows its progress file, kills
a child that runs past its limit or writes a false "end", and reads back only the outputs
(``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lessons.assignments.checks import Question

REPO = Path(__file__).resolve().parents[2]
SANDBOX = REPO / "lessons" / "assignments" / "sandbox.py"


@dataclass(frozen=True)
class Limits:
    """Time limits (seconds) for each question and each cell, and the sandbox's resources."""

    question_s: float = 30.0
    cell_s: float = 60.0
    startup_s: float = 60.0
    memory_mb: int = 4096
    file_mb: int = 64


class Sandbox:
    """A zygote process (``sandbox.py zygote``) that forks one fenced-off child per job."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="subnet-grade-")
        self.zygote: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.root, "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg",
               "TMPDIR": self.root, "MPLCONFIGDIR": self.root}
        return subprocess.Popen(
            [sys.executable, "-I", str(SANDBOX), "zygote"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, cwd=self.root, env=env, start_new_session=True, text=True,
        )

    def spawn(self, job_dir: str) -> tuple[int, int]:
        """Fork a child for ``job_dir``; returns its pid and the zygote's (its parent's)."""
        for _ in range(2):
            if self.zygote is None or self.zygote.poll() is not None:
                self.zygote = self._start()
            try:
                self.zygote.stdin.write(job_dir + "\n")
                self.zygote.stdin.flush()
                line = self.zygote.stdout.readline()
                if line.strip().isdigit():
                    return int(line), self.zygote.pid
            except (BrokenPipeError, OSError):
                pass
            self.close_zygote()
        raise RuntimeError("the sandbox could not start a process")

    def close_zygote(self) -> None:
        if self.zygote is not None:
            if self.zygote.poll() is None:
                self.zygote.kill()
            self.zygote.wait()
            for stream in (self.zygote.stdin, self.zygote.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            self.zygote = None

    def close(self) -> None:
        self.close_zygote()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _alive(pid: int, parent: int) -> bool:
    """Whether our child ``pid`` (forked by the zygote ``parent``) still runs; a reused pid is not ours."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and stat[1] == parent


def _kill(pid: int, parent: int) -> None:
    """SIGKILL our child and its process group (it is a session leader), then wait until it is gone."""
    if not _alive(pid, parent):
        return
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 10
    while _alive(pid, parent) and time.monotonic() < deadline:
        time.sleep(0.01)


@dataclass
class SandboxRun:
    """What the children reported, merged over restarts."""

    outputs: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    cell_errors: dict[int, str] = field(default_factory=dict)
    skipped_cells: dict[int, str] = field(default_factory=dict)
    denials: list[tuple[str, str]] = field(default_factory=list)  # (context, what)


def _watch(pid: int, parent: int, job_dir: Path, limits: Limits, run: SandboxRun) -> tuple[str, str] | None:
    """Follow a child's progress until it ends; return (unit, reason) if it stopped early."""
    progress = job_dir / "progress"
    offset, pending = 0, ""
    unit, started = "start", time.monotonic()
    while True:
        data = b""
        if progress.exists():
            with open(progress, "rb") as f:
                f.seek(offset)
                data = f.read()
        offset += len(data)
        pending += data.decode("utf-8", "replace")
        *lines, pending = pending.split("\n")
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind in ("cell", "q"):
                unit, started = f"{kind} {rest}", time.monotonic()
            elif kind in ("cell_done", "q_done"):
                unit, started = "between", time.monotonic()
            elif kind == "cell_error":
                index, _, message = rest.partition(" ")
                if index.isdigit():
                    run.cell_errors[int(index)] = message
            elif kind == "q_error":
                qid, _, message = rest.partition(" ")
                run.failures.setdefault(qid, message)
            elif kind == "deny":
                run.denials.append((unit, rest))
            elif kind == "end":
                return None
        if not lines and not _alive(pid, parent):
            if progress.exists() and progress.stat().st_size > offset:
                continue  # read what it wrote before it died
            return unit, "the process exited (os._exit, a signal or a crash)"
        limit = limits.question_s if unit.startswith("q ") else limits.cell_s if unit.startswith("cell ") else limits.startup_s
        if time.monotonic() - started > limit:
            _kill(pid, parent)
            return unit, f"stopped after its time limit of {limit:g} s"
        if not lines:
            time.sleep(0.02)


def run_submission(sandbox: Sandbox, cells: list[tuple[int, str]], questions: list[Question],
                   cases: dict[str, list[tuple[str, Any]]], limits: Limits, protect: tuple[str, ...] = ()) -> SandboxRun:
    """Run the cells and the graded functions in sandboxed children; restart after a hang or a crash.

    The children cannot read the repository (solutions, hidden tests, built solution
    notebooks), other jobs, or the folders in ``protect`` (e.g. the other submissions).
    """
    run = SandboxRun()
    remaining = [q for q in questions]
    for _ in range(len(cells) + len(questions) + 2):
        if not remaining:
            break
        job_dir = Path(tempfile.mkdtemp(dir=sandbox.root))
        job = {
            "cells": cells,
            "skip_cells": sorted(run.skipped_cells),
            "questions": [{"id": q.id, "function": q.function,
                           "cases": [{"name": key, "mode": c.mode, "args": c.args, "kwargs": c.kwargs}
                                     for key, c in cases[q.id]]} for q in remaining],
            "protected": [str(REPO), sandbox.root, *protect],
            "allowed": sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, *map(str, _site_dirs())}),
            "limits": {"memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
                       "cpu_s": limits.startup_s + limits.cell_s * len(cells) + limits.question_s * len(remaining)},
        }
        torch.save(job, job_dir / "job.pt")
        try:
            pid, parent = sandbox.spawn(str(job_dir))
            try:
                stopped = _watch(pid, parent, job_dir, limits, run)
            finally:
                _kill(pid, parent)  # also a child that wrote a false "end" and kept running
        except RuntimeError as err:
            for q in remaining:
                run.failures[q.id] = str(err)
            break
        for q in remaining:
            out = job_dir / f"{q.id}.pt"
            if out.exists() and q.id not in run.failures:
                try:
                    run.outputs[q.id] = torch.load(out, weights_only=True)
                except Exception as err:  # noqa: BLE001 - a file written by the student's process
                    run.failures[q.id] = f"its outputs could not be read back ({type(err).__name__})"
        if stopped:
            unit, reason = stopped
            kind, _, name = unit.partition(" ")
            if kind == "q":
                run.failures.setdefault(name, reason)
            elif kind == "cell" and name.isdigit():
                run.skipped_cells[int(name)] = reason
            else:
                for q in remaining:
                    if q.id not in run.outputs:
                        run.failures.setdefault(q.id, f"the sandbox stopped before grading it: {reason}")
        shutil.rmtree(job_dir, ignore_errors=True)
        remaining = [q for q in remaining if q.id not in run.outputs and q.id not in run.failures]
    for q in remaining:
        run.failures.setdefault(q.id, "not graded: too many restarts")
    return run


def _site_dirs() -> list[str]:
    import site

    dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    return [d for d in dirs if os.path.isdir(d)] + [os.path.dirname(torch.__file__)]
