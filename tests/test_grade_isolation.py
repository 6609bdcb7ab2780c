"""The autograder against submissions that attack it, one per attack class of issue 16
(``tests/data/grading/``): each scores 0 on the question it attacks, every other question of
its notebook grades as the reference does, and a folder mixing them with honest submissions
grades the honest ones exactly as alone.

The attacks run twice where the operating system's fence is what stops them: with the
audit hook (the default) and without it, to show that bubblewrap holds on its own.
These tests need bubblewrap (``apt-get install bubblewrap``) and skip without it.
"""

import contextlib
import errno
import io
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from lessons.grade import IsolationUnavailable, Limits, Sandbox, format_report, grade_notebook, main

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ROOT / "tests" / "data" / "grading"
LIMITS = Limits(question_s=4.0, cell_s=8.0, startup_s=30.0)
NO_HOOK = Limits(question_s=4.0, cell_s=8.0, startup_s=30.0, audit_hook=False)
FULL = {"a1_masks": {"a1.magnitude_mask": 8, "a1.random_mask": 3},
        "a2_masked_adamw": {"a2.masked_adamw_step": 7},
        "a3_updates": {"a3.l1_to_init": 4, "a3.update_shares": 3, "a3.update_sparsity": 3, "a3.which_layer": 3},
        "a4_principal_weights": {"a4.low_rank_approximation": 4, "a4.principal_mask": 4, "a4.mask_overlap": 3}}
ATTACKED = {"c01_guard_off": "a4.mask_overlap", "c02_path_bypass": "a3.which_layer",
            "c03_walk_filesystem": "a4.principal_mask", "c04_network": "a3.l1_to_init",
            "c05_timeout_reset": "a3.update_sparsity", "c06_crash_the_grader": "a4.mask_overlap",
            "c07_blow_up_the_parent": "a4.mask_overlap", "c08_orphan": "a1.random_mask",
            "c09_forged_report_lines": "a1.magnitude_mask", "c10_do_nothing": "a2.masked_adamw_step"}

try:
    Sandbox().close()
    REASON = ""
except IsolationUnavailable as err:
    REASON = str(err)
pytestmark = pytest.mark.skipif(bool(REASON), reason=f"needs a working bubblewrap: {REASON}")


@pytest.fixture(scope="module")
def udp_helper():
    """A UDP service on the host that would hand out answers to whoever asks; records what it hears."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.2)
    heard, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, peer = server.recvfrom(100)
            except OSError:
                continue
            heard.append(data)
            server.sendto(b"solutions here", peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], heard
    stop.set()
    thread.join()
    server.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, udp_helper, assignments):
    """Every attack as a notebook (the reference with one answer replaced), and three honest ones."""
    out = tmp_path_factory.mktemp("submissions")
    marker = f"subnet-orphan-{os.getpid()}-{time.time_ns()}"
    for path in sorted(ATTACKS.glob("c*.py")):
        text = path.read_text()
        meta = dict(re.findall(r"^# (\w+): (\S+)$", text, flags=re.MULTILINE))
        source = (text.replace("{REPO}", str(ROOT)).replace("{PORT}", str(udp_helper[0]))
                  .replace("{MARKER}", marker))
        nb = json.loads((assignments / "solutions" / f"{meta['assignment']}.ipynb").read_text())
        cells = [c for c in nb["cells"] if c["cell_type"] == "code" and f"def {meta['replaces']}(" in "".join(c["source"])]
        assert len(cells) == 1, path
        cells[0]["source"] = source
        (out / f"{path.stem}.ipynb").write_text(json.dumps(nb))
    shutil.copy(assignments / "solutions" / "a1_masks.ipynb", out / "honest_a1.ipynb")
    shutil.copy(assignments / "solutions" / "a4_principal_weights.ipynb", out / "honest_a4.ipynb")
    shutil.copy(assignments / "a3_updates.ipynb", out / "honest_stub_a3.ipynb")
    return out, marker


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox() as box:
        yield box


@pytest.fixture(scope="module")
def folder_run(folder, tmp_path_factory):
    """The whole folder through the command line, in this process: reports, CSV, parent's peak memory."""
    path, _ = folder
    csv_path = tmp_path_factory.mktemp("csv") / "grades.csv"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    printed = io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(printed):
        assert main([str(path), "--csv", str(csv_path), "--json", "--time-limit", "4"]) == 0
    seconds = time.monotonic() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    reports = {Path(r["submission"]).stem: r for r in json.loads(printed.getvalue())}
    return reports, csv_path.read_text(), seconds, grown_mb


def _points(report):
    return {q["id"]: q["earned"] for q in report["questions"]}


@pytest.mark.parametrize("attack", sorted(ATTACKED))
def test_each_attack_scores_zero_on_its_question_and_the_rest_grades_normally(folder_run, attack):
    reports, *_ = folder_run
    report = reports[attack]
    expected = dict(FULL[report["assignment"]], **{ATTACKED[attack]: 0})
    assert _points(report) == expected, report


def test_a_folder_grades_the_honest_submissions_exactly_as_alone(folder, folder_run, sandbox):
    reports, csv_text, seconds, grown_mb = folder_run
    path, _ = folder
    for name in ("honest_a1", "honest_a4", "honest_stub_a3"):
        alone = asdict(grade_notebook(path / f"{name}.ipynb", limits=LIMITS, sandbox=sandbox))
        assert reports[name] == alone
    assert reports["honest_a1"]["earned"] == 11 and reports["honest_a4"]["earned"] == 11
    assert reports["honest_stub_a3"]["earned"] == 0
    rows = csv_text.splitlines()
    assert len(rows) == 1 + len(ATTACKED) + 3 and rows[0].startswith("submission,assignment,total,max,a1.")
    assert grown_mb < 300, f"the parent grew by {grown_mb:.0f} MB"  # nothing the children sent blew it up


def test_the_guard_state_is_out_of_reach_and_the_lab_is_not_there(folder, folder_run, sandbox):
    reports, *_ = folder_run
    note = next(q["note"] for q in reports["c01_guard_off"]["questions"] if q["id"] == "a4.mask_overlap")
    assert "import sparsity" in note  # still refused after the block lists and builtins were edited
    report = grade_notebook(folder[0] / "c01_guard_off.ipynb", limits=NO_HOOK, sandbox=sandbox)
    overlap = report.questions[2]
    assert overlap.earned == 0 and "ModuleNotFoundError: No module named 'sparsity'" in overlap.checks[0].message


@pytest.mark.parametrize("attack", ["c02_path_bypass", "c03_walk_filesystem", "c04_network"])
def test_without_the_audit_hook_the_sandbox_still_hides_the_files_and_the_network(folder, sandbox, udp_helper, attack):
    report = grade_notebook(folder[0] / f"{attack}.ipynb", limits=NO_HOOK, sandbox=sandbox)
    got = {q.id: q.earned for q in report.questions}
    assert got == dict(FULL[report.assignment], **{ATTACKED[attack]: 0}), format_report(report)
    assert udp_helper[1] == []  # not one datagram reached the host


def test_the_time_limit_is_the_parents_and_a_child_cannot_reset_it(folder, folder_run):
    reports, *_ = folder_run
    sparsity = next(q for q in reports["c05_timeout_reset"]["questions"] if q["id"] == "a3.update_sparsity")
    assert "time limit of 4 s" in sparsity["note"]


def test_a_child_that_attacks_the_grader_costs_only_its_own_question(folder_run):
    reports, *_ = folder_run
    report = reports["c06_crash_the_grader"]
    assert _points(report)["a4.low_rank_approximation"] == 4  # the forged earlier outputs were ignored
    overlap = next(q for q in report["questions"] if q["id"] == "a4.mask_overlap")
    # its forged, malformed outputs ended its question (the kills and limits that follow reach no one)
    assert overlap["earned"] == 0 and overlap["note"].startswith("0 points: ")


def test_a_structure_that_shares_itself_is_refused_in_the_child(folder_run):
    reports, _, seconds, _ = folder_run
    check = next(q for q in reports["c07_blow_up_the_parent"]["questions"] if q["id"] == "a4.mask_overlap")["checks"][0]
    assert "more than 100000 values" in check["message"]
    assert seconds < 600


def test_nothing_a_child_starts_outlives_its_job(folder, sandbox):
    path, marker = folder
    report = grade_notebook(path / "c08_orphan.ipynb", limits=NO_HOOK, sandbox=sandbox)
    assert {q.id: q.earned for q in report.questions} == {"a1.magnitude_mask": 8, "a1.random_mask": 0}
    survivors = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                survivors.append(pid)
        except OSError:
            pass
    assert survivors == []


def test_child_text_cannot_forge_report_lines(folder_run):
    reports, *_ = folder_run
    lines = format_report(_rebuild(reports["c09_forged_report_lines"])).splitlines()
    assert [line for line in lines if line.startswith("total:")] == ["total: 3/11 automatic points"]
    assert not any(line.startswith(("PASS", "  PASS 8/8", "a1.magnitude_mask (magnitude_mask): 8/8")) for line in lines)
    assert any("RuntimeError" in line and "PASS 8/8 everything" in line for line in lines)  # shown, on its own line
    assert all(len(line) < 700 for line in lines)


