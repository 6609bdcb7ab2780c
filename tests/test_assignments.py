"""The assignment sources, their generated notebooks and the visible check functions."""

import contextlib
import io
import json
import re
import subprocess
from pathlib import Path

import jupytext
import matplotlib
import pytest

from lessons.assignments import checks, hidden
from lessons.assignments.build import SOLUTION, _replace_regions, build, sources, strip_hidden_tests

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("a1_masks", "a2_masked_adamw", "a3_updates", "a4_principal_weights")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    build(out)
    return out


def _source(name):
    return (ROOT / "lessons" / "assignments" / f"{name}.py").read_text()


def _solution_lines(text):
    """Lines inside solution regions that appear nowhere outside them."""
    inside, inner, outer = False, [], []
    for line in text.split("\n"):
        if line.strip() == SOLUTION[0]:
            inside = True
        elif line.strip() == SOLUTION[1]:
            inside = False
        else:
            (inner if inside else outer).append(line.strip())
    return {line for line in inner if len(line) > 12 and line not in outer and not line.startswith("#")}


def test_there_are_four_assignments_with_questions_and_hand_graded_parts():
    assert [p.stem for p in sources()] == list(NAMES) == list(checks.ASSIGNMENTS)
    for name in NAMES:
        spec = hidden.assignment(name)
        assert spec.questions and spec.hand_graded
        assert "graded by hand" in _source(name)
        for q in spec.questions:
            ids = [c.id for c in q.checks]
            assert len(ids) == len(set(ids)), q.id
            assert any(c.hidden for c in q.checks) and any(not c.hidden for c in q.checks), q.id


def test_sources_state_the_points_the_grader_gives():
    for name in NAMES:
        text = _source(name)
        for q in hidden.assignment(name).questions:
            stated = [line for line in text.split("\n") if f"`{q.function}" in line
                      and (f"({q.points} points)" in line or line.rstrip().endswith(f"| {q.points} |"))]
            assert stated, f"{name}: no line states {q.function} is worth {q.points} points"


def test_student_notebooks_have_stubs_and_no_solutions_or_hidden_tests(built):
    for name in NAMES:
        student = json.loads((built / f"{name}.ipynb").read_text())
        solution = json.loads((built / "solutions" / f"{name}.ipynb").read_text())
        assert student["metadata"]["subnet_lab"] == {"assignment": name, "version": "student"}
        text = "\n".join("".join(c["source"]) for c in student["cells"])
        assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text and "run_checks" not in text
        leaked = {line for line in _solution_lines(_source(name)) if line in text}
        assert not leaked, leaked
        answers = [c for c in student["cells"] if "answer" in c["metadata"].get("tags", [])]
        code_answers = [c for c in answers if c["cell_type"] == "code"]
        assert len(code_answers) == _source(name).count("    ### BEGIN SOLUTION")
        assert all("raise NotImplementedError()" in "".join(c["source"]) for c in code_answers)
        assert all(c["metadata"]["nbgrader"]["solution"] for c in answers)
        assert any("".join(c["source"]) == "YOUR ANSWER HERE" for c in answers if c["cell_type"] == "markdown")
        full = "\n".join("".join(c["source"]) for c in solution["cells"])
        assert "### BEGIN SOLUTION" in full and "### BEGIN HIDDEN TESTS" in full


def test_marked_regions_are_replaced_at_their_indentation():
    text = "def f():\n    x = 1\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    assert _replace_regions(text, SOLUTION, "raise NotImplementedError()") == (
        "def f():\n    x = 1\n    raise NotImplementedError()\n"
    )
    assert strip_hidden_tests("a = 1\n### BEGIN HIDDEN TESTS\nsecret()\n### END HIDDEN TESTS\nb = 2") == "a = 1\nb = 2"
    assert strip_hidden_tests("a = 1\n### BEGIN HIDDEN TESTS\nsecret()  # never closed") == "a = 1"


@pytest.mark.parametrize("name", NAMES)
def test_reference_sources_pass_their_visible_and_hidden_checks(name):
    matplotlib.use("Agg")
    namespace = {"__name__": "__main__"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for cell in jupytext.read(ROOT / "lessons" / "assignments" / f"{name}.py").cells:
            if cell.cell_type == "code":
                exec(compile(cell.source, f"{name}.py", "exec"), namespace)
    for q in hidden.assignment(name).questions:
        assert f"visible checks of {q.function} passed" in printed.getvalue()
        assert f"all {len(q.checks)} checks of {q.function} passed" in printed.getvalue()


def _floor_magnitude_mask(model, density, scope="global"):
    import torch

    weights = {n: p.detach().abs() for n, p in model.named_parameters() if p.ndim >= 2}
    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    groups = [list(weights)] if scope == "global" else [[n] for n in weights]
    for names in groups:
        flat = torch.cat([weights[n].flatten() for n in names])
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        chosen[flat.argsort(descending=True, stable=True)[: max(1, int(density * flat.numel()))]] = True
        start = 0
        for n in names:
            mask[n] = chosen[start : start + weights[n].numel()].view(weights[n].shape)
            start += weights[n].numel()
    return mask


def test_check_messages_name_the_failing_check_and_case():
    with pytest.raises(AssertionError, match=re.escape(
        "check 'global scope: max(1, round(density * n)) entries over all weights', "
        "case [widths=(6, 7, 5), density=0.45, scope=global]: selects 34 of 77 weight entries"
    )):
        checks.check_magnitude_mask(_floor_magnitude_mask)

    def stub(model, density, scope="global"):
        raise NotImplementedError()

    with pytest.raises(AssertionError, match="magnitude_mask: not implemented yet"):
        checks.check_magnitude_mask(stub)

    def broken(weight, rank):
        return weight.T

    with pytest.raises(AssertionError, match=r"case \[weight \(6, 4\), rank=2\]: rank-r approximation: shape \(4, 6\)"):
        checks.check_low_rank_approximation(broken)


def test_checks_do_not_let_the_student_function_corrupt_the_reference():
    """A function that edits its inputs in place must not change what the check compares with."""

    def vandal(param, grad, mask, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        mask.fill_(True)
        param.zero_()
        return param

    with pytest.raises(AssertionError, match="trainable entries"):
        checks.check_masked_adamw_step(vandal)
    case = checks.ASSIGNMENTS["a2_masked_adamw"].questions[0].checks[1].cases()[0]
    assert not case.args[2].all() and case.args[0].abs().sum() > 0


def test_make_assignments_target_runs_the_generator():
    dry = subprocess.run(["make", "-n", "assignments"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "-m lessons.assignments.build --out build/assignments" in dry.stdout
