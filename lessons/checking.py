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
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

Compare = Callable[[Any, Any], "str | None"]


@dataclass(frozen=True)
class Case:
    """One call of the student's function and what it must return.

    ``compare(expected, got)`` returns None when ``got`` is acceptable, else a one-line
    message; left None, :func:`same` compares. ``points``: what the case is worth when an
    assignment is graded (the lessons' exercises ignore it); cases sharing a non-empty
    ``group`` earn their points together, only if all of them pass (so a constant answer that
    happens to fit one case of a group earns nothing).
    """

    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    expected: Any = None
    compare: Compare | None = None
    points: int = 1
    group: str = ""


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


@dataclass(frozen=True)
class Close:
    """A compare: :func:`same` with the given tolerances (data, so it ships with a handout's cases)."""

    rtol: float = 1e-5
    atol: float = 1e-6

    def __call__(self, expected: Any, got: Any) -> str | None:
        return same(expected, got, rtol=self.rtol, atol=self.atol)


@dataclass(frozen=True)
class Within:
    """A compare for a measured number: any value in ``[low, high]`` passes, ``expected`` is ignored.

    ``what`` names the quantity in the message (e.g. "W2's share of the update at lambda=1e-3").
    """

    low: float
    high: float
    what: str

    def __call__(self, expected: Any, got: Any) -> str | None:
        if isinstance(got, bool) or not isinstance(got, (int, float)) or math.isnan(got):
            return f"expected a number for {self.what}, got {type(got).__name__} {_short(got)}"
        if self.low <= got <= self.high:
            return None
        return f"expected {self.what} between {self.low:g} and {self.high:g}, got {got:.4g}: re-run the experiment?"


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


def with_mode(fn: Callable, mode: str) -> Callable:
    """``fn`` called the way a question's ``mode`` says (the grader's sandbox calls it the same way).

    ``call``: ``fn(*args, **kwargs)``. ``steps``: an optimizer step run over a list of
    gradients, ``param = fn(param, grad, mask, state, **kwargs)`` with one ``state`` dict kept
    across steps; returns the last ``param``. ``grad``: ``value = fn(model, ...)``, then
    ``value.backward()``; returns the value and each parameter's gradient (None if it got none).
    """
    if mode == "call":
        return fn
    if mode == "steps":

        def steps(param: torch.Tensor, grads: list, mask: torch.Tensor, **kwargs: Any) -> Any:
            state: dict = {}
            for grad in grads:
                param = fn(param, grad, mask, state, **kwargs)
            return param

        return steps
    if mode == "grad":

        def value_and_grads(model: torch.nn.Module, *args: Any, **kwargs: Any) -> dict:
            value = fn(model, *args, **kwargs)
            value.backward()
            return {"value": value.detach(), "grads": {n: p.grad for n, p in model.named_parameters()}}

        return value_and_grads
    raise ValueError(f"unknown mode {mode!r}: expected 'call', 'steps' or 'grad'")


def _pack(value: Any) -> Any:
    """A case's data as what ``torch.load(weights_only=True)`` reads: an MLP (``nn.Sequential`` of
    ``fc<i>`` Linear layers and ReLUs) becomes its state dict under the key ``__mlp__``."""
    if isinstance(value, torch.nn.Module):
        layers = dict(value.named_children())
        if not isinstance(value, torch.nn.Sequential) or not all(
            isinstance(m, torch.nn.Linear) if n.startswith("fc") else isinstance(m, torch.nn.ReLU)
            for n, m in layers.items()
        ):
            raise ValueError(f"only MLPs of fc<i> Linear layers and ReLUs ship as case data, got {type(value).__name__}")
        return {"__mlp__": {n: t.detach().clone() for n, t in value.state_dict().items()}}
    if isinstance(value, dict):
        return {k: _pack(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_pack(v) for v in value)
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return value


def _unpack(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__mlp__"}:
        state = value["__mlp__"]
        count = len([k for k in state if k.endswith(".weight")])
        layers: OrderedDict[str, torch.nn.Module] = OrderedDict()
        for i in range(1, count + 1):
            fan_out, fan_in = state[f"fc{i}.weight"].shape
            layers[f"fc{i}"] = torch.nn.Linear(fan_in, fan_out)
            if i < count:
                layers[f"act{i}"] = torch.nn.ReLU()
        model = torch.nn.Sequential(layers)
        model.load_state_dict(state)
        return model
    if isinstance(value, dict):
        return {k: _unpack(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_unpack(v) for v in value)
    return value


def save_cases(path: str | Path, cases: dict[str, Sequence[Case]]) -> None:
    """Write each function's cases (inputs, expected outputs, points) as plain data.

    A case's ``compare`` must be None, :class:`Close` or :class:`Within` (data); anything
    else is code, which a data file cannot carry: a ValueError names the case.
    """
    data = {}
    for function, items in cases.items():
        rows = []
        for case in items:
            if case.compare is not None and not isinstance(case.compare, (Close, Within)):
                raise ValueError(f"case {case.name!r} of {function}: its compare is code; a shipped case may "
                                 "only use None, Close or Within")
            compare = None if case.compare is None else [type(case.compare).__name__, asdict(case.compare)]
            rows.append({"name": case.name, "args": _pack(case.args), "kwargs": _pack(case.kwargs),
                         "expected": _pack(case.expected), "compare": compare, "points": case.points,
                         "group": case.group})
        data[function] = rows
    torch.save(data, path)


def load_cases(path: str | Path) -> dict[str, list[Case]]:
    """The cases :func:`save_cases` wrote, read with ``weights_only=True`` (no code runs while reading)."""
    data = torch.load(path, weights_only=True)
    kinds = {"Close": Close, "Within": Within}
    return {
        function: [Case(row["name"], _unpack(row["args"]), _unpack(row["kwargs"]), _unpack(row["expected"]),
                        None if row["compare"] is None else kinds[row["compare"][0]](**row["compare"][1]),
                        row["points"], row["group"]) for row in rows]
        for function, rows in data.items()
    }


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
