"""Build the CPU kernels now (``python -m sparsity.kernels``): ``make``'s set-up step runs this, so the
first process that needs them (a test, a lesson) does not spend minutes compiling them while others wait."""

import time

from sparsity.kernels import sparse_cpu


def main() -> int:
    """Build or load the kernels; say where they are and how long it took. Exits 0 where no compiler is
    available: the torch-operations path serves then (with the warning :func:`sparse_cpu.load` gives)."""
    start = time.perf_counter()
    kernel = sparse_cpu.load()
    where = sparse_cpu.build_directory()
    if kernel is None:
        print(f"the CPU kernels could not be built in {where}; the torch-operations path will serve", flush=True)
    else:
        print(f"the CPU kernels are ready in {where} ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
