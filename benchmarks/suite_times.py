"""Where `make test`'s time goes: CPU seconds per test and per module, and the wall time of the run.

Wall times of single tests mislead on a shared 2-core machine (a test waits while others run), so
this records each test's CPU time: the pytest process's own plus that of the child processes it
waited for during the test (notebook kernels, process pools, the sandboxed grader). Processes a
module-scoped fixture keeps (JupyterLab, Chromium) are counted when the module ends. The suite runs
as `make test` runs it (pytest-xdist, ``-n auto --dist worksteal``) with this module as a plugin.

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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
             f"({os.cpu_count()} logical CPUs)", "",
             "| module | CPU s | share |", "| --- | ---: | ---: |"]
    lines += [f"| {m} | {s:.1f} | {s / total:.0%} |" for m, s in sorted(modules.items(), key=lambda kv: -kv[1])]
    lines += ["", f"Slowest {top} tests by CPU:", "", "| test | CPU s | wall s |", "| --- | ---: | ---: |"]
    lines += [f"| `{r['test']}` | {r['cpu_s']:.1f} | {r['wall_s']:.1f} |"
              for r in sorted(rows, key=lambda r: -r["cpu_s"])[:top]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the report (markdown) here as well as printing it, and "
                        "every test's row beside it (the same name, .json)")
    parser.add_argument("pytest_args", nargs="*", default=["-q", "-n", "auto", "--dist", "worksteal"],
                        help="arguments for pytest (after --); by default those `make test` passes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        record = Path(folder) / "times.jsonl"
        start_load, start = os.getloadavg()[0], time.monotonic()
        code = subprocess.call([sys.executable, "-m", "pytest", "-p", "benchmarks.suite_times", *args.pytest_args],
                               env=dict(os.environ, **{RECORD: str(record)}))
        wall = time.monotonic() - start
        rows = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    report = (f"# `make test`: CPU seconds per test\n\n- command: `python -m pytest {' '.join(args.pytest_args)}` "
              f"(exit code {code}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
              + table(rows, wall, (start_load, os.getloadavg()[0])))
    print(report)
    if args.out:
        args.out.write_text(report)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=0) + "\n")


if __name__ == "__main__":
    main()
