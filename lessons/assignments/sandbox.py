"""Where a student's code runs while it is graded: a separate, fenced-off process.

The grader (``lessons.grade``) never runs student code itself. It starts this file as a
*zygote*, ``python -I sandbox.py zygote``: a clean process that imports torch once and then
forks one child per grading job, so a job starts in milliseconds instead of seconds. The
zygote holds no secret: no reference solution, no hidden test, no expected result.

A child (``_run_job``) executes the submission's code cells, calls the student's functions
on the inputs the grader sent, and writes back only their *outputs*; the grader compares
them with results it computes itself. Before any student code runs the child

* detaches into its own session and sends its stdout/stderr to a log file (a printed
  "score" reaches nobody);
* lowers its resource limits (file size, memory, CPU time, no core dumps);
* installs an audit hook (PEP 578; it cannot be removed) that refuses to import the lab
  (``sparsity``, ``toys``, ``lessons``, ...: the solutions), to open, list or change files
  of the repository (hidden tests, built solutions), of the folder holding the submission
  (other students' notebooks) or of other grading jobs, to write anything but its own output files,
  to start processes, send signals, use ctypes, trace frames or list the garbage
  collector's objects. Each refusal is reported to the grader, which scores the question
  involved 0.

Progress goes line by line to ``progress`` in the job folder (``cell 3``, ``q a1.magnitude_mask``,
``q_done ...``), so the grader can stop a cell or a question that runs past its time limit,
or find the one that killed the process (``sys.exit`` is caught here; ``os._exit`` is not
catchable), and start a fresh child for the rest.

``run_case`` and ``sanitize`` are also what the visible checks use in a notebook, so a
student's function is called the same way in both places. This module imports only the
standard library and torch.
"""

from __future__ import annotations

import math
import os
import re
import resource
import signal
import sys
from typing import Any

BLOCKED_PACKAGES = ("sparsity", "toys", "scaleup", "lessons", "benchmarks", "demo", "tests", "conftest")
"""Top-level modules a submission may not import while graded: the lab's code holds the solutions."""

BLOCKED_BUILTINS = ("_posixsubprocess", "_xxsubinterpreters", "_interpreters", "_xxinterpchannels")
"""Low-level modules that start processes or interpreters without the audit events that os and subprocess raise."""

FORBIDDEN_EVENTS = (
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn",
    "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "socket.connect", "socket.bind",
    # the ways to reach the hook itself or the grader's frames: tracing and the garbage collector's lists
    "sys.settrace", "sys.setprofile", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "cpython.PyInterpreterState_New",
)
PATH_EVENTS = (
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.chown", "os.utime",
    "os.link", "os.symlink", "shutil.rmtree", "shutil.copyfile", "shutil.copytree", "shutil.move",
    "os.listdir", "os.scandir", "glob.glob",
)
READ_ONLY_EVENTS = ("os.listdir", "os.scandir", "glob.glob")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def run_case(fn: Any, mode: str, args: tuple, kwargs: dict) -> Any:
    """Call a student's function on one test case.

    ``call``: ``fn(*args, **kwargs)``. ``steps``: an optimizer step function run over a list
    of gradients, ``param = fn(param, grad, mask, state, **kwargs)`` with one ``state`` dict
    kept across steps; returns the last ``param``. ``grad``: ``value = fn(model, ...)``, then
    ``value.backward()``; returns the value and the gradient of every parameter of ``model``.
    """
    if mode == "call":
        return fn(*args, **kwargs)
    if mode == "steps":
        param, grads, mask = args
        state: dict = {}
        for grad in grads:
            param = fn(param, grad, mask, state, **kwargs)
        return param
    if mode == "grad":
        model = args[0]
        value = fn(*args, **kwargs)
        value.backward()
        grads = {n: None if p.grad is None else p.grad for n, p in model.named_parameters()}
        return {"value": value, "grads": grads}
    raise ValueError(f"unknown case mode {mode!r}")


