"""Where `make test`'s time goes: CPU seconds per test and per module, and the wall time of the run.

Wall times of single tests mislead on a shared 2-core machine (a test waits while others run), so
this records each test's CPU time: the pytest process's own plus that of the child processes it
waited for during the test (notebook kernels, process pools, the sandboxed grader). Processes a
module-scoped fixture keeps (JupyterLab, Chromium) are counted when the module ends. The suite runs
as `make test` runs it (pytest-xdist, ``-n auto --dist worksteal``) with this module as a plugin.

The whole machine is sampled too (Linux, from ``/proc``, once a second: :class:`MachineSampler`):
the CPU of every process by kind (Chromium, lesson kernels, the sandboxed grader, ...), whoever
started it, and the cores' idle time, the time the suite could still use. A process that ends
between two samples loses its last second. Before and after the suite, ``benchmarks.steadiness``
times the same fixed work 30 times: how far the machine's own speed swung around the run.

    PYTHONPATH=. python -m benchmarks.suite_times --out benchmarks/results/suite_times.md
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sparsity.sweep import cpu_name

RECORD = "LAB_TEST_TIMES_FILE"
"""The environment variable naming the JSON-lines file every pytest process appends its rows to."""


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Append ``{"test", "cpu_s", "wall_s"}`` for each test (setup, call and teardown) to $LAB_TEST_TIMES_FILE."""
    cpu, wall = _cpu_seconds(), time.monotonic()
    yield
    path = os.environ.get(RECORD)
    if path:
        row = {"test": item.nodeid, "cpu_s": _cpu_seconds() - cpu, "wall_s": time.monotonic() - wall}
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def table(rows: list[dict[str, Any]], wall_s: float, load: tuple[float, float], top: int = 25) -> str:
    """The report: totals, CPU seconds per module, the ``top`` tests by CPU seconds."""
    modules: dict[str, float] = collections.Counter()
    for r in rows:
        modules[r["test"].split("::")[0]] += r["cpu_s"]
    total = sum(r["cpu_s"] for r in rows)
    lines = [f"- {len(rows)} tests; CPU {total:.0f} s in the tests (the pytest processes and the children they "
             f"waited for); wall {wall_s:.0f} s for the whole run",
             f"- 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end "
             f"({os.cpu_count()} logical CPUs: {cpu_name()})", "",
             "| module | CPU s | share |", "| --- | ---: | ---: |"]
    lines += [f"| {m} | {s:.1f} | {s / total:.0%} |" for m, s in sorted(modules.items(), key=lambda kv: -kv[1])]
    lines += ["", f"Slowest {top} tests by CPU:", "", "| test | CPU s | wall s |", "| --- | ---: | ---: |"]
    lines += [f"| `{r['test']}` | {r['cpu_s']:.1f} | {r['wall_s']:.1f} |"
              for r in sorted(rows, key=lambda r: -r["cpu_s"])[:top]]
    return "\n".join(lines) + "\n"


KINDS = (("chromium", "Chromium"), ("ipykernel", "lesson kernels"), ("jupyterlab", "JupyterLab"),
         ("sandbox.py", "grader sandboxes"),
         ("raylet", "Ray"), ("gcs_server", "Ray"), ("ray::", "Ray"), ("/ray/", "Ray"),
         ("multiprocessing", "process pools"), ("pytest", "pytest workers"),
         ("exec(eval(sys.stdin", "pytest workers"), ("python", "other Python processes"))
"""A process's kind: the first of these whose text is in its command line (else "other")."""


def process_kind(command_line: str) -> str:
    """The kind of a process with this command line (:data:`KINDS`)."""
    return next((kind for text, kind in KINDS if text in command_line), "other")


class MachineSampler(threading.Thread):
    """Samples, once a second until :meth:`stop`, every process's CPU seconds by kind (``/proc/PID/stat``) and
    the machine's idle core-seconds (``/proc/stat``); ``cpu`` and ``idle_s`` hold the totals since the start."""

    def __init__(self, period_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.period_s, self.cpu, self.idle_s = period_s, collections.Counter(), 0.0
        self.available = Path("/proc/stat").exists()
        self._done = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK") if self.available else 100

    def _idle(self) -> float:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return (int(fields[4]) + int(fields[5])) / self._tick  # idle + iowait

    def _processes(self) -> dict[tuple[str, str], tuple[float, str]]:
        """(pid, start time) -> (CPU seconds so far, kind), for every process readable now."""
        found = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # it ended meanwhile
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            found[(pid, fields[19])] = ((int(fields[11]) + int(fields[12])) / self._tick, process_kind(command))
        return found

    def run(self) -> None:
        if not self.available:
            return
        last, idle_at_start = self._processes(), self._idle()
        while not self._done.wait(self.period_s):
            now = self._processes()
            for key, (cpu, kind) in now.items():
                self.cpu[kind] += cpu - last.get(key, (0.0, kind))[0]
            last = now
            self.idle_s = self._idle() - idle_at_start

    def stop(self) -> None:
        self._done.set()
        self.join()


def machine_table(sampler: MachineSampler, wall_s: float) -> str:
    """The whole machine's CPU by process kind and its idle time, or a line saying it could not be sampled."""
    if not sampler.available:
        return "- the whole machine: not sampled (no /proc here)\n"
    total, cores = sum(sampler.cpu.values()), os.cpu_count() or 1
    lines = ["", "## The whole machine (sampled from /proc once a second)", "",
             f"- {total:.0f} core-seconds of CPU in all processes; {sampler.idle_s:.0f} core-seconds idle, "
             f"{sampler.idle_s / (cores * wall_s):.0%} of {cores} cores x {wall_s:.0f} s", "",
             "| process kind | CPU s | share |", "| --- | ---: | ---: |"]
    lines += [f"| {kind} | {s:.1f} | {s / total:.0%} |" for kind, s in sampler.cpu.most_common() if s >= 0.05]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the report (markdown) here as well as printing it, and "
                        "every test's row beside it (the same name, .json)")
    parser.add_argument("pytest_args", nargs="*", default=["-q", "-n", "auto", "--dist", "worksteal"],
                        help="arguments for pytest (after --); by default those `make test` passes")
    args = parser.parse_args(argv)
    from benchmarks import steadiness  # here, not at the top: this module is also the workers' pytest plugin

    with tempfile.TemporaryDirectory() as folder:
        record = Path(folder) / "times.jsonl"
        before = steadiness.probe()
        start_load, start = os.getloadavg()[0], time.monotonic()
        sampler = MachineSampler()
        sampler.start()
        code = subprocess.call([sys.executable, "-m", "pytest", "-p", "benchmarks.suite_times", *args.pytest_args],
                               env=dict(os.environ, **{RECORD: str(record)}))
        sampler.stop()
        wall = time.monotonic() - start
        steady = steadiness.line(before, steadiness.probe())
        rows = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    report = (f"# `make test`: CPU seconds per test\n\n- command: `python -m pytest {' '.join(args.pytest_args)}` "
              f"(exit code {code}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n{steady}\n"
              + table(rows, wall, (start_load, os.getloadavg()[0])) + machine_table(sampler, wall))
    print(report)
    if args.out:
        args.out.write_text(report)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=0) + "\n")


if __name__ == "__main__":
    main()
