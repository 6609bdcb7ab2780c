"""Peak memory of a block of code: what a training step costs beyond what was already there.

On a GPU, CUDA's allocator keeps the peak; on a Linux CPU the kernel keeps the process's
peak resident set (VmHWM), which writing 5 to /proc/self/clear_refs resets to the current
RSS (Linux >= 4.0), after ``malloc_trim`` hands freed memory back to the OS.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from collections.abc import Iterator
from pathlib import Path

import torch


class PeakMemory:
    """Peak memory of a block above its start, in MB: CUDA's allocator peak on a GPU; on Linux
    CPUs the process's peak resident set (VmHWM, reset through /proc/self/clear_refs); else NaN."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.mb = float("nan")

    @staticmethod
    def _kib(field_name: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise OSError(f"{field_name} not in /proc/self/status")

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            self._start = self._kib("VmRSS")
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self._start) / 2**20
        elif self._start is not None:
            self.mb = (self._kib("VmHWM") - self._start) / 1024


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Within the block, ``gc.collect()`` scans only the objects made inside it.

    A memory benchmark collects garbage before each measurement so that one set-up's cycles are
    not counted in the next. A full collection walks every object the process holds: in a test
    process that has imported transformers and the whole suite, about 0.15-0.4 s per call, most
    of a fast-mode benchmark's time. ``gc.freeze()`` moves what exists at the start (modules,
    imports: never the block's garbage) out of the collector's reach; ``gc.unfreeze()`` puts it
    back at the end, as the caller had it.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
