"""Run the independent cells of an experiment grid in this process, on a local process pool or on Ray.

A grid's cells (settings in, one row of results out) do not depend on each other, so they can
run anywhere. What they share (a pretrained model, a task world) is *worker state*: a
:class:`Worker` builds it once per worker process and reuses it for every cell that worker runs.
:meth:`Executor.run` yields ``(cell, row)`` in the driver as cells finish, in any order: only the
driver writes results (a store never has two writers), and a killed run loses only the cells in
flight.

Backends: one worker runs in this process, in order (the caller's torch settings, the state it
may pass in); ``"process"`` a pool of *spawned* processes (a fork of a process that has run
torch can deadlock: its thread pools do not survive the fork); ``"ray"`` actors on a Ray cluster
(``address`` None starts a local instance, ``"auto"`` joins the one ``ray start`` made; Ray is
the optional ``ray`` extra, imported only here and only then). At most ``workers`` cells are in
flight, so a failure or a stop wastes little. Each worker runs torch on ``threads`` CPU threads
(1 by default): a CPU matmul's rounding depends on the thread count, so its rows match a serial
run on one thread bit for bit. A cell that raises in a worker is re-raised in the driver as
:class:`CellFailed`, naming the cell.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sparsity.validate import check_positive_int

Cell = Mapping[str, Any]
Row = dict[str, Any]
EXECUTORS = ("process", "ray")
RAY_INSTALL = 'pip install -e ".[ray]"'

__all__ = ["EXECUTORS", "CellFailed", "Executor", "Worker", "check_executor", "describe"]


@dataclass(frozen=True)
class Worker:
    """How a worker builds its state once (``init(*args)``) and runs one cell with it (``run(state, cell)``,
    a row). ``init`` and ``run`` are module-level functions (or partials of them) and ``args`` picklable
    data: they travel to other processes by pickle."""

    init: Callable[..., Any]
    args: tuple[Any, ...]
    run: Callable[[Any, Cell], Row]


class CellFailed(RuntimeError):
    """A cell raised in a worker; the message names the cell, ``__cause__`` is the worker's exception."""


def describe(cell: Cell) -> str:
    """A cell for a message: ``method='lift', lr=0.01, seed=0``."""
    return ", ".join(f"{k}={v!r}" for k, v in cell.items())


class _Held:
    """A worker's state, built once on ``threads`` torch threads. A failed build is raised again by every
    cell, so that the driver sees it, named, instead of a pool that died without saying why."""

    def __init__(self, worker: Worker, threads: int) -> None:
        self.worker, self.error = worker, None
        try:
            torch.set_num_threads(threads)
            self.state = worker.init(*worker.args)
        except Exception as e:  # noqa: BLE001 (re-raised, named, by run)
            self.error = e

    def run(self, cell: Cell) -> Row:
        if self.error is not None:
            raise RuntimeError(f"the worker's state could not be built: {type(self.error).__name__}: "
                               f"{self.error}") from self.error
        return self.worker.run(self.state, cell)


_HELD: _Held | None = None
"""The worker state of this process, when it is a process-pool worker."""


def _process_init(worker: Worker, threads: int) -> None:
    global _HELD
    _HELD = _Held(worker, threads)


def _process_run(cell: Cell) -> Row:
    assert _HELD is not None, "_process_run runs in a pool started with _process_init"
    return _HELD.run(cell)


class _Pending:
    """A cell the serial backend runs when its result is asked for (a handle hashed by identity)."""

    __slots__ = ("cell",)

    def __init__(self, cell: Cell) -> None:
        self.cell = cell


class _Serial:
    """This process, one cell at a time, with the caller's torch settings (and state, if given)."""

    def __init__(self, worker: Worker, state: Any) -> None:
        self.worker = worker
        self.state = worker.init(*worker.args) if state is None else state

    def submit(self, cell: Cell) -> _Pending:
        return _Pending(cell)

    def wait(self, handles: list[_Pending]) -> list[_Pending]:
        return handles[:1]

    def result(self, handle: _Pending) -> Row:
        return self.worker.run(self.state, handle.cell)

    def close(self) -> None:
        pass


class _Processes:
    """A pool of spawned processes, each holding its worker state."""

    def __init__(self, worker: Worker, workers: int, threads: int) -> None:
        self.pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_process_init, initargs=(worker, threads))

    def submit(self, cell: Cell) -> cf.Future[Row]:
        return self.pool.submit(_process_run, cell)

    def wait(self, handles: list[cf.Future[Row]]) -> list[cf.Future[Row]]:
        return list(cf.wait(handles, return_when=cf.FIRST_COMPLETED).done)

    def result(self, handle: cf.Future[Row]) -> Row:
        return handle.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(f"the ray executor needs Ray: {RAY_INSTALL}") from None
    return ray


