"""Fast mode: the one switch (``LAB_FAST=1``) that shrinks every lesson, CLI default and
benchmark to a CI-sized run on a 2-core CPU. It is read here and nowhere else.

Only entry points ask :func:`fast_mode` (a command line's ``main``, a lesson's first cell): they
pass the answer down as an argument (``default_config(fast=...)``), so a library function's size
depends on what its caller says, never on the environment it happens to run in."""

from __future__ import annotations

import os


def fast_mode() -> bool:
    """True when the environment variable ``LAB_FAST`` is set to 1/true/yes."""
    return os.environ.get("LAB_FAST", "").strip().lower() in ("1", "true", "yes")
