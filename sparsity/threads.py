"""How many CPU threads torch runs on: chosen here, in one place, for the size of the work.

Two reasons to run the lab's small models on one intra-op thread: tiny matrices gain nothing from
splitting across threads (on a shared core, spinning threads that wait for each other can make a
small step several times slower: `benchmarks/results/threads.md` measures it per GPT preset), and a
CPU matmul's rounding depends on the thread count, so a result that must be the same bit for bit
on any machine (a cached checkpoint) has to fix it.

So every entry point (the demo, the command lines, the lessons' first cell, the tests) calls
:func:`use_threads` once: one thread for the lab's models, all usable CPUs for a model of at
least :data:`MANY_THREADS_FROM` parameters, and whatever the environment variable ``LAB_THREADS``
says above both (``LAB_THREADS=4 make demo FULL=1`` gives a big run four threads).
:func:`one_thread` pins one thread for a block whose bits must not depend on the machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch

THREADS_ENV = "LAB_THREADS"
"""The environment variable that overrides the choice: a positive number of threads."""

MANY_THREADS_FROM = 2_000_000
"""Models with at least this many parameters get every usable CPU; smaller ones get one thread.
Between the ``tiny`` (~0.46M parameters) and ``small`` (~4.8M) GPT presets."""


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def choose_threads(parameters: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The torch thread count for work on a model of ``parameters`` parameters (None: the lab's
    small models), read from ``environ`` (default ``os.environ``).

    ``LAB_THREADS`` set to a positive integer wins; anything else there is an error naming it.
    Without it: 1 below :data:`MANY_THREADS_FROM` parameters, :func:`usable_cpus` from there on.
    """
    environ = os.environ if environ is None else environ
    told = environ.get(THREADS_ENV, "").strip()
    if told:
        try:
            threads = int(told)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer (a number of torch threads), got {told!r}")
        return threads
    if parameters is None:
        return 1
    if isinstance(parameters, bool) or not isinstance(parameters, int) or parameters < 0:
        raise ValueError(f"parameters must be a non-negative int (a model's parameter count), got {parameters!r}")
    return 1 if parameters < MANY_THREADS_FROM else usable_cpus()


def use_threads(parameters: int | None = None) -> int:
    """Set torch's intra-op thread count to :func:`choose_threads` ``(parameters)`` for the rest of
    the process and return it. Entry points call it once, before any torch work."""
    threads = choose_threads(parameters)
    torch.set_num_threads(threads)
    return threads


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op CPU thread inside the block (or the decorated function), then
    restore the previous setting, also when the block raises."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
