"""Running a submission without trusting it: one isolated child process per grading job,
watched on the grader's own clock, killed with everything it started, restarted for what is left.

Isolation is bubblewrap's (``bwrap``, Debian package ``bubblewrap``), the tool Flatpak runs
its applications in: a few flags give the child its own PID, network (no interfaces but
a loopback of its own), IPC, UTS and mount namespaces, and a filesystem built from
nothing but read-only binds of the Python installation, the child script and a private
``/tmp`` of bounded size. Chosen over ``unshare(1)`` because it builds that filesystem
from an empty root (``unshare`` starts from the whole host tree, which would then have
to be hidden piece by piece) and because ``--die-with-parent`` ties the sandbox's life to
the grader's. The child runs as ``nobody``: under a user namespace when the grader is not
root, else bubblewrap keeps only the capability to change user and the child drops to
``nobody`` before it reads any student code. Killing bubblewrap ends its PID namespace,
so nothing the child started outlives its job.

Without bubblewrap the grader refuses to grade unless told the code is trusted; trusted
mode runs the same child in a plain subprocess (its own session, ``python -I``, the audit
hook), which stops honest mistakes, not attacks.

The child (``lessons/assignments/sandbox.py``) reports on a pipe, in JSON lines. The
grader expects the job's units in order (start, each cell, each question) and times each
from when it first saw it: a line naming an earlier or the current unit again is ignored,
so a child cannot extend its time, and a question's outputs count only while that
question runs. Each job also has a total budget, each submission another.
"""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import site
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lessons.assignments.spec import Question
from lessons.grading.wire import WireError, decode, parse_event

REPO = Path(__file__).resolve().parents[2]
SANDBOX = REPO / "lessons" / "assignments" / "sandbox.py"
INSIDE = "/grader/sandbox.py"
NOBODY = 65534
INSTALL = ("bubblewrap (bwrap) is needed to grade untrusted code in an isolated process: "
           "apt-get install bubblewrap (Debian/Ubuntu; dnf install bubblewrap on Fedora), "
           "or pass --trusted to grade code you trust without isolation")


class IsolationUnavailable(RuntimeError):
    """bubblewrap is missing or cannot build a sandbox here; the message says what to do."""


@dataclass(frozen=True)
class Limits:
    """Wall-clock limits (seconds) per question, cell, start-up and submission; the child's resources.

    ``audit_hook`` switches the child's second line of defence; the tests turn it off to
    show that the sandbox holds on its own.
    """

    question_s: float = 30.0
    cell_s: float = 60.0
    startup_s: float = 60.0
    submission_s: float = 600.0
    memory_mb: int = 4096
    file_mb: int = 64
    output_mb: int = 32
    audit_hook: bool = True


