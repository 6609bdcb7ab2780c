"""GPU kernels of our own, written in Triton. Import them lazily: the core must import without triton."""

import os


def triton_interpreter() -> bool:
    """True when ``TRITON_INTERPRET=1`` asks Triton to run kernels on CPU tensors (set it before importing triton)."""
    return os.environ.get("TRITON_INTERPRET", "").strip() in ("1", "true", "True")
