"""Shared test settings: every test runs the CI-sized (fast mode) configuration."""

import os
from pathlib import Path

os.environ["LAB_FAST"] = "1"
# Idle OpenMP threads spin by default and starve other processes on a 2-core machine
# (the notebook kernels the lesson tests start, for one): let them sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from sparsity.threads import use_threads  # noqa: E402
from run_order import spread  # noqa: E402

matplotlib.use("Agg")
use_threads()  # the lab's choice (sparsity.threads): one thread unless LAB_THREADS says otherwise
if not torch.cuda.is_available():
    # Before any test module imports triton (transformers' Trainer does): its kernels then run on CPU
    # tensors in the interpreter, which the 2:4 kernel tests need (tests/test_semistructured.py).
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the longest tests first, on every xdist worker (tests/run_order.py), so none of them starts at
    the end of the run or queues behind the others on one worker."""
    items[:] = spread(items, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


@pytest.fixture(params=["kernel", "torch"])
def sparse_cpu_route(request, monkeypatch):
    """Run a test twice: through our compiled CPU kernels (sparsity.kernels.sparse_cpu) and through
    the torch-operations fallback that runs where they cannot be built."""
    from sparsity.kernels import sparse_cpu

    if request.param == "kernel" and sparse_cpu.load() is None:
        pytest.skip("the CPU kernels could not be built here (no C++ compiler or ninja?)")
    if request.param == "torch":
        monkeypatch.setattr(sparse_cpu, "load", lambda: None)
    return request.param


def _run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary folder of the whole run: under pytest-xdist, the one that holds every worker's own."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(scope="session")
def assignments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The instructor's build of every assignment (``lessons.assignments.build``: student notebooks, their
    ``solutions/`` and the cases), made once for the whole run and shared by the grading tests. Under
    pytest-xdist the first worker to ask builds it in the run's common temporary folder while the others
    wait on a file lock, then read it. Treat it as read-only: copy a notebook before changing it."""
    from filelock import FileLock  # torch's own dependency

    from lessons.assignments.build import build

    root = _run_folder(tmp_path_factory)
    out, done = root / "assignments", root / "assignments.built"
    with FileLock(str(root / "assignments.lock")):
        if not done.exists():
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pretrained-model cache for the whole run, shared by the xdist workers: a model that one test
    pretrained is loaded, not pretrained again, by the next test (on any worker) that asks for the same
    config. Safe to share: ``scaleup.pretrain`` writes each checkpoint to its own temporary file and
    renames it into place, so a reader sees a whole file or none. Tests that damage a cached file use
    a private folder instead."""
    folder = _run_folder(tmp_path_factory) / "pretrained-cache"
    folder.mkdir(exist_ok=True)
    return folder
