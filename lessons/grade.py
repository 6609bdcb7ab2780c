"""The autograder: ``python -m lessons.grade SUBMISSION.ipynb [--json]``, or a folder -> one CSV.

How a submission is graded, and why it cannot earn points it did not earn:

1. This process (the *parent*) never runs student code. It reads the notebook, removes any
   hidden-test region, and builds for every question the test cases of its visible and
   hidden checks (``lessons.assignments.checks`` / ``.hidden``).
2. A sandboxed child process (``lessons/assignments/sandbox.py``: ``python -I``, its own
   session and temp folder, resource limits, an audit hook that blocks the lab's modules,
   the repository's files, subprocesses, signals and ctypes) executes the code cells, calls
   each graded function on the cases' inputs and writes back only the outputs.
3. The parent compares the outputs with results it computes itself from the lab's code.
   What the child prints, how it patches torch or the check functions, what it claims:
   none of it reaches the comparison. Loading the outputs uses ``weights_only=True``.
4. Each cell and each question has a time limit. A cell or question that hangs, or that
   kills its process (``os._exit``), is reported, and a fresh child grades what is left.
5. A question whose function imports the lab's modules (the solutions), or opens the
   repository's files (the hidden tests), scores 0 with a message saying so.

Open questions are listed as "graded by hand" (0 automatic points) with the student's answer.
The sandbox needs Linux (``fork``, ``/proc``, resource limits and audit hooks).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lessons.assignments.build import MARKDOWN_STUB, strip_hidden_tests
from lessons.assignments.checks import ASSIGNMENTS, Assignment, Question
from lessons.assignments.checks import assignment as load_assignment

REPO = Path(__file__).resolve().parent.parent
SANDBOX = Path(__file__).resolve().parent / "assignments" / "sandbox.py"


@dataclass(frozen=True)
class Limits:
    """Time limits (seconds) for each question and each cell, and the sandbox's resources."""

    question_s: float = 30.0
    cell_s: float = 60.0
    startup_s: float = 60.0
    memory_mb: int = 4096
    file_mb: int = 64


@dataclass
class CheckResult:
    id: str
    title: str
    points: int
    earned: int
    hidden: bool
    message: str


@dataclass
class QuestionResult:
    id: str
    function: str
    points: int
    earned: int
    checks: list[CheckResult]
    note: str = ""


@dataclass
class HandGradedResult:
    id: str
    prompt: str
    answer: str
    note: str = "graded by hand (0 automatic points)"


