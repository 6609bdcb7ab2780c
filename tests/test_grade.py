"""The autograder: full marks for the reference, 0 for the stubs, exact partial credit for
planted mistakes, and no unearned points for a submission that raises, hangs or cheats.

The submissions run in bubblewrap where it works; elsewhere these tests grade in trusted
mode (same child, no isolation), which is enough for the scoring they check. The attacks
on the isolation itself are in ``test_grade_isolation.py``, which needs bubblewrap.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lessons import grade as grade_cli
from lessons.grade import IsolationUnavailable, Limits, Report, Sandbox, grade_notebook

ROOT = Path(__file__).resolve().parents[1]
LIMITS = Limits(question_s=8.0, cell_s=8.0, startup_s=30.0)


def _isolated() -> bool:
    try:
        Sandbox().close()
    except IsolationUnavailable:
        return False
    return True


ISOLATED = _isolated()


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(trusted=not ISOLATED) as box:
        yield box


def grade(path, sandbox, limits=LIMITS):
    return grade_notebook(path, limits=limits, sandbox=sandbox)


def submission(assignments, tmp_path, name, answers=None, extra_cells=(), filename=None):
    """The reference notebook of ``name`` with some answer cells replaced and extra code cells appended."""
    nb = json.loads((assignments / "solutions" / f"{name}.ipynb").read_text())
    for function, source in (answers or {}).items():
        cells = [c for c in nb["cells"] if c["cell_type"] == "code" and f"def {function}(" in "".join(c["source"])]
        assert len(cells) == 1, function
        cells[0]["source"] = source
    for source in extra_cells:
        nb["cells"].append({"cell_type": "code", "metadata": {}, "source": source, "outputs": [], "execution_count": None})
    path = tmp_path / (filename or f"{name}.ipynb")
    path.write_text(json.dumps(nb))
    return path


def failed(report):
    """{question id: set of failing check ids}."""
    return {q.id: {c.id for c in q.checks if c.earned < c.points} for q in report.questions}


def messages(report, question_id):
    return " | ".join(c.message for q in report.questions if q.id == question_id for c in q.checks if c.message)


def points(report):
    return {q.id: q.earned for q in report.questions}


ASSIGNMENT_NAMES = ("a1_masks", "a2_masked_adamw", "a3_updates", "a4_principal_weights", "a5_modular",
                    "a6_prune_rewind", "a7_budgets", "a8_bf16_updates", "a9_two_four", "a10_experiment")


MATPLOTLIB_FONT_PROBE = "refused in cell 1: subprocess.Popen"
"""Importing matplotlib with no font cache runs fc-list once; the sandbox refuses it (matplotlib carries
on). Only a10 imports matplotlib. Known, left to the grader's side: a prebuilt font cache in the sandbox."""


def _real_notes(report):
    return [n for n in report.notes if not (report.assignment == "a10_experiment" and n == MATPLOTLIB_FONT_PROBE)]


@pytest.mark.parametrize("name", ASSIGNMENT_NAMES)
def test_reference_solution_scores_full_marks(assignments, sandbox, name):
    report = grade(assignments / "solutions" / f"{name}.ipynb", sandbox)
    assert report.assignment == name
    assert report.points > 0 and report.earned == report.points, failed(report)
    assert all(c.message == "" for q in report.questions for c in q.checks)
    assert report.hand_graded and all(h.answer and h.points > 0 for h in report.hand_graded)
    assert _real_notes(report) == []  # no false ImportError / NameError notes from the template's cells


@pytest.mark.parametrize("name", ASSIGNMENT_NAMES)
def test_student_stub_scores_zero_without_crashing(assignments, sandbox, name):
    report = grade(assignments / f"{name}.ipynb", sandbox)
    assert report.assignment == name and report.earned == 0 and report.points > 0
    for q in report.questions:
        assert all("NotImplementedError" in c.message for c in q.checks), q
    assert [h.answer for h in report.hand_graded] == [""] * len(report.hand_graded)
    assert all("graded by hand" in h.note for h in report.hand_graded)
    assert _real_notes(report) == []


OFF_BY_ONE = '''
def top_k_mask(model, scores, density, scope="global"):
    def top(s, k):
        order = torch.sort(s.flatten(), descending=True, stable=True).indices[:k]
        chosen = torch.zeros(s.numel(), dtype=torch.bool)
        chosen[order] = True
        return chosen.view(s.shape)
    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    if scope == "per_tensor":
        for name, s in scores.items():
            mask[name] = top(s, max(1, int(density * s.numel())))  # planted: floor, not round
        return mask
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    chosen = top(flat, max(1, int(density * flat.numel())))  # planted: floor, not round
    start = 0
    for name, s in scores.items():
        mask[name] = chosen[start : start + s.numel()].view(s.shape)
        start += s.numel()
    return mask
'''

