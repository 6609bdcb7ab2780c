"""Running a submission without trusting it: one isolated child per grading job, driven and
timed by the grader, killed with everything in its sandbox, restarted for what is left.

The sandbox itself (bubblewrap, seccomp, the noexec scratch) is ``lessons.grading.bubblewrap``;
the child is ``lessons/assignments/sandbox.py``. This module is the protocol between them,
and it trusts nothing the child says about where it is:

- The grader sends the job on the child's stdin as length-prefixed messages: first the
  code cells (the student's own code, nothing secret), then one question at a time. A
  question's inputs (its visible and hidden cases) are sent only when that question's clock
  starts, so no earlier cell or question can see them and precompute its answer on another
  unit's time.
- The units of a job (start-up, each cell, each question) each have a time limit. The
  child reports on a pipe, in JSON lines. An event can advance only to the *next* unit (a
  "cell" event naming the next cell; "ready" after the last cell); a question ends when its
  outputs arrive, and the grader then starts the next one. A line naming any other unit is
  ignored, so a child can neither skip ahead nor extend a unit's time.
- The grader checks its clock before every line, and caps what a child may send (bytes and
  lines per job), so a flood of well-formed lines cannot stop its clock: each line costs
  constant work (units are indexed by position and id).
- Every text the child sends is made printable here (``wire.printable``) before anything else
  sees it, so no control character (a terminal escape, a carriage return) reaches a report.
"""

from __future__ import annotations

import os
import pickle
import queue
import select
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from lessons.assignments.spec import Question
from lessons.grading import seccomp
from lessons.grading.bubblewrap import IsolationUnavailable, Sandbox, kill
from lessons.grading.wire import WireError, decode, parse_event, printable

__all__ = ["IsolationUnavailable", "Limits", "Sandbox", "SandboxRun", "run_submission"]

MAX_DENIALS = 50
"""Refusals kept per submission (a loop of refused calls would otherwise fill the report)."""


@dataclass(frozen=True)
class Limits:
    """Wall-clock limits (seconds) per question, cell, start-up and submission; the child's resources.

    ``audit_hook`` switches the child's second line of defence; the tests turn it off to
    show that the sandbox holds on its own. ``extra_lines`` is how many report lines a job
    may send beyond four per unit.
    """

    question_s: float = 30.0
    cell_s: float = 60.0
    startup_s: float = 60.0
    submission_s: float = 600.0
    memory_mb: int = 4096
    file_mb: int = 64
    output_mb: int = 32
    extra_lines: int = 1000
    audit_hook: bool = True


@dataclass
class SandboxRun:
    """What the children reported, merged over restarts."""

    outputs: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    cell_errors: dict[int, str] = field(default_factory=dict)
    skipped_cells: dict[int, str] = field(default_factory=dict)
    denials: list[tuple[str, str]] = field(default_factory=list)  # (unit, what)


def _decode_outputs(cases: Any, keys: set[str]) -> dict[str, dict]:
    """A question's outputs, case by case; anything malformed is that case's error."""
    if not isinstance(cases, dict):
        raise WireError("the outputs are not a dict of cases")
    result = {}
    for key in keys:
        got = cases.get(key)
        if isinstance(got, dict) and isinstance(got.get("error"), str):
            result[key] = {"error": printable(got["error"])}
        elif isinstance(got, dict) and "output" in got:
            try:
                result[key] = {"output": decode(got["output"])}
            except WireError as err:
                result[key] = {"error": f"an output the grader does not accept: {err}"}
    return result


