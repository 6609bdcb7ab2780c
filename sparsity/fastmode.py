"""Fast mode: the one switch (``LAB_FAST=1``) that shrinks every lesson, CLI default and
benchmark to a CI-sized run on a 2-core CPU. It is read here and nowhere else."""

from __future__ import annotations

import os


def fast_mode() -> bool:
    """True when the environment variable ``LAB_FAST`` is set to 1/true/yes."""
    return os.environ.get("LAB_FAST", "").strip().lower() in ("1", "true", "yes")