DECAY_EVERYTHING = '''
import math
def masked_adamw_step(param, grad, mask, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
    beta1, beta2 = betas
    param = param * (1 - lr * weight_decay)  # planted: weight decay before the mask
    grad = torch.where(mask, grad, 0.0)
    if not state:
        state.update(step=0, exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
    state["step"] += 1
    state["exp_avg"].lerp_(grad, 1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** state["step"]) + eps
    new = param - lr / (1 - beta1 ** state["step"]) * state["exp_avg"] / denom
    return torch.where(mask, new, param)
'''

L1_WRONG_REFERENCE = '''
def l1_to_init(model, reference):
    params = dict(model.named_parameters())
    return sum(params[n].abs().sum() for n in reference)  # planted: distance to zero, not to the reference
'''

RANK_IGNORED = '''
def low_rank_approximation(weight, rank):
    u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    return (u * s) @ vh  # planted: every singular value kept
'''


PLANTED = {"off_by_one": {"a1.magnitude_mask": 8 - 4, "a1.random_mask": 3 - 1},
           "decay": {"a2.masked_adamw_step": 2},  # the full-mask and no-decay cases hold
           "rank": {"a4.low_rank_approximation": 0, "a4.principal_mask": 0, "a4.mask_overlap": 3}}


def test_planted_off_by_one_density_loses_the_budget_cases_and_says_round(assignments, sandbox, tmp_path):
    report = grade(submission(assignments, tmp_path, "a1_masks", {"top_k_mask": OFF_BY_ONE}), sandbox)
    assert points(report) == PLANTED["off_by_one"], failed(report)
    lost = failed(report)["a1.magnitude_mask"]
    assert "visible/the budget is round(0.45 * 77) = 35, not int(34.65) = 34: use round()" in lost
    assert "expected 35 of 77" in messages(report, "a1.magnitude_mask") or "entries differ" in messages(
        report, "a1.magnitude_mask")


def test_planted_weight_decay_on_frozen_entries_loses_the_frozen_cases(assignments, sandbox, tmp_path):
    report = grade(submission(assignments, tmp_path, "a2_masked_adamw", {"masked_adamw_step": DECAY_EVERYTHING}), sandbox)
    assert points(report) == PLANTED["decay"], failed(report)
    assert "weight decay must not touch frozen entries" in " ".join(failed(report)["a2.masked_adamw_step"])


def test_planted_l1_against_the_wrong_reference_loses_exactly_the_l1_question(assignments, sandbox, tmp_path):
    report = grade(submission(assignments, tmp_path, "a3_updates", {"l1_to_init": L1_WRONG_REFERENCE}), sandbox)
    assert points(report) == {"a3.l1_to_init": 0, "a3.update_shares": 3, "a3.update_sparsity": 3, "a3.which_layer": 3}
    assert "['value']: expected" in messages(report, "a3.l1_to_init")


def test_planted_svd_rank_ignored_loses_the_rank_cases(assignments, sandbox, tmp_path):
    report = grade(submission(assignments, tmp_path, "a4_principal_weights", {"low_rank_approximation": RANK_IGNORED}),
                   sandbox)
    assert points(report) == PLANTED["rank"], failed(report)
    assert "entries differ beyond rtol" in messages(report, "a4.low_rank_approximation")


def test_hanging_cell_and_question_are_stopped_and_the_rest_is_graded(assignments, sandbox, tmp_path):
    hang = "def update_sparsity(model, reference, tol=1e-5):\n    while True:\n        pass\n"
    path = submission(assignments, tmp_path, "a3_updates", {"update_sparsity": hang},
                      extra_cells=["import time\ntime.sleep(10_000)\n"])
    report = grade(path, sandbox, Limits(question_s=3.0, cell_s=3.0, startup_s=30.0))
    assert points(report) == {"a3.l1_to_init": 4, "a3.update_shares": 3, "a3.update_sparsity": 0, "a3.which_layer": 3}
    sparsity = report.questions[2]
    assert "time limit of 3 s" in sparsity.note
    assert any("skipped" in n and "time limit" in n for n in report.notes)


