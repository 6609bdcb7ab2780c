"""Kernels of our own: CPU ones in C++ (`sparse_cpu`, built by `python -m sparsity.kernels`) and GPU ones in
Triton. Import the Triton ones lazily: the core must import without triton."""

import os


def triton_interpreter() -> bool:
    """True when ``TRITON_INTERPRET=1`` asks Triton to run kernels on CPU tensors (set it before importing triton)."""
    return os.environ.get("TRITON_INTERPRET", "").strip() in ("1", "true", "True")
