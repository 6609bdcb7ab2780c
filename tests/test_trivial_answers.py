"""Answers that do nothing score 0 on every question: identity, constants, NaN, the input
returned unchanged, empty and full masks, the most common answer.

Scored in this process the way the grader scores (``run_case``, ``sanitize``, the output's
structure, then ``verify``), over the visible and hidden checks, so a property check that
such an answer could satisfy (frozen entries unchanged, rank r, "nothing moved") fails
here unless it is paired with a value check.
"""

import copy
import math

import pytest
import torch

from lessons.assignments import checks, hidden
from lessons.assignments.sandbox import run_case, sanitize
from lessons.grading.wire import check_kind

NAN = float("nan")


def earned(question_id, fn):
    """{check id: earned points} of ``fn`` on every check of the question, hidden ones included."""
    q = hidden.question(question_id)
    result = {}
    for check in q.checks:
        ok = True
        for case in check.cases():
            try:
                out = sanitize(run_case(fn, case.mode, copy.deepcopy(case.args), copy.deepcopy(case.kwargs)))
                ok = not (check_kind(q.returns, case.mode, out) or check.verify(case, out))
            except Exception:
                ok = False
            if not ok:
                break
        result[check.id] = check.points if ok else 0
    return result


def _masks(fill):
    def mask(model, *args, **kwargs):
        return {n: torch.full_like(p, fill and p.ndim >= 2, dtype=torch.bool) for n, p in model.named_parameters()}
    return mask


def _names(model):
    return [n for n, p in model.named_parameters()]


TRIVIAL = {
    "a1.magnitude_mask": {"empty": _masks(False), "full": _masks(True), "none": lambda *a, **k: None},
    "a1.random_mask": {"empty": _masks(False), "full": _masks(True), "none": lambda *a, **k: None},
    "a2.masked_adamw_step": {
        "identity": lambda param, grad, mask, state, **k: param,
        "zeros": lambda param, grad, mask, state, **k: torch.zeros_like(param),
        "nan": lambda param, grad, mask, state, **k: torch.full_like(param, NAN),
        "nan_where_trainable": lambda param, grad, mask, state, **k: torch.where(mask, NAN, param),
        "decay_only": lambda param, grad, mask, state, lr=1e-3, weight_decay=1e-2, **k: torch.where(
            mask, param * (1 - lr * weight_decay), param),
    },
    "a3.l1_to_init": {
        "zero": lambda model, reference: torch.zeros((), requires_grad=True),
        "one": lambda model, reference: torch.ones((), requires_grad=True),
        "nan": lambda model, reference: torch.full((), NAN, requires_grad=True),
        "sum_of_params": lambda model, reference: sum(p.sum() for p in model.parameters()),
    },
    "a3.update_shares": {
        "zeros": lambda model, reference: {n: 0.0 for n in _names(model)},
        "uniform": lambda model, reference: {n: 1 / len(_names(model)) for n in _names(model)},
        "nan": lambda model, reference: {n: NAN for n in _names(model)},
    },
    "a3.update_sparsity": {
        "zeros": lambda model, reference, tol=1e-5: (0.0, {n: 0.0 for n in _names(model)}),
        "ones": lambda model, reference, tol=1e-5: (1.0, {n: 1.0 for n in _names(model)}),
        "nan": lambda model, reference, tol=1e-5: (NAN, {n: NAN for n in _names(model)}),
    },
    "a3.which_layer": {f"always_{name}": (lambda name: lambda model, reference: name)(name)
                       for name in ("fc1.weight", "fc2.weight", "fc3.weight", "fc4.weight")},
    "a4.low_rank_approximation": {
        "identity": lambda weight, rank: weight,
        "zeros": lambda weight, rank: torch.zeros_like(weight),
        "nan": lambda weight, rank: torch.full_like(weight, NAN),
        "first_r_columns": lambda weight, rank: torch.cat(
            [weight[:, :rank], torch.zeros(weight.shape[0], weight.shape[1] - rank)], dim=1),
    },
    "a4.principal_mask": {"empty": _masks(False), "full": _masks(True), "none": lambda *a, **k: None},
    "a4.mask_overlap": {"zero": lambda a, b: 0.0, "one": lambda a, b: 1.0, "half": lambda a, b: 0.5,
                        "nan": lambda a, b: NAN},
}


@pytest.mark.parametrize("question_id,name", [(q, n) for q, answers in TRIVIAL.items() for n in answers])
def test_a_do_nothing_answer_scores_zero(question_id, name):
    assert earned(question_id, TRIVIAL[question_id][name]) == {c.id: 0 for c in hidden.question(question_id).checks}


def test_every_question_has_do_nothing_answers_tried():
    assert set(TRIVIAL) == {q.id for spec in checks.ASSIGNMENTS.values() for q in spec.questions}


def test_the_reference_earns_every_point_of_the_paired_checks():
    """The pairing must not cost an honest answer anything: the lab's own functions pass."""
    from sparsity.criteria import low_rank_approximation
    from sparsity.metrics import mask_overlap

    full = hidden.question("a4.low_rank_approximation")
    assert earned(full.id, low_rank_approximation) == {c.id: c.points for c in full.checks}
    overlap = hidden.question("a4.mask_overlap")
    assert earned(overlap.id, lambda a, b: mask_overlap(a, b).jaccard) == {c.id: c.points for c in overlap.checks}


def test_a_fake_rank_r_matrix_fails_the_rank_check_by_its_distance():
    case = checks.low_rank_cases([((6, 4), 2)])[0]
    weight, rank = case.args
    fake = torch.cat([weight[:, :rank], torch.zeros(6, 4 - rank)], dim=1)
    message = checks.verify_has_rank(case, fake)
    assert message and "Eckart-Young" in message
    best = torch.linalg.svdvals(weight.double())[rank:].square().sum().sqrt().item()
    assert math.isfinite(best) and best > 0