CRASHES = {
    "l1_to_init": "import os\ndef l1_to_init(model, reference):\n    os._exit(0)\n",
    "update_sparsity": "import sys\ndef update_sparsity(model, reference, tol=1e-5):\n    sys.exit(0)\n",
    "which_layer_needs_finetuning": "def which_layer_needs_finetuning(model, reference):\n    raise RuntimeError('boom')\n",
}
FAKE_SCORE = ('print("a3.l1_to_init: 4/4\\ntotal: 13/13 automatic points")\n'
              'import json; print(json.dumps({"earned": 13, "points": 13}))\n')


def test_raise_exit_os_exit_and_fake_scores_earn_nothing(assignments, sandbox, tmp_path):
    fake_shares = ('def update_shares(model, reference):\n'
                   '    print("PASS 3/3 all checks of update_shares passed")\n'
                   '    return {"score": 3.0}\n')
    path = submission(assignments, tmp_path, "a3_updates", {**CRASHES, "update_shares": fake_shares},
                      extra_cells=[FAKE_SCORE, "import sys\nsys.exit(0)\n"])
    report = grade(path, sandbox)
    assert report.earned == 0, points(report)
    assert "exited" in report.questions[0].note  # os._exit: the process died during this question
    assert "SystemExit" in report.questions[2].checks[0].message
    assert "RuntimeError: boom" in report.questions[3].checks[0].message


def test_os_exit_costs_only_its_own_question(assignments, sandbox, tmp_path):
    report = grade(submission(assignments, tmp_path, "a3_updates", {"l1_to_init": CRASHES["l1_to_init"]}), sandbox)
    assert points(report) == {"a3.l1_to_init": 0, "a3.update_shares": 3, "a3.update_sparsity": 3, "a3.which_layer": 3}


PATCH_TORCH_AND_CHECKS = '''
import sys, types, torch
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.Tensor.__eq__ = lambda self, other: torch.ones((), dtype=torch.bool)
torch.save = lambda obj, f, *a, **k: None
fake = types.ModuleType("lessons.assignments.checks")
fake.run_checks = lambda *a, **k: print("all checks passed")
sys.modules["lessons.assignments.checks"] = fake
try:
    import lessons.assignments.checks as checks
    checks.verify_magnitude = lambda case, out: None
except ImportError:
    pass
'''


def test_monkeypatching_torch_or_the_checks_earns_nothing(assignments, sandbox, tmp_path):
    wrong = "def magnitude_mask(model, density, scope='global'):\n    return {}\n"
    path = submission(assignments, tmp_path, "a1_masks", {"magnitude_mask": wrong, "random_mask": wrong.replace(
        "magnitude_mask(model, density, scope='global')", "random_mask(model, density, seed=0, scope='global')")},
        extra_cells=[PATCH_TORCH_AND_CHECKS])
    report = grade(path, sandbox)
    # the patched torch and checks live in the sandbox; the grader compares with its own
    assert report.earned == 0, points(report)


def test_patching_the_checks_in_the_sandbox_does_not_change_the_grading(assignments, sandbox, tmp_path):
    patch = PATCH_TORCH_AND_CHECKS.replace("torch.save = lambda obj, f, *a, **k: None\n", "")
    wrong = "def mask_overlap(a, b):\n    return 0.5\n"
    path = submission(assignments, tmp_path, "a4_principal_weights", {"mask_overlap": wrong}, extra_cells=[patch])
    report = grade(path, sandbox)
    assert points(report) == {"a4.low_rank_approximation": 4, "a4.principal_mask": 4, "a4.mask_overlap": 0}


def test_importing_the_lab_scores_zero_with_a_message(assignments, sandbox, tmp_path):
    import_solution = ("def low_rank_approximation(weight, rank):\n"
                       "    from sparsity.criteria import low_rank_approximation as lab\n"
                       "    return lab(weight, rank)\n")
    fallback = ("try:\n"
                "    from lessons.assignments.a4_principal_weights import mask_overlap\n"
                "except ImportError:\n"
                "    def mask_overlap(a, b):\n"
                "        both = sum(int((a[n] & b[n]).sum()) for n in a)\n"
                "        either = sum(int((a[n] | b[n]).sum()) for n in a)\n"
                "        return both / either if either else 0.0\n")
    path = submission(assignments, tmp_path, "a4_principal_weights",
                      {"low_rank_approximation": import_solution, "mask_overlap": fallback})
    report = grade(path, sandbox)
    # principal_mask calls the student's low_rank_approximation, which raised
    assert points(report) == {"a4.low_rank_approximation": 0, "a4.principal_mask": 0, "a4.mask_overlap": 0}
    low_rank, _, overlap = report.questions
    assert "import sparsity.criteria" in low_rank.note
    assert "import lessons.assignments.a4_principal_weights" in overlap.note