def _rebuild(raw):
    from lessons.grading.report import CheckResult, HandGradedResult, QuestionResult, Report

    questions = [QuestionResult(**{**q, "checks": [CheckResult(**c) for c in q["checks"]]}) for q in raw["questions"]]
    return Report(**{**raw, "questions": questions, "hand_graded": [HandGradedResult(**h) for h in raw["hand_graded"]]})


def test_folders_to_hide_under_a_bound_folder_are_covered(tmp_path, monkeypatch):
    """E.g. a copy of the lab installed into site-packages, or a repository inside the Python prefix."""
    from lessons.grading import bubblewrap

    env = tmp_path / "env"
    (env / "lab").mkdir(parents=True)
    (env / "lab" / "hidden.py").write_text("HIDDEN = {}\n")
    (env / "visible.txt").write_text("ok\n")
    roots = bubblewrap._python_roots()
    monkeypatch.setattr(bubblewrap, "_python_roots", lambda: [*roots, str(env)])
    args = bubblewrap.bwrap_args(None, hide=(str(env / "lab"), str(tmp_path / "elsewhere")))
    assert args[args.index(str(env / "lab")) - 1] == "--tmpfs" and str(tmp_path / "elsewhere") not in args
    listing = (f"import os; print(sorted(os.listdir({str(env)!r})), os.listdir({str(env / 'lab')!r}), "
               f"os.path.exists({str(ROOT / 'README.md')!r}), sorted(os.listdir('/')))")
    done = subprocess.run([shutil.which("bwrap"), *args, "--", bubblewrap.sys.executable, "-I", "-c", listing],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # the folder is there, empty; no repository file (its folder may exist as the parent of a bound .venv)
    assert done.stdout.startswith("['lab', 'visible.txt'] [] False ")
    assert "home" not in done.stdout and "etc" not in done.stdout


def test_a_view_is_read_only_on_the_host_too(tmp_path):
    """Not only inside the sandbox: a view left by a killed grader must not be a way to delete what it shows."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "kept.txt").write_text("kept\n")
    with Sandbox() as box:
        view = Path(box._view(str(source)))
        assert (view / "kept.txt").read_text() == "kept\n"
        for change in (lambda: (view / "new.txt").write_text("x"), lambda: (view / "kept.txt").unlink()):
            with pytest.raises(OSError) as refused:
                change()
            assert refused.value.errno == errno.EROFS
    assert (source / "kept.txt").read_text() == "kept\n"
    (source / "new.txt").write_text("the folder itself stays writable\n")


def test_a_killed_graders_mounts_are_cleared_by_the_next_grader(tmp_path, monkeypatch):
    from lessons.grading import bubblewrap

    source = tmp_path / "source"
    source.mkdir()
    (source / "kept.txt").write_text("kept\n")
    # A temporary directory of this test's own (0711: bubblewrap, as nobody, reaches the views below it), so that
    # graders on other xdist workers, which clear the stale folders of theirs, never race this test for its own.
    private = tempfile.mkdtemp(prefix="stale-graders-")
    os.chmod(private, 0o711)
    monkeypatch.setattr(tempfile, "tempdir", private)
    child = ("import os, time\n"
             "from lessons.grading import bubblewrap\n"
             "box = bubblewrap.Sandbox()\n"
             f"box._view({str(source)!r})\n"
             "scratch = os.path.join(box.root, 'scratch-0')\n"
             "os.mkdir(scratch)\n"
             "bubblewrap.mount_scratch(scratch, 1)\n"
             "print(box.root, flush=True)\n"
             "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": private})
    try:
        root = proc.stdout.readline().strip()
    finally:
        proc.kill()  # SIGKILL: no close(), no cleanup of any kind
        proc.wait()
    try:
        assert root.startswith(private + "/")
        left = bubblewrap._mounts_under(root)  # the scratch and the views (the probe's and ours) outlived their grader
        assert f"{root}/scratch-0" in left and any(m.startswith(f"{root}/view-") for m in left), left
        without_owner = tempfile.mkdtemp(prefix=bubblewrap.ROOT_PREFIX)  # a grader still making its folder
        with Sandbox() as live:  # the next grader clears the dead one's folder on its way in, and only that
            live._view(str(source))
            assert not Path(root).exists() and bubblewrap._mounts_under(root) == []
            assert Path(live.root).exists() and bubblewrap.clear_stale_roots() == []
            assert Path(without_owner).exists()
    finally:
        for mount_point in bubblewrap._mounts_under(private):  # whatever a failed assertion left behind
            bubblewrap.unmount(mount_point)
        shutil.rmtree(private)
    assert (source / "kept.txt").read_text() == "kept\n"