def sanitize(obj: Any, depth: int = 0) -> Any:
    """A copy of an output made of plain tensors, numbers, strings, lists, tuples and dicts.

    Those are what ``torch.load(weights_only=True)`` accepts, so the grader can read the
    output without running anything of the student's. Anything else is a TypeError.
    """
    import torch

    if depth > 20:
        raise TypeError("the output is nested too deeply")
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if type(t) is not torch.Tensor:
            t = t.as_subclass(torch.Tensor)
        if t.layout != torch.strided:
            t = t.to_dense()
        return t.clone()
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return float(obj)
    if hasattr(obj, "item") and callable(obj.item) and type(obj).__module__ == "numpy":
        return sanitize(obj.item(), depth + 1)
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"dict keys must be str or int, got {type(key).__name__}")
            out[key] = sanitize(value, depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        items = [sanitize(v, depth + 1) for v in obj]
        return tuple(items) if isinstance(obj, tuple) else items
    raise TypeError(f"returned an object of type {type(obj).__name__}; expected tensors, numbers, strings, lists or dicts")


def _path_of(arg: Any) -> str | None:
    if isinstance(arg, (str, bytes, os.PathLike)):
        try:
            return os.path.realpath(os.fsdecode(arg))
        except (TypeError, ValueError):
            return None
    return None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class Guard:
    """The audit hook: refuses what a graded function may not do, and reports each refusal.

    It writes only inside the job folder, to the files named in ``writable``; reads nothing
    under ``protected`` except below ``allowed`` (the Python installation, the job folder).
    Its settings are tuples, and tracing and the garbage collector's object lists are refused,
    so student code cannot reach it to loosen them.
    """

    def __init__(self, job_dir: str, protected: list[str], allowed: list[str], writable: list[str], report: Any) -> None:
        self.job_dir = os.path.realpath(job_dir)
        self.protected = tuple(os.path.realpath(p) for p in protected)
        self.allowed = (self.job_dir, *(os.path.realpath(p) for p in allowed))
        self.writable = tuple(os.path.join(self.job_dir, name) for name in writable)
        self.report = report

    def _protected(self, path: str) -> bool:
        if any(_under(path, a) for a in self.allowed):
            return False
        if re.match(r"/proc/\d+", path) and not path.startswith(f"/proc/{os.getpid()}"):
            return True
        return any(_under(path, p) for p in self.protected)

    def _deny(self, kind: str, detail: str, error: type[Exception]) -> None:
        self.report(f"deny {kind} {detail}")
        raise error(f"not allowed while grading: {kind} {detail}")

    def __call__(self, event: str, args: tuple) -> None:
        if event == "import":
            name = str(args[0])
            if name.split(".")[0] in BLOCKED_PACKAGES or name in BLOCKED_BUILTINS:
                self._deny("import", name, ImportError)
        elif event == "open":
            path = _path_of(args[0])
            if path is None:
                return
            mode, flags = (args[1] if len(args) > 1 else None), (args[2] if len(args) > 2 else 0)
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
            if self._protected(path):
                self._deny("open", path, PermissionError)
            if writes and path not in self.writable and path != os.devnull:
                if f"{os.sep}__pycache__{os.sep}" in path:
                    raise PermissionError("no bytecode caches while grading")  # Python ignores this quietly
                self._deny("write", path, PermissionError)
        elif event in PATH_EVENTS:
            for arg in args:
                path = _path_of(arg)
                if path is None:
                    continue
                if self._protected(path):
                    self._deny(event, path, PermissionError)
                if event not in READ_ONLY_EVENTS:
                    self._deny(event, path, PermissionError)
        elif event in FORBIDDEN_EVENTS or event.startswith("ctypes."):
            self._deny(event, "", PermissionError)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): the code called sys.exit()"
    return _one_line(f"{type(exc).__name__}: {exc}")


def _set_limits(limits: dict[str, float]) -> None:
    def lower(which: int, value: int) -> None:
        _, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))

    lower(resource.RLIMIT_CORE, 0)
    lower(resource.RLIMIT_FSIZE, int(limits["file_mb"]) << 20)
    lower(resource.RLIMIT_CPU, math.ceil(limits["cpu_s"]))
    with open("/proc/self/status") as status:  # address space already mapped (torch maps a lot)
        vm = next((int(line.split()[1]) for line in status if line.startswith("VmSize:")), 0)
    lower(resource.RLIMIT_AS, (vm << 10) + (int(limits["memory_mb"]) << 20))