def test_command_line_grades_a_folder_to_a_gradebook(assignments, tmp_path):
    folder = tmp_path / "submissions"
    folder.mkdir()
    (folder / "a1_masks_alice.ipynb").write_text((assignments / "solutions" / "a1_masks.ipynb").read_text())
    (folder / "a1_masks_bob.ipynb").write_text((assignments / "a1_masks.ipynb").read_text())
    (folder / "a1_masks_carol.ipynb").write_text("not a notebook")
    roster = tmp_path / "roster.csv"
    roster.write_text("student,name\nalice,Alice A.\nbob,Bob B.\ncarol,Carol C.\ndave,Dave D.\n")
    csv_path = tmp_path / "grades.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "lessons.grade", str(folder), "--csv", str(csv_path), "--json",
                           "--roster", str(roster), "--time-limit", "10", *([] if ISOLATED else ["--trusted"])],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    reports = {Path(r["submission"]).name: r for r in json.loads(done.stdout)}
    assert (reports["a1_masks_alice.ipynb"]["earned"], reports["a1_masks_bob.ipynb"]["earned"]) == (11, 0)
    assert reports["a1_masks_alice.ipynb"]["notes"] == [] and reports["a1_masks_bob.ipynb"]["notes"] == []
    assert "could not grade" in reports["a1_masks_carol.ipynb"]["notes"][0]
    rows = [r.split(",") for r in csv_path.read_text().splitlines()]
    assert rows[0] == ["submission", "assignment", "total", "max", "a1.magnitude_mask", "a1.random_mask", "a1.scope",
                       "student", "notes"]
    assert [r[2:8] for r in rows[1:]] == [["11", "14", "8", "3", "", "alice"], ["0", "14", "0", "0", "", "bob"],
                                          ["0", "0", "", "", "", "carol"], ["0", "", "", "", "", "dave"]]
    assert rows[4][-1] == "no submission"


def test_json_is_a_list_for_one_file_too(assignments, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(grade_cli, "grade_notebook", lambda path, **kw: Report(str(path), "a1_masks", 1, 11))
    assert grade_cli.main([str(assignments / "a1_masks.ipynb"), "--json", "--trusted"]) == 0
    assert [r["earned"] for r in json.loads(capsys.readouterr().out)] == [1]


def _hand_scored(csv_path, scores):
    """Type hand-graded scores into the gradebook, as a teacher would."""
    import csv

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
        fields = list(rows[0])
    for row in rows:
        row["a1.scope"] = scores.get(row["student"], "")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)


def test_regrading_one_question_keeps_the_hand_scores_and_the_other_points(assignments, tmp_path, monkeypatch):
    folder = tmp_path / "submissions"
    folder.mkdir()
    for name in ("alice", "bob"):
        shutil.copy(assignments / "a1_masks.ipynb", folder / f"a1_masks_{name}.ipynb")
    csv_path = tmp_path / "grades.csv"
    earned = {"a1.magnitude_mask": 5, "a1.random_mask": 2}

    def fake_grade(path, *, only=None, **kw):
        from lessons.grading.report import QuestionResult

        ids = [only] if only else list(earned)
        questions = [QuestionResult(q, q.split(".")[1], 8, earned[q], []) for q in ids]
        return Report(str(path), "a1_masks", sum(q.earned for q in questions), 11, questions)

    monkeypatch.setattr(grade_cli, "grade_notebook", fake_grade)
    pattern = ["--id-pattern", r"a1_masks_(?P<student>\w+)\.ipynb", "--trusted"]
    assert grade_cli.main([str(folder), "--csv", str(csv_path), *pattern]) == 0
    _hand_scored(csv_path, {"alice": "2.5", "bob": "3"})
    earned.update({"a1.magnitude_mask": 8, "a1.random_mask": 0})  # a fixed check; random_mask must not be re-read
    assert grade_cli.main([str(folder), "--csv", str(csv_path), "--question", "a1.magnitude_mask", *pattern]) == 0
    rows = [r.split(",") for r in csv_path.read_text().splitlines()]
    assert [r[2:8] for r in rows[1:]] == [["12.5", "14", "8", "2", "2.5", "alice"], ["13", "14", "8", "2", "3", "bob"]]