def frame(message: Any) -> bytes:
    """One message to the child: its pickled length (8 bytes, big-endian) then the pickle (the
    child trusts the grader; nothing the child sends back is unpickled)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return struct.pack(">Q", len(data)) + data


class _Job:
    """One child: its units in order (start, cells, questions), each timed from when it starts."""

    def __init__(self, units: list[tuple[str, str, float]], deadline: float, keys: dict[str, set[str]],
                 send: Any, questions: dict[str, bytes]) -> None:
        self.units, self.keys, self.deadline, self.send, self.questions = units, keys, deadline, send, questions
        self.index, self.started = 0, time.monotonic()

    def unit(self) -> tuple[str, str, float]:
        return self.units[self.index]

    def _next(self) -> tuple[str, str, float] | None:
        return self.units[self.index + 1] if self.index + 1 < len(self.units) else None

    def _advance(self) -> bool:
        """Start the next unit (sending a question its inputs now); True when there is none."""
        if self._next() is None:
            return True
        self.index, self.started = self.index + 1, time.monotonic()
        kind, name, _ = self.unit()
        if kind == "q":
            self.send(self.questions[name])
        return False

    def overdue(self) -> str | None:
        _, _, limit = self.unit()
        now = time.monotonic()
        if now - self.started > limit:
            return f"stopped after its time limit of {limit:g} s"
        if now > self.deadline:
            return "stopped: the submission ran past its total time budget"
        return None

    def handle(self, event: dict, run: SandboxRun) -> bool:
        """Apply one event; True at the end of the job."""
        kind, (unit_kind, name, _), following = event["e"], self.unit(), self._next()
        if kind == "cell" and following is not None and following[0] == "cell" and event.get("i") == int(following[1]):
            return self._advance()
        if kind == "ready" and unit_kind != "q" and (following is None or following[0] == "q"):
            return self._advance()
        if kind == "cell_error" and unit_kind == "cell" and event.get("i") == int(name):
            run.cell_errors.setdefault(int(name), printable(event.get("msg", "")))
        elif kind == "out" and unit_kind == "q" and event.get("id") == name:
            try:
                run.outputs[name] = _decode_outputs(event.get("cases"), self.keys[name])
            except WireError as err:
                run.failures.setdefault(name, f"its outputs could not be read back: {err}")
            return self._advance()
        elif kind == "q_error" and unit_kind == "q" and event.get("id") == name:
            run.failures.setdefault(name, printable(event.get("msg", "")))
            return self._advance()
        elif kind == "deny" and len(run.denials) < MAX_DENIALS:
            run.denials.append((f"{unit_kind} {name}", printable(event.get("what", ""))))
        return False


def _watch(proc: subprocess.Popen, fd: int, job: _Job, limits: Limits, run: SandboxRun) -> tuple[str, str] | None:
    """Follow a child's reports until its job ends; return (unit, reason) if it stopped early.

    The clock is checked before each line, and the child may send at most ``output_mb`` and
    four lines per unit (plus ``extra_lines``), so no amount of input stops the clock."""
    pending: list[bytes] = []  # the unfinished line, in pieces (joined once, when it ends)
    total, lines_left = 0, 4 * len(job.units) + limits.extra_lines
    cap = limits.output_mb << 20

    def where() -> str:
        return " ".join(job.unit()[:2])

    while True:
        reason = job.overdue()
        if reason:
            return where(), reason
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            if proc.poll() is None:
                continue
            ready, _, _ = select.select([fd], [], [], 0)  # it exited: read what it wrote before
        chunk = os.read(fd, 1 << 20) if ready else b""
        if not chunk:
            return where(), "the process exited (os._exit, a signal or a crash)"
        total += len(chunk)
        if total > cap:
            return where(), f"it sent more than {limits.output_mb} MB"
        if b"\n" not in chunk:
            pending.append(chunk)
            continue
        first, *rest = chunk.split(b"\n")
        lines, pending = [b"".join([*pending, first]), *rest[:-1]], [rest[-1]]
        for line in lines:
            reason = job.overdue()
            if reason:
                return where(), reason
            lines_left -= 1
            if lines_left < 0:
                return where(), "it sent more report lines than a job may send"
            event = parse_event(line)
            if event is not None and job.handle(event, run):
                return None


def _writer(proc: subprocess.Popen, messages: queue.Queue) -> None:
    """Write the queued messages to the child's stdin until None (or the child is gone)."""
    try:
        while (data := messages.get()) is not None:
            proc.stdin.write(data)
            proc.stdin.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass
    finally:
        try:
            proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass


def _header(sandbox: Sandbox, cells: list[tuple[int, str]], limits: Limits, cpu_s: float) -> dict:
    """The job's first message: settings, the seccomp filter the child adds, its cells."""
    isolated = not sandbox.trusted
    return {"cells": cells, "audit_hook": limits.audit_hook, "isolated": isolated,
            "seccomp": seccomp.program(deny_exec=True) if isolated else b"",
            "seccomp_nr": seccomp.seccomp_syscall_number() if isolated else 0,
            "limits": {"memory_mb": limits.memory_mb, "file_mb": limits.file_mb, "cpu_s": cpu_s}}


def run_submission(sandbox: Sandbox, cells: list[tuple[int, str]], questions: list[Question],
                   cases: dict[str, list[tuple[str, Any]]], limits: Limits) -> SandboxRun:
    """Run the cells and the graded functions in isolated children; restart after a hang or a crash."""
    run = SandboxRun()
    remaining = list(questions)
    deadline = time.monotonic() + limits.submission_s
    keys = {q.id: {key for key, _ in cases[q.id]} for q in questions}
    while remaining and time.monotonic() < deadline:
        todo = [(i, src) for i, src in cells if i not in run.skipped_cells]
        units = [("start", "", limits.startup_s), *(("cell", str(i), limits.cell_s) for i, _ in todo),
                 *(("q", q.id, limits.question_s) for q in remaining)]
        job_budget = sum(u[2] for u in units)
        payloads = {q.id: frame({"id": q.id, "function": q.function,
                                 "cases": [{"name": key, "mode": c.mode, "args": c.args, "kwargs": c.kwargs}
                                           for key, c in cases[q.id]]}) for q in remaining}
        read_fd, write_fd = os.pipe()
        try:
            proc, info_fd, scratch = sandbox.start(write_fd, limits.file_mb)
        finally:
            os.close(write_fd)
        messages: queue.Queue = queue.Queue()
        messages.put(frame(_header(sandbox, todo, limits, job_budget)))
        writer = threading.Thread(target=_writer, args=(proc, messages), daemon=True)
        writer.start()
        job = _Job(units, min(deadline, time.monotonic() + job_budget), keys, messages.put, payloads)
        try:
            stopped = _watch(proc, read_fd, job, limits, run)
        finally:
            messages.put(None)
            kill(proc, info_fd)
            os.close(read_fd)
            writer.join(timeout=5)
            sandbox.release(scratch)
        if stopped:
            unit, reason = stopped
            kind, _, name = unit.partition(" ")
            if kind == "q" and name not in run.outputs:
                run.failures.setdefault(name, reason)
            elif kind == "cell":
                run.skipped_cells[int(name)] = reason
            else:
                for q in remaining:
                    run.failures.setdefault(q.id, f"the sandbox stopped before grading it: {reason}")
        remaining = [q for q in remaining if q.id not in run.outputs and q.id not in run.failures]
    for q in remaining:
        run.failures.setdefault(q.id, "not graded: the submission ran past its total time budget")
    return run
