"""Every check of every assignment rejects the answers that do no work (``lessons.checking.
TRIVIAL_ANSWERS``: returning None, the first argument, zeros like it, raising
NotImplementedError), and the reference solution earns every point.

Scored here in-process by the grader's own scoring (``lessons.grading.scoring``) on outputs
made the way the sandbox makes them, so these run without bubblewrap and in seconds; the
sandboxed path is covered by tests/test_grade.py.
"""

import copy

import pytest
import torch

from lessons.assignments import spec
from lessons.assignments.sandbox import sanitize
from lessons.checking import TRIVIAL_ANSWERS, with_mode
from lessons.grading.runner import SandboxRun
from lessons.grading.scoring import score_question

QUESTIONS = [(p.stem, q.id) for p in spec.sources() for q in spec.load(p).questions]


def _outputs(question: spec.Question, fn) -> dict:
    """What the sandbox would send back for ``fn`` on every case of ``question``."""
    run = with_mode(fn, question.mode)
    outputs = {}
    for g in question.cases:
        try:
            outputs[g.key] = {"output": sanitize(run(*copy.deepcopy(g.case.args), **copy.deepcopy(g.case.kwargs)))}
        except Exception as err:  # noqa: BLE001 - the sandbox reports any exception as the case's error
            outputs[g.key] = {"error": f"{type(err).__name__}: {err}"}
    return outputs


def _score(question: spec.Question, fn) -> int:
    run = SandboxRun(outputs={question.id: _outputs(question, fn)})
    return score_question(question, run, []).earned


def _question(name: str, question_id: str) -> spec.Question:
    return spec.load(spec.find(name)).question(question_id)


@pytest.mark.parametrize("trivial", sorted(TRIVIAL_ANSWERS))
@pytest.mark.parametrize(("name", "question_id"), QUESTIONS)
def test_a_trivial_answer_scores_zero(name, question_id, trivial):
    assert _score(_question(name, question_id), TRIVIAL_ANSWERS[trivial]) == 0


@pytest.mark.parametrize(("name", "question_id"), QUESTIONS)
def test_the_reference_earns_every_point(name, question_id):
    question = _question(name, question_id)
    reference = {}
    for cell in spec.read(spec.find(name)).cells:
        if cell.cell_type == "code" and not spec.tags(cell) & spec.NOT_GRADED:
            exec(cell.source, reference)
    assert question.points > 0
    assert _score(question, reference[question.function]) == question.points


def test_a_mask_of_the_first_k_entries_scores_zero_on_every_mask_question():
    """Issue 26: the a4 principal-mask budget check and the a1 mask checks paid for such masks."""

    def first_k(model, density, *args, **kwargs):
        mask = {}
        for n, p in model.named_parameters():
            m = torch.zeros(p.numel(), dtype=torch.bool)
            if p.ndim >= 2:
                m[: max(1, round(density * p.numel()))] = True
            mask[n] = m.view(p.shape)
        return mask

    for name, question_id in (("a1_masks", "a1.magnitude_mask"), ("a1_masks", "a1.random_mask"),
                              ("a4_principal_weights", "a4.principal_mask")):
        assert _score(_question(name, question_id), first_k) == 0, question_id


def test_a_constant_layer_name_scores_zero():
    question = _question("a3_updates", "a3.which_layer")
    for layer in ("fc1.weight", "fc2.weight", "fc3.weight"):
        assert _score(question, lambda model, reference, layer=layer: layer) == 0
