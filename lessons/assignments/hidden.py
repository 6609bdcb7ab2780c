"""Hidden checks: graded by ``python -m lessons.grade``, not shipped to students.

They use the same machinery as the visible checks (``lessons.assignments.checks``) on
cases the student never saw: random models and hyper-parameters, ties, tiny budgets,
edge cases, and the teacher-student toy itself. The grader holds them in its own process;
a submission runs in a sandbox that cannot import or open this file.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from sparsity import masks

from lessons.assignments import checks
from lessons.assignments.checks import (
    Assignment,
    Case,
    Check,
    adamw_case,
    l1_cases,
    low_rank_cases,
    mask_cases,
    mlp,
    moved,
    only_moved,
    overlap_cases,
    principal_cases,
    toy_case,
    verify_adamw,
    verify_l1_value,
    verify_low_rank,
    verify_magnitude,
    verify_overlap,
    verify_principal,
    verify_probe,
    verify_random,
    verify_shares,
    verify_sparsity,
)


def _random_mask_cases(fn_kwargs: bool) -> list[Case]:
    cases = []
    for i, (widths, density, scope) in enumerate(
        [((9, 5, 7), 0.17, "global"), ((4, 11, 3), 0.62, "per_tensor"), ((10, 10), 0.093, "global"),
         ((3, 8, 8, 2), 0.35, "per_tensor")]
    ):
        extra = {"seed": 10 + i} if fn_kwargs else {}
        cases += mask_cases((density,), (scope,), widths=widths, model_seed=100 + i, **extra)
    return cases


def _tie_case() -> list[Case]:
    model = mlp((4, 4, 2), 0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_((torch.arange(p.numel()) % 5 - 2).float().view(p.shape))
    return [Case(f"integer weights with ties, density=0.5, scope={s}", (model, 0.5), {"scope": s})
            for s in ("global", "per_tensor")]


def _tiny_cases() -> list[Case]:
    return mask_cases((1e-4,), ("global", "per_tensor"), widths=(5, 4, 3), model_seed=7)


def _adamw_random() -> list[Case]:
    return [
        adamw_case("7x3, 10 steps, density 0.3, lr=3e-2, weight_decay=0.2, betas=(0.8, 0.99)", (7, 3), 10, 0.3, 11,
                   lr=3e-2, weight_decay=0.2, betas=(0.8, 0.99)),
        adamw_case("2x9, 10 steps, density 0.7, lr=1e-3, eps=1e-6, weight_decay=0.01", (2, 9), 10, 0.7, 12,
                   lr=1e-3, eps=1e-6, weight_decay=0.01),
    ]


def _all_frozen() -> list[Case]:
    """An all-False mask, paired with a half mask on the same shape (so returning the input fails)."""
    return [adamw_case("5x4, 3 steps, all-False mask, weight_decay=0.05", (5, 4), 3, 0.0, 13, lr=1e-2, weight_decay=0.05),
            adamw_case("5x4, 3 steps, density 0.5, weight_decay=0.05", (5, 4), 3, 0.5, 14, lr=1e-2, weight_decay=0.05)]


def _random_models(seed: int) -> list[Case]:
    return [Case(c.name, c.args) for c in l1_cases(False, (seed, seed + 1), widths=(7, 6, 6, 2))]


def _sparsity_cases() -> list[Case]:
    cases = []
    for i, tol in enumerate((1e-5, 0.1, 0.3)):
        model, reference = moved(mlp((6, 5, 4), 30 + i), 40 + i, scale=0.2, keep=("fc2.weight",))
        cases.append(Case(f"6-5-4 MLP, fc2.weight unchanged, tol={tol}", (model, reference), {"tol": tol}))
    return cases


def _empty_overlap() -> list[Case]:
    """Two empty masks (overlap 0), paired with two that do overlap (so a constant 0 fails)."""
    model = mlp((3, 2), 0)
    empty = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    return [Case("two all-False masks", (empty, {n: m.clone() for n, m in empty.items()})), *overlap_cases(1)]


def _random_overlaps() -> list[Case]:
    model = mlp((9, 7, 5), 4)
    return [Case(f"random mask (seed {s}) vs magnitude at density 0.3", (masks.random(model, 0.3, s), masks.magnitude(model, 0.3)))
            for s in (1, 2)]


HIDDEN: dict[str, list[Check]] = {
    "a1.magnitude_mask": [
        Check("lab_random", "the lab's masks.magnitude on random models, densities and scopes", 2,
              lambda: _random_mask_cases(False), verify_magnitude, hidden=True),
        Check("ties", "ties go to the earlier entry", 1, _tie_case, verify_magnitude, hidden=True),
        Check("tiny", "a tiny density still keeps one entry", 1, _tiny_cases, verify_magnitude, hidden=True),
    ],
    "a1.random_mask": [
        Check("lab_random", "the lab's masks.random on random models, seeds, densities and scopes", 1,
              lambda: _random_mask_cases(True), verify_random, hidden=True),
    ],
    "a2.masked_adamw_step": [
        Check("random", "random shapes, masks and hyper-parameters over 10 steps", 1, _adamw_random, verify_adamw,
              hidden=True),
        Check("all_frozen", "an all-False mask moves nothing, even with weight decay", 1, _all_frozen, verify_adamw,
              hidden=True),
    ],
    "a3.l1_to_init": [
        Check("random", "random models", 1, lambda: _random_models(20), verify_l1_value, hidden=True),
    ],
    "a3.update_shares": [
        Check("random", "random models", 1, lambda: _random_models(22), verify_shares, hidden=True),
    ],
    "a3.update_sparsity": [
        Check("random", "random models and tolerances", 1, _sparsity_cases, verify_sparsity, hidden=True),
    ],
    "a3.which_layer": [
        Check("toy_l1", "teacher-student toy trained with L1 to init (lambda=1e-3): the probe finds W2", 1,
              lambda: [toy_case(1e-3), only_moved("fc3")], verify_probe, hidden=True),
        Check("toy_plain", "teacher-student toy trained without the penalty (lambda=0)", 1,
              lambda: [toy_case(0.0), only_moved("fc1")], verify_probe, hidden=True),
    ],
    "a4.low_rank_approximation": [
        Check("random", "random shapes and ranks", 1,
              lambda: low_rank_cases([((9, 5), 3), ((3, 8), 2), ((10, 10), 1)], seed=5), verify_low_rank, hidden=True),
    ],
    "a4.principal_mask": [
        Check("random", "the lab's masks.lift on random models, densities and ranks", 1,
              lambda: principal_cases([((9, 7, 5), 0.1, 2), ((6, 12, 4), 0.3, 3)], seed=9), verify_principal,
              hidden=True),
        Check("full_rank", "at full rank the principal weights are the largest weights (not at rank 1)", 1,
              lambda: principal_cases([((6, 6, 6), 0.2, 6), ((8, 6, 4), 0.25, 1)], seed=3), verify_principal,
              hidden=True),
    ],
    "a4.mask_overlap": [
        Check("random", "random and magnitude masks", 1, _random_overlaps, verify_overlap, hidden=True),
        Check("empty", "two empty masks overlap 0 (no division by zero)", 1, _empty_overlap, verify_overlap,
              hidden=True),
    ],
}


def assignment(name: str) -> Assignment:
    """An assignment with its visible and hidden checks (what the grader grades)."""
    return checks.assignment(name, HIDDEN)


def question(question_id: str) -> checks.Question:
    """One question with its visible and hidden checks."""
    return checks.question(question_id, HIDDEN)


def run_checks(question_id: str, fn: Callable) -> None:
    """Run a question's visible and hidden checks on ``fn`` (the hidden test cells of a solution)."""
    checks.run_checks(question_id, fn, HIDDEN)
