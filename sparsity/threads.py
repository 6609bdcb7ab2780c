"""One CPU thread for a block of torch work, for speed and for reproducible bits.

Two reasons to run on one intra-op thread: tiny matrices gain nothing from splitting across
threads (on a shared core, spinning threads that wait for each other can make a small step many
times slower), and a CPU matmul's rounding depends on the
thread count, so a result that must be the same bit for bit on any machine (a cached
checkpoint) has to fix it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


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
