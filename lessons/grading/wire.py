"""Reading back what a student's process sent, trusting none of it.

The child (``lessons/assignments/sandbox.py``) writes JSON lines; this module turns one
line into an event and one question's outputs into tensors, numbers, strings, lists,
tuples and dicts, within fixed budgets (bytes, values, depth, tensor sizes and dtypes; every size of a shape,
so an empty tensor cannot hide an overflowing one), with control characters escaped in
every string,
and checks that an output has the structure its question returns before any comparison
or message looks at it. JSON, not pickle: reading it runs nothing of the sender's, and
its values form a tree, so a structure that shares itself cannot grow here.
"""

from __future__ import annotations

import base64
import json
import math
import unicodedata
from typing import Any

import torch

MAX_NODES = 100_000
MAX_DEPTH = 24
MAX_TENSOR_BYTES = 16 << 20
MAX_STRING = 10_000
DTYPES = {name: getattr(torch, name) for name in (
    "bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64")}


class WireError(ValueError):
    """An event or output that does not have the structure the grader expects."""


def escape_controls(text: str) -> str:
    """``text`` with every control or format character but newline and tab (ESC, CR, NUL, BiDi
    overrides...) written as its escape (``\\x1b``), so that no text from a submission can move a
    terminal's cursor or overwrite a line (reports put newlines and tabs on one line themselves)."""
    return "".join(c if c in "\n\t" or unicodedata.category(c)[0] != "C" else c.encode("unicode_escape").decode()
                   for c in text)


def printable(value: Any, limit: int = 300) -> str:
    """Text from a submission as one printable line: whitespace runs become one space, other
    control characters their escapes (``escape_controls``), cut to ``limit`` characters."""
    text = escape_controls(" ".join(str(value).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_event(line: bytes) -> dict | None:
    """One JSON line as a dict with a string ``e`` field, else None (ignored)."""
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) and isinstance(event.get("e"), str) else None


def _tensor(spec: Any) -> torch.Tensor:
    if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str) and isinstance(spec[1], list)
            and isinstance(spec[2], str)):
        raise WireError("a tensor must be [dtype, shape, data]")
    dtype, shape, data = spec
    if dtype not in DTYPES:
        raise WireError(f"tensors of dtype {dtype[:40]!r} are not accepted")
    if len(shape) > 8 or not all(type(d) is int and 0 <= d < 1 << 31 for d in shape):
        raise WireError("a tensor's shape must be at most 8 non-negative sizes")
    if math.prod(max(d, 1) for d in shape) > MAX_TENSOR_BYTES:  # an empty tensor's other sizes count too
        raise WireError(f"a tensor's shape {shape} is larger than any output may be")
    numel = math.prod(shape)
    itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
    if numel * itemsize > MAX_TENSOR_BYTES or len(data) > 2 * MAX_TENSOR_BYTES:
        raise WireError(f"a tensor of more than {MAX_TENSOR_BYTES >> 20} MB")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise WireError("a tensor's data is not base64") from None
    if len(raw) != numel * itemsize:
        raise WireError(f"a tensor of shape {shape} holds {len(raw)} bytes, not {numel * itemsize}")
    if not raw:
        return torch.empty(shape, dtype=DTYPES[dtype])
    if dtype == "bool":
        as_bytes = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        if int(as_bytes.max()) > 1:
            raise WireError("a bool tensor holds bytes other than 0 and 1")
        return as_bytes.bool().reshape(shape)
    return torch.frombuffer(bytearray(raw), dtype=DTYPES[dtype]).reshape(shape).clone()


def decode(data: Any) -> Any:
    """JSON data from the child as an output; a WireError when it breaks a budget or the format."""
    budget = [MAX_NODES, MAX_TENSOR_BYTES * 2]

    def walk(x: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise WireError(f"more than {MAX_NODES} values")
        if depth > MAX_DEPTH:
            raise WireError("nested too deeply")
        if x is None or isinstance(x, (bool, int, float)):
            return x
        if isinstance(x, str):
            if len(x) > MAX_STRING:
                raise WireError(f"a string of more than {MAX_STRING} characters")
            return escape_controls(x)
        if isinstance(x, list):
            return [walk(v, depth + 1) for v in x]
        if not isinstance(x, dict):
            raise WireError(f"a value of type {type(x).__name__}")
        if len(x) == 1 and "__tensor__" in x:
            t = _tensor(x["__tensor__"])
            budget[1] -= t.numel() * t.element_size()
            if budget[1] < 0:
                raise WireError("more tensor data than an output may hold")
            return t
        if len(x) == 1 and "__tuple__" in x and isinstance(x["__tuple__"], list):
            return tuple(walk(v, depth + 1) for v in x["__tuple__"])
        if len(x) == 1 and x.get("__float__") in ("nan", "inf", "-inf"):
            return float(x["__float__"])
        return {walk(k, depth + 1): walk(v, depth + 1) for k, v in x.items()}

    return walk(data, 0)


def _is_number(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) or (
        isinstance(x, torch.Tensor) and x.numel() == 1 and x.dtype != torch.bool)


def _dict_of(x: Any, ok: Any, what: str) -> str | None:
    if not isinstance(x, dict):
        return f"expected a dict of {what}, got {type(x).__name__}"
    bad = next((k for k, v in x.items() if not ok(v)), None)
    return None if bad is None else f"expected a dict of {what}; the value of {bad[:60]!r} is not one"


KINDS = {
    "mask": lambda x: _dict_of(x, lambda v: isinstance(v, torch.Tensor) and v.dtype == torch.bool, "bool tensors"),
    "tensor": lambda x: None if isinstance(x, torch.Tensor) else f"expected a tensor, got {type(x).__name__}",
    "scalar": lambda x: None if isinstance(x, torch.Tensor) and x.numel() == 1 else "expected a one-element tensor",
    "number": lambda x: None if _is_number(x) else f"expected a number, got {type(x).__name__}",
    "numbers": lambda x: _dict_of(x, _is_number, "numbers"),
    "pair": lambda x: None if isinstance(x, (tuple, list)) and len(x) == 2 and _is_number(x[0]) and not KINDS[
        "numbers"](x[1]) else "expected a pair (number, dict of numbers)",
    "name": lambda x: None if isinstance(x, str) else f"expected a string, got {type(x).__name__}",
}
"""What each kind of question returns: the structure an output must have before it is compared."""


def check_kind(kind: str, mode: str, output: Any) -> str | None:
    """None if ``output`` (of a case run in ``mode``) has the structure ``kind`` names, else why not."""
    if mode == "grad":
        if not (isinstance(output, dict) and set(output) == {"value", "grads"}):
            return "expected the value and the gradients"
        grads = output["grads"]
        if not isinstance(grads, dict) or not all(g is None or isinstance(g, torch.Tensor) for g in grads.values()):
            return "expected a gradient (or None) per parameter"
        output = output["value"]
    return KINDS[kind](output)