def _python_roots() -> list[str]:
    """The folders the Python environment lives in (installation, virtual environment, site-packages)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(torch.__file__)),
             *site.getsitepackages()}
    paths = sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)} | {os.path.abspath(sys.prefix)})
    return [p for p in paths if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in paths)]


def _installed_lab() -> list[str]:
    """Folders of the lab's packages when installed as copies (not editable): covered in the sandbox."""
    import importlib.util

    found = []
    for name in ("sparsity", "toys", "scaleup", "lessons", "benchmarks"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found += list(spec.submodule_search_locations)
    return found


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def bwrap_args(scratch_mb: int, hide: tuple[str, ...] = ()) -> list[str]:
    """bubblewrap's arguments: namespaces, identity, and the filesystem (the system libraries and
    the Python environment read-only, the child script, a private /tmp); any of ``hide`` under a
    bound folder (the repository, the submissions, a copy of the lab installed in site-packages)
    is covered by an empty tmpfs."""
    args = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session"]
    if os.geteuid() == 0:  # no user namespace needed; the child drops to nobody itself
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    roots = [d for d in ("/usr/lib", "/usr/lib64", "/usr/lib32") if os.path.isdir(d)] + _python_roots()
    roots = [r for r in dict.fromkeys(roots) if not any(r != q and _under(r, q) for q in roots)]
    hidden = sorted({os.path.realpath(h) for h in hide if any(_under(os.path.realpath(h), r) and
                                                             os.path.realpath(h) != r for r in roots)})
    dirs = sorted({str(p) for target in (*roots, INSIDE) for p in Path(target).parents if str(p) not in ("/", "/tmp")})
    args += ["--size", str(scratch_mb << 20), "--perms", "01777", "--tmpfs", "/tmp"]  # first: a root may be below
    for d in dirs:
        args += ["--perms", "0755", "--dir", d]
    for top in ("/lib", "/lib64", "/bin"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    mounts = [(len(Path(r).parts), 0, r) for r in roots] + [(len(Path(h).parts), 1, h) for h in hidden]
    for _, kind, path in sorted(mounts):
        args += ["--ro-bind", path, path] if kind == 0 else ["--tmpfs", path]
    args += ["--ro-bind", str(SANDBOX), INSIDE, "--proc", "/proc", "--dev", "/dev", "--chdir", "/tmp", "--clearenv"]
    for key, value in _ENV.items():
        args += ["--setenv", key, value]
    return args


_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "MPLCONFIGDIR": "/tmp", "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONDONTWRITEBYTECODE": "1"}


class Sandbox:
    """How a grading job's child starts: inside bubblewrap, or (``trusted``) in a plain subprocess."""

    def __init__(self, trusted: bool = False, hide: tuple[str, ...] = ()) -> None:
        self.trusted = trusted
        self.bwrap = None if trusted else shutil.which("bwrap")
        self.hide = (str(REPO), tempfile.gettempdir(), *_installed_lab(), *hide)
        if not trusted:
            if self.bwrap is None:
                raise IsolationUnavailable(INSTALL)
            probe = subprocess.run([*self.command(0), "-c", "pass"], capture_output=True, text=True, timeout=60)
            if probe.returncode != 0:
                detail = " ".join(probe.stderr.split())[:300]
                raise IsolationUnavailable(f"bubblewrap cannot build a sandbox here ({detail}); on a kernel that "
                                           f"restricts user namespaces run the grader as root, or pass --trusted")
        self.root = tempfile.mkdtemp(prefix="subnet-grade-")  # the children's working folder (trusted: their home)

    def command(self, fd: int, limits: Limits = Limits()) -> list[str]:
        """The command line of a child that reports on ``fd`` (without the script for the probe when fd is 0)."""
        python = [sys.executable, "-I"]
        script = [INSIDE, str(fd)] if fd else []
        if self.trusted:
            return [*python, str(SANDBOX), str(fd)] if fd else python
        return [self.bwrap, *bwrap_args(limits.file_mb, self.hide), "--", *python, *script]

    def start(self, fd: int, limits: Limits) -> tuple[subprocess.Popen, int | None]:
        """Start a child reporting on ``fd``; returns it and the read end of bubblewrap's info pipe,
        which names the PID namespace's first process (see ``_kill``)."""
        if self.trusted:
            env = {**_ENV, "HOME": self.root, "TMPDIR": self.root, "MPLCONFIGDIR": self.root}
            return subprocess.Popen(self.command(fd, limits), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, pass_fds=(fd,), cwd=self.root, env=env,
                                    start_new_session=True), None
        info_read, info_write = os.pipe()
        command = self.command(fd, limits)
        command[1:1] = ["--info-fd", str(info_write)]
        try:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, pass_fds=(fd, info_write), cwd=self.root,
                                    start_new_session=True)
        except OSError:
            os.close(info_read)
            raise
        finally:
            os.close(info_write)
        return proc, info_read

    def drop_to(self) -> int | None:
        """The user the child becomes: nobody when bubblewrap runs as root (no user namespace)."""
        return NOBODY if not self.trusted and os.geteuid() == 0 else None

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _namespace_init(proc: subprocess.Popen, info_fd: int | None) -> int | None:
    """The host pid of the sandbox's first process (PID 1 of its namespace), from bubblewrap's info pipe,
    if it is still bubblewrap's child (so not a reused pid)."""
    if info_fd is None or not select.select([info_fd], [], [], 0)[0]:
        return None
    try:
        pid = json.loads(os.read(info_fd, 4096)).get("child-pid")
        with open(f"/proc/{pid}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, AttributeError, IndexError, TypeError):
        return None
    return pid if parent == proc.pid else None


def _kill(proc: subprocess.Popen, info_fd: int | None) -> None:
    """End the child and everything it started, and return only once they are gone.

    Under bubblewrap: SIGKILL the namespace's first process; the kernel then kills every
    process of the namespace before that one is reaped by bubblewrap, which then exits, so
    waiting for bubblewrap waits for them all. (Killing bubblewrap first would also end the
    namespace, via ``--die-with-parent``, but without anything to wait on.)
    """
    init = _namespace_init(proc, info_fd)
    if init is not None:
        try:
            os.kill(init, 9)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    proc.wait()
    if info_fd is not None:
        os.close(info_fd)


@dataclass
class SandboxRun:
    """What the children reported, merged over restarts."""

    outputs: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    cell_errors: dict[int, str] = field(default_factory=dict)
    skipped_cells: dict[int, str] = field(default_factory=dict)
    denials: list[tuple[str, str]] = field(default_factory=list)  # (unit, what)


def _text(value: Any, limit: int = 300) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode_outputs(cases: Any, keys: set[str]) -> dict[str, dict]:
    """A question's outputs, case by case; anything malformed is that case's error."""
    if not isinstance(cases, dict):
        raise WireError("the outputs are not a dict of cases")
    result = {}
    for key in keys:
        got = cases.get(key)
        if isinstance(got, dict) and isinstance(got.get("error"), str):
            result[key] = {"error": _text(got["error"])}
        elif isinstance(got, dict) and "output" in got:
            try:
                result[key] = {"output": decode(got["output"])}
            except WireError as err:
                result[key] = {"error": f"an output the grader does not accept: {err}"}
    return result


class _Job:
    """One child: the units it must run, in order, each timed from when it is first seen."""

    def __init__(self, units: list[tuple[str, str, float]], deadline: float, keys: dict[str, set[str]]) -> None:
        self.units, self.keys, self.deadline = units, keys, deadline
        self.index, self.started = 0, time.monotonic()

    def unit(self) -> tuple[str, str, float]:
        return self.units[self.index]

    def advance(self, kind: str, name: str) -> None:
        for i in range(self.index + 1, len(self.units)):
            if self.units[i][:2] == (kind, name):
                self.index, self.started = i, time.monotonic()
                return

    def overdue(self) -> str | None:
        kind, _, limit = self.unit()
        now = time.monotonic()
        if now - self.started > limit:
            return f"stopped after its time limit of {limit:g} s"
        if now > self.deadline:
            return "stopped: the submission ran past its total time budget"
        return None

    def handle(self, event: dict, run: SandboxRun) -> bool:
        """Apply one event; True at the end of the job."""
        kind, (unit_kind, name, _) = event["e"], self.unit()
        if kind == "cell" and isinstance(event.get("i"), int):
            self.advance("cell", str(event["i"]))
        elif kind == "q" and isinstance(event.get("id"), str):
            self.advance("q", event["id"])
        elif kind == "cell_error" and unit_kind == "cell" and event.get("i") == int(name):
            run.cell_errors.setdefault(int(name), _text(event.get("msg", "")))
        elif kind == "out" and unit_kind == "q" and event.get("id") == name and name not in run.outputs:
            try:
                run.outputs[name] = _decode_outputs(event.get("cases"), self.keys[name])
            except WireError as err:
                run.failures.setdefault(name, f"its outputs could not be read back: {err}")
        elif kind == "q_error" and unit_kind == "q" and event.get("id") == name:
            run.failures.setdefault(name, _text(event.get("msg", "")))
        elif kind == "deny":
            run.denials.append((f"{unit_kind} {name}", _text(event.get("what", ""))))
        return kind == "end"


def _watch(proc: subprocess.Popen, fd: int, job: _Job, limits: Limits, run: SandboxRun) -> tuple[str, str] | None:
    """Follow a child's reports until it ends; return (unit, reason) if it stopped early."""
    pending, total, cap = b"", 0, limits.output_mb << 20
    while True:
        reason = job.overdue()
        if reason:
            return " ".join(job.unit()[:2]), reason
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            if proc.poll() is None:
                continue
            ready, _, _ = select.select([fd], [], [], 0)  # it exited: read what it wrote before
        chunk = os.read(fd, 1 << 20) if ready else b""
        if not chunk:
            return " ".join(job.unit()[:2]), "the process exited (os._exit, a signal or a crash)"
        total += len(chunk)
        if total > cap:
            return " ".join(job.unit()[:2]), f"it sent more than {limits.output_mb} MB"
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            event = parse_event(line)
            if event is not None and job.handle(event, run):
                return None


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
        buffer = io.BytesIO()
        torch.save({
            "cells": todo, "drop_to": sandbox.drop_to(), "audit_hook": limits.audit_hook,
            "questions": [{"id": q.id, "function": q.function,
                           "cases": [{"name": key, "mode": c.mode, "args": c.args, "kwargs": c.kwargs}
                                     for key, c in cases[q.id]]} for q in remaining],
            "limits": {"memory_mb": limits.memory_mb, "file_mb": limits.file_mb, "cpu_s": job_budget},
        }, buffer)
        read_fd, write_fd = os.pipe()
        try:
            proc, info_fd = sandbox.start(write_fd, limits)
        finally:
            os.close(write_fd)
        feeder = threading.Thread(target=_feed, args=(proc, buffer.getvalue()), daemon=True)
        feeder.start()
        job = _Job(units, min(deadline, time.monotonic() + job_budget), keys)
        try:
            stopped = _watch(proc, read_fd, job, limits, run)
        finally:
            _kill(proc, info_fd)
            os.close(read_fd)
            feeder.join(timeout=5)
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
        else:
            for q in remaining:
                if q.id not in run.outputs:
                    run.failures.setdefault(q.id, "no outputs came back for it")
        remaining = [q for q in remaining if q.id not in run.outputs and q.id not in run.failures]
    for q in remaining:
        run.failures.setdefault(q.id, "not graded: the submission ran past its total time budget")
    return run


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass
