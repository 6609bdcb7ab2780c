"""Where a student's code runs while it is graded: a child process the grader does not trust.

The grader (``lessons.grade``) never runs student code itself. For each grading job it starts
this file as ``python -I sandbox.py FD``, normally inside a bubblewrap sandbox
(``lessons/grading/bubblewrap.py``): its own user namespace (where it is nobody), PID,
network, IPC and mount namespaces, a seccomp filter, a filesystem holding only the Python
environment (read-only), this one file and a private, size-limited, noexec scratch ``/tmp``.
The lab's code, its hidden tests, other submissions and build or temp folders are not there.

The child reads the grader's messages on stdin (length-prefixed pickles, from the grader it
trusts): first the settings and the code cells. Before anything else it adds the grader's
seccomp filter (no ``execve``: bubblewrap's own filter could not refuse it, it needs it to
start this file), then lowers its resource limits and installs a second line of defence (an
audit hook, PEP 578, refusing the lab's modules, processes, signals, sockets, ctypes, tracing
and the garbage collector's lists, with all of its state frozen in a closure at install
time), runs the cells and says "ready". Then it receives one question at a time, its inputs
sent when its clock starts, and calls the function on each case. It writes JSON lines to
file descriptor ``FD``: which cell runs, refusals, and each question's outputs (tensors as
raw bytes in base64; no pickle). The grader treats every line as untrusted: it keeps its own
clock, lets an event advance it only to the next unit, and validates every output's
structure and size before comparing it.

``run_case`` and ``sanitize`` are also what the visible checks use in a notebook, so a
student's function is called the same way in both places. This module imports only the
standard library and torch.
"""

from __future__ import annotations

import base64
import json
import math
import os
import pickle
import resource
import struct
import sys
from typing import Any

MAX_NODES = 100_000
"""The most values (tensors, numbers, strings, containers) one output may hold."""

BLOCKED_PACKAGES = frozenset(("sparsity", "toys", "scaleup", "lessons", "benchmarks", "demo", "tests", "conftest"))
"""Top-level modules a submission may not import while graded: the lab's code holds the solutions."""

BLOCKED_MODULES = frozenset(("_posixsubprocess", "_xxsubinterpreters", "_interpreters", "_xxinterpchannels", "ctypes",
                             "_ctypes"))
"""Low-level modules that start processes or interpreters, or call C directly, without the usual audit events."""

FORBIDDEN_EVENTS = frozenset((
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn",
    "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "resource.prlimit", "resource.setrlimit",
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.__new__",
    "sys.settrace", "sys.setprofile", "sys._current_frames", "gc.get_objects", "gc.get_referrers",
    "gc.get_referents", "cpython.PyInterpreterState_New",
))


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


def sanitize(obj: Any, depth: int = 0, budget: list[int] | None = None) -> Any:
    """A copy of an output made of plain tensors, numbers, strings, lists, tuples and str-keyed dicts.

    At most ``MAX_NODES`` values in all, counted as a tree: an output that shares one list
    many times over is as large as it would be written out, and is refused here instead
    of blowing up whoever reads it. Anything else is a TypeError.
    """
    import torch

    budget = [MAX_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise TypeError(f"the output holds more than {MAX_NODES} values")
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
        return sanitize(obj.item(), depth + 1, budget)
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"dict keys must be str, got {type(key).__name__}")
            out[key] = sanitize(value, depth + 1, budget)
        return out
    if isinstance(obj, (list, tuple)):
        items = [sanitize(v, depth + 1, budget) for v in obj]
        return tuple(items) if isinstance(obj, tuple) else items
    raise TypeError(f"returned an object of type {type(obj).__name__}; expected tensors, numbers, strings, lists or dicts")


def encode(obj: Any) -> Any:
    """A sanitized output as JSON data: a tensor is ``{"__tensor__": [dtype, shape, base64 bytes]}``,
    a tuple ``{"__tuple__": [...]}`` (``lessons.grading.wire`` reads it back)."""
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.contiguous().cpu()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return {"__tensor__": [str(t.dtype).removeprefix("torch."), list(t.shape), base64.b64encode(raw).decode()]}
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v) for v in obj]}
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    return obj


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return "SystemExit: the code called sys.exit()"
    return _one_line(f"{type(exc).__name__}: {exc}")


def _set_limits(limits: dict[str, float]) -> None:
    def lower(which: int, value: int) -> None:
        _, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))

    lower(resource.RLIMIT_CORE, 0)
    lower(resource.RLIMIT_FSIZE, int(limits["file_mb"]) << 20)
    lower(resource.RLIMIT_CPU, math.ceil(limits["cpu_s"]))
    lower(resource.RLIMIT_NPROC, 256)
    with open("/proc/self/status") as status:  # address space already mapped (torch maps a lot)
        vm = next((int(line.split()[1]) for line in status if line.startswith("VmSize:")), 0)
    lower(resource.RLIMIT_AS, (vm << 10) + (int(limits["memory_mb"]) << 20))


def _install_hook(report: Any) -> None:
    """The second line of defence. Everything the hook uses is bound here, as default arguments,
    so nothing a submission can reach (module globals, builtins) changes what it refuses."""

    def hook(event: str, args: tuple, _report=report, _packages=BLOCKED_PACKAGES, _modules=BLOCKED_MODULES,
             _events=FORBIDDEN_EVENTS, _str=str, _perm=PermissionError, _imp=ImportError) -> None:
        if event == "import":
            name = _str(args[0])
            if name.partition(".")[0] in _packages or name in _modules:
                _report(f"import {name}")
                raise _imp(f"not allowed while grading: import {name}")
        elif event in _events or event.startswith("ctypes."):
            _report(event)
            raise _perm(f"not allowed while grading: {event}")

    sys.addaudithook(hook)


def _read_message(fd: int) -> Any:
    """One message from the grader: 8 bytes of length, then a pickle (see ``lessons.grading.runner.frame``)."""
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = os.read(fd, min(n - len(data), 1 << 20))
            if not chunk:
                raise SystemExit("the grader closed the job channel")
            data += chunk
        return data

    (size,) = struct.unpack(">Q", exactly(8))
    return pickle.loads(exactly(size))


def _load_seccomp(program: bytes, syscall_nr: int) -> None:
    """Add the grader's seccomp filter (bubblewrap's cannot refuse ``execve``: it needs it itself).

    Loaded before torch is imported, so it covers every thread (later threads inherit it);
    ctypes is dropped from ``sys.modules`` again so that a submission must import it anew."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(program, len(program))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(program) // 8, ctypes.addressof(buffer))
    if libc.prctl(38, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:  # NO_NEW_PRIVS
        raise SystemExit(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
    if libc.syscall(ctypes.c_long(syscall_nr), ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.byref(prog)) != 0:
        raise SystemExit(f"seccomp(SECCOMP_SET_MODE_FILTER) failed: {os.strerror(ctypes.get_errno())}")
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]


def _main(fd: int) -> None:
    """The child: run one grading job, writing JSON lines to ``fd``. Never returns."""
    channel = os.dup(0)  # the grader's messages; fd 0 becomes /dev/null below
    job = _read_message(channel)
    if job["isolated"]:
        _load_seccomp(job["seccomp"], job["seccomp_nr"])
        if os.getuid() == 0 or os.geteuid() == 0:
            raise SystemExit("refusing to run a submission as root")
    import torch

    write, dumps = os.write, json.dumps

    def emit(event: dict) -> None:
        data = (dumps(event) + "\n").encode()
        while data:
            data = data[write(fd, data):]

    def deny(what: str) -> None:
        emit({"e": "deny", "what": _one_line(what)})

    devnull = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):  # what a submission prints reaches nobody
        os.dup2(devnull, target)
    os.close(devnull)
    sys.stdin, sys.stdout, sys.stderr = (open(i, mode, buffering=1, closefd=False) for i, mode in
                                         ((0, "r"), (1, "w"), (2, "w")))
    torch.set_num_threads(1)
    _set_limits(job["limits"])
    if job["audit_hook"]:
        _install_hook(deny)
    namespace: dict[str, Any] = {"__name__": "__submission__", "__builtins__": __builtins__}
    for index, source in job["cells"]:
        emit({"e": "cell", "i": index})
        try:
            exec(compile(source, f"<cell {index}>", "exec"), namespace)
        except BaseException as exc:  # noqa: BLE001 - a student's cell may raise anything, SystemExit included
            emit({"e": "cell_error", "i": index, "msg": _describe(exc)})
    emit({"e": "ready"})
    while True:  # one question at a time: its inputs arrive when its clock starts
        question = _read_message(channel)
        results: dict[str, Any] = {}
        fn = namespace.get(question["function"])
        for case in question["cases"]:
            if not callable(fn):
                results[case["name"]] = {"error": f"{question['function']} is not defined as a function"}
                continue
            try:
                output = sanitize(run_case(fn, case["mode"], case["args"], case["kwargs"]))
                results[case["name"]] = {"output": encode(output)}
            except BaseException as exc:  # noqa: BLE001 - see above
                results[case["name"]] = {"error": _describe(exc)}
        try:
            emit({"e": "out", "id": question["id"], "cases": results})
        except BaseException as exc:  # noqa: BLE001 - e.g. an output torch could not write as bytes
            emit({"e": "q_error", "id": question["id"], "msg": f"could not send the outputs: {_describe(exc)}"})


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        raise SystemExit("usage: python -I sandbox.py FD (started by lessons.grade)")
    try:
        _main(int(sys.argv[1]))
    finally:
        os._exit(70)
