"""Running a lesson notebook from Python (nbclient) without the client missing a kernel's message.

``tests/test_lessons.py`` and ``benchmarks/lesson_times.py`` execute the lessons with nbclient.
On a loaded 2-core machine, and sometimes on a quiet one, one long ``zmq.asyncio`` poll misses
its wake-up: the client then waits for the whole cell timeout while the kernel idles too
(jupyter/nbclient#312). :func:`patch_message_polling` makes jupyter_client wait for each message
in short polls instead, so a missed wake-up costs one poll, not the cell's timeout. The test took
it first; the timing benchmark, without it, hung with the kernel and the client both idle.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

POLL_S = 0.2


async def sliced_get_msg(self: Any, timeout: float | None = None) -> dict:
    """``AsyncZMQSocketChannel.get_msg``, polling in slices of :data:`POLL_S` seconds until ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = POLL_S if deadline is None else min(POLL_S, max(0.0, deadline - time.monotonic()))
        if await self.socket.poll(int(left * 1000)):
            return await self._recv()
        if deadline is not None and time.monotonic() >= deadline:
            raise Empty


def patch_message_polling() -> None:
    """Make every ``AsyncZMQSocketChannel`` (nbclient's channels) wait for messages in short polls."""
    from jupyter_client.channels import AsyncZMQSocketChannel

    AsyncZMQSocketChannel.get_msg = sliced_get_msg  # type: ignore[method-assign]