def test_a_gradebook_with_text_in_a_score_cell_is_refused_before_grading(assignments, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "submissions"
    folder.mkdir()
    shutil.copy(assignments / "a1_masks.ipynb", folder / "a1_masks_alice.ipynb")
    csv_path = tmp_path / "grades.csv"
    monkeypatch.setattr(grade_cli, "grade_notebook", lambda path, **kw: Report(str(path), "a1_masks", 0, 11))
    assert grade_cli.main([str(folder), "--csv", str(csv_path), "--trusted"]) == 0
    _hand_scored(csv_path, {"a1_masks_alice": "good"})
    monkeypatch.setattr(grade_cli, "grade_notebook", lambda path, **kw: pytest.fail("graded before refusing"))
    with pytest.raises(SystemExit):
        grade_cli.main([str(folder), "--csv", str(csv_path), "--trusted"])
    assert re.search(r"cell a1.scope of .*a1_masks_alice.ipynb holds 'good', not a number", capsys.readouterr().err)
    assert "good" in csv_path.read_text()  # the gradebook is untouched


def test_gradescope_results_json(assignments, sandbox, tmp_path):
    from lessons.grading.gradebook import gradescope

    report = grade(assignments / "solutions" / "a1_masks.ipynb", sandbox)
    results = gradescope(report)
    assert results["score"] == 11 and sum(t["max_score"] for t in results["tests"]) == 11
    assert {t["visibility"] for t in results["tests"]} == {"visible", "after_published"}
    assert all(set(t) == {"name", "score", "max_score", "output", "visibility"} for t in results["tests"])
    assert "a1.scope (3 points) is graded by hand" in results["output"]


def test_make_gradescope_builds_the_autograder_bundle(tmp_path):
    import zipfile

    from lessons.grading.gradescope_bundle import bundle

    path = bundle("a1_masks", tmp_path)
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        run = z.read("run_autograder").decode()
    assert {"setup.sh", "run_autograder", "lab/lessons/assignments/a1_masks.py", "lab/pyproject.toml"} <= names
    assert "--assignment a1_masks" in run and "--gradescope /autograder/results/results.json" in run
    assert "lessons.grading.gradescope_bundle $(ASSIGNMENT)" in (ROOT / "Makefile").read_text()


def test_without_bubblewrap_the_grader_refuses_unless_trusted(assignments, tmp_path):
    empty = tmp_path / "no-tools"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": str(empty)}
    done = subprocess.run([sys.executable, "-m", "lessons.grade", str(assignments / "a1_masks.ipynb")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "apt-get install bubblewrap" in done.stderr and "--trusted" in done.stderr
    assert done.stdout == ""


def test_a_submission_that_breaks_the_grader_costs_its_own_row_and_rows_are_written_as_graded(
        assignments, tmp_path, monkeypatch):
    folder = tmp_path / "submissions"
    folder.mkdir()
    for name in ("alice", "bob", "carol", "dave"):
        shutil.copy(assignments / "a1_masks.ipynb", folder / f"{name}.ipynb")
    csv_path = tmp_path / "grades.csv"
    csv_path.write_text("submission,assignment,total,max,a1.scope,student,notes\n")  # a gradebook from before
    partial = tmp_path / "grades.csv.partial"
    seen = []

    def fake_grade(path, **kw):
        seen.append(partial.read_text().count("\n"))  # rows on disk before this submission is graded
        if path.stem == "bob":
            raise RecursionError("the grader itself broke")
        if path.stem == "dave":
            raise KeyboardInterrupt  # the instructor stops the run
        return Report(str(path), "a1_masks", 1, 11)

    monkeypatch.setattr(grade_cli, "grade_notebook", fake_grade)
    with pytest.raises(KeyboardInterrupt):
        grade_cli.main([str(folder), "--csv", str(csv_path), "--trusted"])
    rows = partial.read_text().splitlines()
    assert seen == [1, 2, 3, 4]
    assert [r.split(",")[:2] for r in rows[1:]] == [[str(folder / "alice.ipynb"), "a1_masks"],
                                                    [str(folder / "bob.ipynb"), "?"],
                                                    [str(folder / "carol.ipynb"), "a1_masks"]]
    assert "grader error: RecursionError: the grader itself broke" in rows[2]
    assert csv_path.read_text() == "submission,assignment,total,max,a1.scope,student,notes\n"  # kept until done
