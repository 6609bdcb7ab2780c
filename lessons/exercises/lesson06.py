"""Lesson 6's exercises: GRPO's group advantage, and the half-ulp predictor of update sparsity.

GRPO (Shao et al. 2024) scores each sampled answer against the other answers to the same
prompt, ``(r - mean) / (std + eps)``: ``scaleup.rl.group_advantages``. An update smaller than
half a unit in the last place of a bf16 weight rounds back to it (Mukherjee et al. 2025):
``sparsity.metrics.half_ulp``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lessons.checking import check
from lessons.exercises import cases_from
from scaleup.rl import group_advantages
from sparsity.metrics import half_ulp

LIBRARY: dict[str, Callable] = {"group_advantages": group_advantages, "half_ulp": half_ulp}


def check_group_advantages(fn: Callable, quiet: bool = False) -> None:
    """``fn(reward)``: rewards ``[prompts, group]`` -> each answer's advantage within its own row."""
    inputs = [
        ("one prompt, one right answer of four", (torch.tensor([[1.0, 0.0, 0.0, 0.0]]),), {}),
        ("two prompts are normalised separately", (torch.tensor([[1.0, 0.0, 1.0, 0.0], [3.0, 1.0, 2.0, 2.0]]),), {}),
        ("all answers equal: advantage 0, nothing to learn", (torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]),), {}),
        ("graded rewards, group of 2", (torch.tensor([[0.25, 0.75], [0.9, 0.1]]),), {}),
    ]
    check(fn, cases_from(group_advantages, inputs), name="group_advantages", quiet=quiet)


def check_half_ulp(fn: Callable, quiet: bool = False) -> None:
    """``fn(values, dtype=torch.bfloat16)``: half a unit in the last place of each value stored in ``dtype``."""
    values = torch.tensor([0.5, 1.0, 1.5, -3.0, 1e-3, 100.0])
    inputs = [
        ("bf16 (7 stored mantissa bits)", (values,), {}),
        ("zero has no ulp to speak of: 0", (torch.tensor([0.0, 0.25]),), {}),
        ("float16 (10 bits)", (values,), {"dtype": torch.float16}),
        ("float32 (23 bits)", (values,), {"dtype": torch.float32}),
        ("values already in bf16", (values.bfloat16(),), {}),
    ]
    check(fn, cases_from(half_ulp, inputs), name="half_ulp", quiet=quiet)
