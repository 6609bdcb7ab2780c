"""Argument types for the lab's command lines: a bad flag is an argparse error before any work.

``argparse`` calls a flag's ``type`` on its text and turns an ``ArgumentTypeError`` into the
usual ``usage: ... error: argument --lr: ...`` message and exit status 2. So every number a
run multiplies by must be finite here (``--lr inf`` would train a model of NaN), every count
positive, and every output path writable *before* training starts, not after an hour of it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def finite_nonnegative(text: str) -> float:
    """A learning rate or a penalty strength: a finite number >= 0."""
    value = _number(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a {what} int, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be a {what} int, got {value}")
    return value


def positive_int(text: str) -> int:
    """A count (steps, seeds, threads): an int >= 1."""
    return _int_at_least(text, 1, "positive")


def nonnegative_int(text: str) -> int:
    """A seed or an offset: an int >= 0."""
    return _int_at_least(text, 0, "non-negative")


SEED_MAX = 2**32 - 1
"""The largest seed a command line takes: every generator the lab seeds (torch, numpy, Python) takes it,
with room for the offsets studies add to it (a seed of 10**20 overflows torch's 64-bit seed)."""


def random_seed(text: str) -> int:
    """A random seed: an int in [0, 2**32 - 1]."""
    value = nonnegative_int(text)
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be a seed in [0, {SEED_MAX}], got {value}")
    return value


def finite_list(text: str) -> tuple[float, ...]:
    """Comma-separated finite numbers, e.g. a learning-rate grid ``1e-4,3e-4``."""
    values = tuple(_number(x) for x in text.split(",") if x.strip())
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated finite numbers, got {text!r}")
    return values


def output_file(text: str) -> Path:
    """A file to write: its folder must exist and it must not be a folder itself."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {path.parent} does not exist")
    return path


def output_folder(text: str) -> Path:
    """A folder to write into (made if missing): it must not be an existing file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return path


def _finite_or_none(value: object, path: str, bad: list[str]) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        bad.append(path)
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v, f"{path}.{k}" if path else str(k), bad) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v, f"{path}[{i}]", bad) for i, v in enumerate(value)]
    return value


def json_ready(summary: dict[str, object]) -> dict[str, object]:
    """``summary`` as strict JSON data: a non-finite number becomes ``null`` and its path is listed
    under ``"non_finite"`` (``NaN`` is not JSON, and a reader must see that a value is missing)."""
    bad: list[str] = []
    clean = _finite_or_none(summary, "", bad)
    assert isinstance(clean, dict)
    if bad:
        clean["non_finite"] = bad
    return clean