@dataclass
class Report:
    submission: str
    assignment: str
    earned: int
    points: int
    questions: list[QuestionResult] = field(default_factory=list)
    hand_graded: list[HandGradedResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading a submission


def _read_notebook(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError("not a Jupyter notebook (no 'cells' list)")
    return nb


def _text(cell: object) -> str:
    source = cell.get("source", "") if isinstance(cell, dict) else ""
    return "".join(map(str, source)) if isinstance(source, list) else str(source)


def _identify(nb: dict, path: Path, forced: str | None) -> str:
    if forced:
        return forced
    meta = nb.get("metadata", {}).get("subnet_lab", {})
    name = meta.get("assignment") if isinstance(meta, dict) else None
    if name in ASSIGNMENTS:
        return name
    for known in ASSIGNMENTS:
        if known in path.name or path.name.startswith(known.split("_")[0] + "_"):
            return known
    raise ValueError(f"cannot tell which assignment this is (known: {sorted(ASSIGNMENTS)}); pass --assignment")


def _without_magics(source: str) -> str:
    """IPython magics and shell escapes are not Python; the sandbox runs plain Python."""
    return "\n".join(line[: len(line) - len(line.lstrip())] + "pass  # (magic removed)"
                     if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))


def code_cells(nb: dict) -> list[tuple[int, str]]:
    """(index, source) of every code cell, hidden tests removed."""
    return [(i, _without_magics(strip_hidden_tests(_text(c)))) for i, c in enumerate(nb["cells"])
            if isinstance(c, dict) and c.get("cell_type") == "code"]


def _hand_graded_answers(nb: dict, spec: Assignment) -> list[HandGradedResult]:
    """The markdown answer cells (tagged by the generator), in order, paired with the open questions."""
    def is_answer(cell: object) -> bool:
        meta = cell.get("metadata") if isinstance(cell, dict) else None
        tags = meta.get("tags") if isinstance(meta, dict) else None
        return isinstance(tags, list) and "answer" in tags and cell.get("cell_type") == "markdown"

    answers = [_text(c) for c in nb["cells"] if is_answer(c)]
    results = []
    for i, hg in enumerate(spec.hand_graded):
        answer = answers[i].strip() if i < len(answers) else ""
        results.append(HandGradedResult(hg.id, hg.prompt, "" if answer == MARKDOWN_STUB else answer))
    return results


def _defines(source: str, function: str) -> bool:
    name = re.escape(function)
    return bool(re.search(rf"^\s*(def\s+{name}\b|{name}\s*=|.*\bimport\b.*\b{name}\b)", source, flags=re.MULTILINE))


# ---------------------------------------------------------------- the sandbox


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
class _Run:
    """What the children reported, merged over restarts."""

    outputs: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    cell_errors: dict[int, str] = field(default_factory=dict)
    skipped_cells: dict[int, str] = field(default_factory=dict)
    denials: list[tuple[str, str]] = field(default_factory=list)  # (context, what)


def _watch(pid: int, parent: int, job_dir: Path, limits: Limits, run: _Run) -> tuple[str, str] | None:
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
                   cases: dict[str, list[tuple[str, Any]]], limits: Limits, protect: tuple[str, ...] = ()) -> _Run:
    """Run the cells and the graded functions in sandboxed children; restart after a hang or a crash.

    The children cannot read the repository (solutions, hidden tests, built solution
    notebooks), other jobs, or the folders in ``protect`` (e.g. the other submissions).
    """
    run = _Run()
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


# ---------------------------------------------------------------- scoring


def _plan(spec: Assignment) -> dict[str, list[tuple[str, Any]]]:
    """Every question's cases, keyed '<check id>/<case name>' (built here, in the grader)."""
    return {q.id: [(f"{c.id}/{case.name}", case) for c in q.checks for case in c.cases()] for q in spec.questions}


def _score_question(q: Question, planned: list[tuple[str, Any]], run: _Run, cells: list[tuple[int, str]]) -> QuestionResult:
    outputs = run.outputs.get(q.id, {})
    failure = run.failures.get(q.id)
    answer_cells = {str(i) for i, src in cells if _defines(src, q.function)}
    cheats = list(dict.fromkeys(
        what for unit, what in run.denials
        if unit == f"q {q.id}" or (unit.startswith("cell ") and unit.split(" ")[1] in answer_cells)
    ))
    results = []
    for check in q.checks:
        message = ""
        for key, case in planned:
            if not key.startswith(check.id + "/"):
                continue
            got = outputs.get(key)
            if failure:
                message = failure
            elif not isinstance(got, dict):
                message = "no result for this case"
            elif "error" in got:
                message = f"raised {got['error']}"
            else:
                try:
                    message = check.verify(case, got.get("output")) or ""
                except Exception as err:  # noqa: BLE001 - malformed output from the student's process
                    message = f"the output could not be checked ({type(err).__name__}: {err})"
            if message:
                message = f"case [{case.name}]: {message}"
                break
        earned = 0 if message or cheats else check.points
        results.append(CheckResult(check.id, check.title, check.points, earned, check.hidden, message))
    note = ""
    if cheats:
        note = ("0 points: the graded code tried to use what a submission may not use while graded "
                f"(the lab's solutions, the repository's files, processes or signals): {'; '.join(cheats[:3])}")
    elif failure:
        note = f"0 points: {failure}"
    return QuestionResult(q.id, q.function, q.points, sum(r.earned for r in results), results, note)