class _Ray:
    """Ray actors (``threads`` CPUs each), each holding its worker state; a local instance when ``address``
    is None (shut down again at the end), else the cluster at ``address``."""

    def __init__(self, worker: Worker, workers: int, threads: int, address: str | None) -> None:
        self.ray = ray = _ray()
        self.started = not ray.is_initialized()
        if self.started:
            local = {"num_cpus": workers * threads, "include_dashboard": False} if address is None else {}
            try:
                ray.init(address=address, **local)
            except Exception as e:  # Ray gives its raylet a fixed 30 s to register, too short on a loaded machine
                if "timed out during startup" not in str(e):
                    raise
                warnings.warn(f"Ray did not start ({e}); trying once more", stacklevel=2)
                ray.shutdown()
                ray.init(address=address, **local)
        actor = ray.remote(num_cpus=threads)(_Held)
        self.idle = deque(actor.remote(worker, threads) for _ in range(workers))
        self.busy: dict[Any, Any] = {}

    def submit(self, cell: Cell) -> Any:
        actor = self.idle.popleft()
        ref = actor.run.remote(cell)
        self.busy[ref] = actor
        return ref

    def wait(self, handles: list[Any]) -> list[Any]:
        return self.ray.wait(handles, num_returns=1)[0]

    def result(self, handle: Any) -> Row:
        self.idle.append(self.busy.pop(handle))
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayTaskError as e:  # the worker's own exception, Ray's traceback as its cause
            raise e.cause from e

    def close(self) -> None:
        for actor in [*self.idle, *self.busy.values()]:
            self.ray.kill(actor)
        if self.started:
            self.ray.shutdown()


def check_executor(executor: str, workers: int) -> None:
    """Refuse an unknown executor, a worker count that is not a positive int, and Ray where it is not
    installed (with the command that installs it), before any work."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    check_positive_int(workers, "workers")
    if executor == "ray" and workers > 1:
        _ray()


class Executor:
    """Runs cells with ``workers`` workers: this process (1), a process pool or Ray (``executor``).

    ``state``: the serial worker's state, already built (the driver's own); ignored by the others.
    The pool starts on the first cell to run, so a grid with nothing left to do starts nothing.
    Use it as a context manager: leaving stops the workers (and a local Ray instance).
    """

    def __init__(self, worker: Worker, workers: int = 1, executor: str = "process", *, address: str | None = None,
                 threads: int = 1, state: Any = None) -> None:
        if not isinstance(worker, Worker):
            raise TypeError(f"worker must be a sparsity.executor.Worker, got {type(worker).__name__}")
        check_executor(executor, workers)
        self.workers, self.threads = workers, check_positive_int(threads, "threads")
        self.worker, self.executor, self.address, self.state = worker, executor, address, state
        self.backend: Any = None

    def _start(self) -> Any:
        if self.backend is None:
            if self.workers == 1:
                self.backend = _Serial(self.worker, self.state)
            elif self.executor == "process":
                self.backend = _Processes(self.worker, self.workers, self.threads)
            else:
                self.backend = _Ray(self.worker, self.workers, self.threads, self.address)
        return self.backend

    def run(self, cells: Iterable[Cell]) -> Iterator[tuple[Cell, Row]]:
        """Run every cell; yield ``(cell, row)`` as each finishes. Raises :class:`CellFailed` for a cell that
        raised (the cells still in flight are dropped); stopping early drops the cells not yet finished."""
        queue = deque(cells)
        if not queue:
            return
        backend = self._start()
        flying: dict[Any, Cell] = {}
        try:
            while queue or flying:
                while queue and len(flying) < self.workers:
                    cell = queue.popleft()
                    flying[backend.submit(cell)] = cell
                for handle in backend.wait(list(flying)):
                    cell = flying.pop(handle)
                    try:
                        row = backend.result(handle)
                    except Exception as e:
                        raise CellFailed(f"cell ({describe(cell)}) failed: {type(e).__name__}: {e}") from e
                    yield cell, row
        finally:
            if flying:  # a failure, or the caller stopped early: the cells in flight are dropped with their workers
                self.close()

    def close(self) -> None:
        """Stop the workers (idempotent); the next :meth:`run` starts new ones."""
        if self.backend is not None:
            backend, self.backend = self.backend, None
            backend.close()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