def _drop_loaded(names: tuple[str, ...]) -> None:
    """Forget already-imported modules (and the functions other modules took from them), so that
    reaching them again means importing them, which the guard refuses."""
    for name in names:
        module = sys.modules.pop(name, None)
        if module is None:
            continue
        exported = {id(module)} | {id(v) for k, v in vars(module).items() if callable(v) and not k.startswith("__")}
        for other in list(sys.modules.values()):
            if not isinstance(other, type(sys)):
                continue
            for attr, value in list(vars(other).items()):
                if id(value) in exported:
                    setattr(other, attr, None)


def _run_job(job_dir: str) -> None:
    """The child: run one grading job in ``job_dir`` and exit. Never returns."""
    import torch

    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    log = os.open(os.path.join(job_dir, "output.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(devnull)
    os.close(log)
    sys.stdin = open(os.devnull)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    progress = open(os.path.join(job_dir, "progress"), "a", buffering=1)
    os.environ.update(HOME=job_dir, TMPDIR=job_dir, MPLCONFIGDIR=job_dir)
    import tempfile

    tempfile.tempdir = job_dir
    save, where = torch.save, os.path.join

    def report(line: str) -> None:
        progress.write(_one_line(line, 2000) + "\n")

    job = torch.load(where(job_dir, "job.pt"), weights_only=False)
    _set_limits(job["limits"])
    writable = ["progress", "output.log"] + [f"{q['id']}.pt" for q in job["questions"]]
    guard = Guard(job_dir, job["protected"], job["allowed"], writable, report)
    sys.path[:] = [p for p in sys.path if not guard._protected(os.path.realpath(p or "."))]  # e.g. an editable install
    sys.path_importer_cache.clear()
    _drop_loaded(BLOCKED_BUILTINS)
    sys.addaudithook(guard)
    del guard
    namespace: dict[str, Any] = {"__name__": "__submission__", "__builtins__": __builtins__}
    for index, source in job["cells"]:
        if index in job["skip_cells"]:
            continue
        report(f"cell {index}")
        try:
            exec(compile(source, f"<cell {index}>", "exec"), namespace)
        except BaseException as exc:  # noqa: BLE001 - a student's cell may raise anything, SystemExit included
            report(f"cell_error {index} {_describe(exc)}")
        report(f"cell_done {index}")
    for question in job["questions"]:
        report(f"q {question['id']}")
        results: dict[str, Any] = {}
        fn = namespace.get(question["function"])
        for case in question["cases"]:
            if not callable(fn):
                results[case["name"]] = {"error": f"{question['function']} is not defined as a function"}
                continue
            try:
                output = sanitize(run_case(fn, case["mode"], case["args"], case["kwargs"]))
                results[case["name"]] = {"output": output}
            except BaseException as exc:  # noqa: BLE001 - see above
                results[case["name"]] = {"error": _describe(exc)}
        try:
            save(results, where(job_dir, f"{question['id']}.pt"))
        except BaseException as exc:  # noqa: BLE001 - the student may have broken torch.save
            report(f"q_error {question['id']} could not save the outputs: {_describe(exc)}")
        report(f"q_done {question['id']}")
    report("end")
    progress.flush()
    os._exit(0)


def _warm_up(torch: Any) -> None:
    """Run once what torch imports lazily on first use (optimizers, SVD), so no child pays for it."""
    p = torch.nn.Parameter(torch.zeros(2, 2))
    p.grad = torch.ones(2, 2)
    torch.optim.AdamW([p]).step()
    torch.linalg.svd(torch.eye(2))
    torch.linalg.matrix_rank(torch.eye(2))


def _zygote() -> None:
    """Import torch once, then fork a child per job folder read from stdin; print each child's pid."""
    import torch

    torch.set_num_threads(1)
    _warm_up(torch)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    for line in sys.stdin:
        job_dir = line.strip()
        if not job_dir:
            continue
        pid = os.fork()
        if pid == 0:
            try:
                _run_job(job_dir)
            finally:
                os._exit(70)
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1:] != ["zygote"]:
        raise SystemExit("usage: python -I sandbox.py zygote (started by lessons.grade)")
    _zygote()