def grade_notebook(path: str | Path, *, assignment: str | None = None, limits: Limits = Limits(),
                   sandbox: Sandbox | None = None) -> Report:
    """Grade one submission. Never raises for a bad submission: problems become messages and 0 points."""
    path = Path(path)
    try:
        nb = _read_notebook(path)
        name = _identify(nb, path, assignment)
        spec = load_assignment(name, hidden=True)
        cells = code_cells(nb)
    except Exception as err:  # noqa: BLE001 - a malformed submission is a message, never a crash
        return Report(str(path), assignment or "?", 0, 0, notes=[f"could not grade: {type(err).__name__}: {err}"])
    planned = _plan(spec)
    own = sandbox is None
    sandbox = sandbox or Sandbox()
    try:
        run = run_submission(sandbox, cells, list(spec.questions), planned, limits, (str(path.resolve().parent),))
    finally:
        if own:
            sandbox.close()
    questions = [_score_question(q, planned[q.id], run, cells) for q in spec.questions]
    notes = [f"cell {i} raised {msg}" for i, msg in sorted(run.cell_errors.items())]
    notes += [f"cell {i} was skipped: {msg}" for i, msg in sorted(run.skipped_cells.items())]
    notes += [f"refused in {unit}: {what}" for unit, what in dict.fromkeys(run.denials)]
    return Report(str(path), name, sum(q.earned for q in questions), spec.points, questions,
                  _hand_graded_answers(nb, spec), notes)


# ---------------------------------------------------------------- output


def format_report(report: Report) -> str:
    lines = [f"{report.submission}: assignment {report.assignment}"]
    for q in report.questions:
        lines.append(f"{q.id} ({q.function}): {q.earned}/{q.points}" + (f"  [{q.note}]" if q.note else ""))
        for c in q.checks:
            mark = "PASS" if c.earned == c.points else "FAIL"
            tag = " (hidden)" if c.hidden else ""
            detail = f": {c.message}" if c.message else ""
            lines.append(f"  {mark} {c.earned}/{c.points}{tag} {c.title}{detail}")
    for hg in report.hand_graded:
        lines.append(f"{hg.id}: {hg.note}: {hg.prompt}")
        answer = " ".join(hg.answer.split())
        lines.append(f"  answer: {answer[:200] + ('...' if len(answer) > 200 else '') if answer else '(no answer)'}")
    for note in report.notes:
        lines.append(f"note: {note}")
    lines.append(f"total: {report.earned}/{report.points} automatic points")
    return "\n".join(lines)


def to_csv(reports: list[Report]) -> str:
    """One row per submission: total, maximum, then the points of every question."""
    qids = sorted({q.id for r in reports for q in r.questions})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["submission", "assignment", "total", "max", *qids, "notes"])
    for r in reports:
        by_id = {q.id: q.earned for q in r.questions}
        writer.writerow([r.submission, r.assignment, r.earned, r.points, *[by_id.get(q, "") for q in qids],
                         " | ".join(r.notes[:3])])
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessons.grade", description="Grade assignment notebooks.")
    parser.add_argument("paths", nargs="+", type=Path, help="submission notebooks or folders of them")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    parser.add_argument("--csv", type=Path, help="write one CSV row per submission to this file")
    parser.add_argument("--assignment", choices=sorted(ASSIGNMENTS), help="when the notebook does not say")
    parser.add_argument("--time-limit", type=float, default=Limits.question_s, help="seconds per question")
    parser.add_argument("--cell-time-limit", type=float, default=Limits.cell_s, help="seconds per code cell")
    args = parser.parse_args(argv)
    files: list[Path] = []
    for p in args.paths:
        if p.is_dir():
            files += sorted(p.glob("*.ipynb"))
        elif p.exists():
            files.append(p)
        else:
            parser.error(f"{p} does not exist")
    limits = Limits(question_s=args.time_limit, cell_s=args.cell_time_limit)
    with Sandbox() as sandbox:
        reports = [grade_notebook(f, assignment=args.assignment, limits=limits, sandbox=sandbox) for f in files]
    folder = any(p.is_dir() for p in args.paths)
    if args.csv:
        args.csv.write_text(to_csv(reports))
    if args.json:
        print(json.dumps([asdict(r) for r in reports] if folder or len(reports) > 1 else asdict(reports[0]), indent=2))
    elif folder and not args.csv:
        print(to_csv(reports), end="")
    else:
        print("\n\n".join(format_report(r) for r in reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
