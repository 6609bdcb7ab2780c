"""The lessons' coding exercises: one module per lesson (``lessonNN``), each a few ``check_<name>``.

A lesson asks the student to write one of its own ideas from a docstring spec (the way ARENA
and d2l.ai teach: a stub, then an instant check). ``check_<name>(student_fn)`` runs the
student's function on several cases, edge cases included, against the lab's own
implementation (``LIBRARY[name]`` of the lesson's module: a call into ``sparsity/``, ``toys/``
or ``scaleup/``, never a second implementation), through :mod:`lessons.checking`: one line
when every case passes, an ``AssertionError`` naming the case, what was expected and what came
back otherwise.

The exercise feeds the lesson: :func:`yours_or_library` hands the next experiment the
student's function once its check passes, and the library's (with a note) until then.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from lessons.checking import Case

Input = tuple[str, tuple, dict]
"""One case before its expected value is known: (name, args, kwargs)."""


def cases_from(library: Callable[..., Any], inputs: Sequence[Input],
               compare: Callable[[Any, Any], str | None] | None = None) -> list[Case]:
    """Cases whose expected values are what the lab's own function returns on (a copy of) each input."""
    return [Case(name, args, kwargs, library(*copy.deepcopy(args), **copy.deepcopy(kwargs)), compare)
            for name, args, kwargs in inputs]


def yours_or_library(exercises: ModuleType, name: str, yours: Callable[..., Any]) -> Callable[..., Any]:
    """``yours`` if ``check_<name>`` passes on it, else the lab's ``LIBRARY[name]``, saying which is used.

    So solving the exercise is how the student's own code gets to run the lesson's next
    experiment, and an unsolved one does not block the lesson.
    """
    check = getattr(exercises, f"check_{name}")
    try:
        check(yours, quiet=True)
    except AssertionError as failure:
        reason = str(failure).splitlines()[0] if str(failure) else "its check failed"
        print(f"note: the next cells use the lab's {name} (yours does not pass yet: {reason})")
        return exercises.LIBRARY[name]
    print(f"the next cells use your {name} (its check passed)")
    return yours


def tiny_mlp(sizes: Sequence[int] = (4, 3, 2), seed: int = 0) -> Any:
    """A small seeded ReLU MLP (parameters ``0.weight``, ``0.bias``, ``2.weight``, ...) for check cases."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(n_in, n_out)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def reveal(prediction: object, measured: object, question: str) -> bool | None:
    """Print the student's prediction beside the measured answer (predict, then check); True if they match.

    ``prediction`` None means the student made none: the measured answer is printed alone.
    """
    if prediction is None:
        print(f"{question} measured: {measured} (you made no prediction: set `prediction` above and rerun)")
        return None
    right = str(prediction).strip().lower() == str(measured).strip().lower()
    print(f"{question} you predicted {prediction}; measured: {measured}. "
          + ("Right." if right else "Not this time: read on for why."))
    return right
