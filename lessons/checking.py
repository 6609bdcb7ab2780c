"""Checking a student's function against expected outputs: the one machinery of the lab's
exercises (lessons) and assignments (visible and hidden checks).

Taught the way ARENA's ``tests.test_x(student_fn)`` and Karpathy's ``cmp()`` teach: the
student writes a function, a check runs it on a few named cases and either prints one line
saying every case passed or raises an ``AssertionError`` naming the case, what was expected
and what came back::

    check(magnitude_mask, [Case("two tensors", (weights, 0.5), expected=mask)], name="magnitude_mask")

This module depends only on ``torch`` and the standard library, so it ships verbatim in the
student handout: where a case's ``expected`` comes from (the lab's reference in a lesson,
shipped data in a handout, the grader's own computation for a hidden check) is the caller's
business, never this module's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Compare = Callable[[Any, Any], "str | None"]


@dataclass(frozen=True)
class Case:
    """One call of the student's function and what it must return.

    ``compare(expected, got)`` returns None when ``got`` is acceptable, else a one-line
    message; left None, :func:`same` compares.
    """

    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    expected: Any = None
    compare: Compare | None = None


def _short(value: Any) -> str:
    """A one-line description of a value for messages (tensors by type, shape and dtype)."""
    if isinstance(value, torch.Tensor):
        if value.numel() <= 6:
            return f"tensor({value.tolist()}, dtype={value.dtype})"
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _same_tensor(expected: torch.Tensor, got: Any, rtol: float, atol: float) -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"expected a tensor, got {type(got).__name__} {_short(got)}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
    if got.dtype != expected.dtype:
        return f"expected dtype {expected.dtype}, got dtype {got.dtype}"
    exp, out = expected.detach().cpu(), got.detach().cpu()
    if expected.dtype == torch.bool or not (expected.is_floating_point() or expected.is_complex()):
        differ = exp != out
        count = int(differ.sum())
        if count == 0:
            return None
        first = tuple(int(i) for i in differ.nonzero()[0])
        return (
            f"expected {_short(exp)}, got {_short(out)}: {count} of {exp.numel()} entries differ, "
            f"the first at index {first} (expected {exp[first].item()}, got {out[first].item()})"
        )
    exp64, out64 = exp.to(torch.float64), out.to(torch.float64)
    if torch.isnan(exp64).ne(torch.isnan(out64)).any():
        return f"expected NaN exactly where the reference has NaN, got {_short(out)}"
    exp64, out64 = exp64.nan_to_num(0.0), out64.nan_to_num(0.0)
    bad = ~torch.isclose(out64, exp64, rtol=rtol, atol=atol)
    if not bad.any():
        return None
    first = tuple(int(i) for i in bad.nonzero()[0])
    return (
        f"expected {_short(exp)}, got {_short(out)}: {int(bad.sum())} of {exp.numel()} entries differ "
        f"beyond rtol={rtol}, atol={atol}, the first at index {first} "
        f"(expected {exp[first].item():.6g}, got {out[first].item():.6g})"
    )


def same(expected: Any, got: Any, *, rtol: float = 1e-5, atol: float = 1e-6) -> str | None:
    """None when ``got`` equals ``expected``, else a one-line message ``expected ..., got ...``.

    Tensors must match in type, shape and dtype, then in value (bool and integer tensors
    exactly, with the count of differing entries and the first differing index; floating ones
    to ``rtol``/``atol``, computed in float64 so bf16 is compared at its own precision by the
    caller's tolerances). Dicts: missing keys, then extra keys, then each key. Lists and
    tuples: type, length, then each item. Bools exactly (a bool is not accepted for a number
    or the reverse); ints exactly; floats with ``math.isclose``; None only for None.
    """
    if expected is None:
        return None if got is None else f"expected None, got {_short(got)}"
    if isinstance(expected, torch.Tensor):
        return _same_tensor(expected, got, rtol, atol)
    if isinstance(expected, Mapping):
        if not isinstance(got, Mapping):
            return f"expected a dict, got {type(got).__name__} {_short(got)}"
        missing = [k for k in expected if k not in got]
        if missing:
            return f"expected keys {sorted(map(str, expected))}, got a dict missing {sorted(map(str, missing))}"
        extra = [k for k in got if k not in expected]
        if extra:
            return f"expected keys {sorted(map(str, expected))}, got extra keys {sorted(map(str, extra))}"
        for key, value in expected.items():
            message = same(value, got[key], rtol=rtol, atol=atol)
            if message:
                return f"[{key!r}]: {message}"
        return None
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)) or isinstance(got, tuple) != isinstance(expected, tuple):
            return f"expected a {type(expected).__name__}, got {type(got).__name__} {_short(got)}"
        if len(got) != len(expected):
            return f"expected {len(expected)} items, got {len(got)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            message = same(e, g, rtol=rtol, atol=atol)
            if message:
                return f"[{i}]: {message}"
        return None
    if isinstance(expected, bool) or isinstance(got, bool):
        if type(got) is bool and type(expected) is bool and got == expected:
            return None
        return f"expected {expected!r}, got {_short(got)}"
    if isinstance(expected, int):
        if isinstance(got, int):
            return None if got == expected else f"expected {expected}, got {got}"
        return f"expected the int {expected}, got {type(got).__name__} {_short(got)}"
    if isinstance(expected, float):
        if not isinstance(got, (int, float)):
            return f"expected a number close to {expected:.6g}, got {type(got).__name__} {_short(got)}"
        if math.isnan(expected):
            return None if math.isnan(got) else f"expected nan, got {got!r}"
        if math.isclose(got, expected, rel_tol=rtol, abs_tol=atol):
            return None
        return f"expected {expected:.6g}, got {got!r}"
    return None if got == expected else f"expected {_short(expected)}, got {_short(got)}"


def top_k_of(scores: torch.Tensor) -> Compare:
    """A compare for masks where ties make several answers right.

    Accepts a bool mask of ``scores``' shape that selects as many entries as ``expected``
    does and no entry scoring lower than one it leaves out: any tie-break is right, a mask
    that ignores the scores is not.
    """

    def compare(expected: torch.Tensor, got: Any) -> str | None:
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape or got.dtype != torch.bool:
            return f"expected a bool mask of shape {tuple(expected.shape)}, got {_short(got)}"
        want, have = int(expected.sum()), int(got.sum())
        if have != want:
            return f"expected {want} selected entries, got {have}"
        if have and have < got.numel():
            lowest_in, highest_out = scores[got].min().item(), scores[~got].max().item()
            if lowest_in < highest_out:
                return (f"expected the {want} highest-scoring entries (ties broken any way), got a mask that "
                        f"leaves out a score of {highest_out:.6g} but selects one of {lowest_in:.6g}")
        return None

    return compare


def check(fn: Callable, cases: Sequence[Case], *, name: str, quiet: bool = False) -> None:
    """Run ``fn`` on deep copies of each case's inputs and compare what it returns.

    Raises ``AssertionError``: ``<name>: not implemented yet`` when ``fn`` raises
    ``NotImplementedError``; naming the case and the exception for any other exception;
    ``<name>: case <case> failed: <message>`` for a wrong output. On success prints
    ``<name>: all N cases passed`` (unless ``quiet``). Deep copies mean a function that
    modifies its inputs cannot change the next case or the expected values.
    """
    if not cases:
        raise ValueError(f"check of {name}: no cases given")
    for case in cases:
        args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
        try:
            got = fn(*args, **kwargs)
        except NotImplementedError:
            raise AssertionError(f"{name}: not implemented yet (it raised NotImplementedError); "
                                 "replace the stub's `raise NotImplementedError` with your code") from None
        except Exception as error:  # noqa: BLE001 - any student exception becomes the check's message
            raise AssertionError(f"{name}: case {case.name} raised {type(error).__name__}: {error}") from error
        compare = case.compare or same
        message = compare(case.expected, got)
        if message:
            raise AssertionError(f"{name}: case {case.name} failed: {message}")
    if not quiet:
        print(f"{name}: all {len(cases)} cases passed")


def _raises(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError


def _zeros_like_first(first: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(first, torch.Tensor):
        return torch.zeros_like(first)
    if isinstance(first, Mapping):
        return {k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else 0 for k, v in first.items()}
    if isinstance(first, torch.nn.Module):
        return {n: torch.zeros_like(p) for n, p in first.named_parameters()}
    return 0


TRIVIAL_ANSWERS: dict[str, Callable[..., Any]] = {
    "returns None": lambda *args, **kwargs: None,
    "identity (first argument)": lambda first, *args, **kwargs: first,
    "zeros like the first argument": _zeros_like_first,
    "raises NotImplementedError": _raises,
}
"""Answers every check must reject: a stub left as is, or a function that does no work."""
