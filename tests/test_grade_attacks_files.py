"""Attacks through the submission files and the reports (issue 26, "Grader"): a symbolic link
to the instructor's solution, a FIFO named ``*.ipynb`` in a class folder, terminal escape codes
in text a submission controls, a tensor shape that overflows, and a notebook whose file name
and metadata name different assignments. These are the grader's own checks, before and after
the sandbox, so they run in trusted mode (the same parent, no bubblewrap needed).
"""

import contextlib
import io
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from lessons.grade import Limits, Sandbox, format_report, grade_notebook, main
from lessons.grading.gradebook import Column, Gradebook, StudentIds
from lessons.grading.wire import WireError, decode, printable

LIMITS = Limits(question_s=20.0, cell_s=20.0, startup_s=60.0)


@pytest.fixture(scope="module")
def trusted():
    with Sandbox(trusted=True) as box:
        yield box


def _grade_folder(folder: Path, csv_path: Path, timeout: float = 300) -> dict:
    """The command line on a folder, in a thread that must finish within ``timeout`` seconds."""
    result, printed = {}, io.StringIO()

    def run():
        with contextlib.redirect_stdout(printed):
            result["code"] = main([str(folder), "--csv", str(csv_path), "--json", "--trusted"])

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    result["alive"] = worker.is_alive()
    result["reports"] = {Path(r["submission"]).name: r for r in json.loads(printed.getvalue() or "[]")}
    return result


def test_a_link_to_the_solution_and_a_fifo_are_reported_not_graded_or_waited_on(assignments, tmp_path):
    folder = tmp_path / "class"
    folder.mkdir()
    shutil.copy(assignments / "a1_masks.ipynb", folder / "alice.ipynb")  # an honest stub: 0 points
    (folder / "bob.ipynb").symlink_to(assignments / "solutions" / "a1_masks.ipynb")
    os.mkfifo(folder / "mallory.ipynb")
    try:
        result = _grade_folder(folder, tmp_path / "grades.csv")
    finally:
        with contextlib.suppress(OSError):  # the old grader blocks opening the FIFO: let it go
            os.close(os.open(folder / "mallory.ipynb", os.O_WRONLY | os.O_NONBLOCK))
    assert not result["alive"], "the grader hung on the FIFO"
    rows = (tmp_path / "grades.csv").read_text().splitlines()
    assert rows[0].startswith("submission,assignment,total,max,") and len(rows) == 4
    reports = result["reports"]
    bob, mallory = reports["bob.ipynb"], reports["mallory.ipynb"]
    assert bob["earned"] == 0 and "a symbolic link, not a regular file" in bob["notes"][0]
    assert mallory["earned"] == 0 and "a FIFO, not a regular file" in mallory["notes"][0]
    assert reports["alice.ipynb"]["assignment"] == "a1_masks" and reports["alice.ipynb"]["points"] == 11


ESCAPES = "\x1b[1A\x1b[2K\rPASS 8/8 everything\x1b[0m\u202e\x07"


def _gradebook_csv(report) -> str:
    """The gradebook CSV a class folder holding only this report would get."""
    stream = io.StringIO()
    columns = [Column(q.id, 0, False) for q in report.questions] + [Column(h.id, h.points, True)
                                                                     for h in report.hand_graded]
    Gradebook(stream, columns, StudentIds()).write(report)
    return stream.getvalue()


def test_terminal_escapes_from_a_submission_reach_no_report(assignments, tmp_path, trusted):
    nb = json.loads((assignments / "solutions" / "a1_masks.ipynb").read_text())
    for source in (f"def magnitude_mask(model, density, scope='global'):\n    raise RuntimeError({ESCAPES!r} * 3)\n",
                   f"raise ValueError({ESCAPES!r})"):
        nb["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                            "source": source})
    answer = next(c for c in nb["cells"] if c["cell_type"] == "markdown" and "answer" in c["metadata"].get("tags", []))
    answer["source"] = ESCAPES
    path = tmp_path / "a1_\x1b[2K\rtotal: 11 of 11.ipynb"  # the file name is the student's too
    path.write_text(json.dumps(nb))
    report = grade_notebook(path, limits=LIMITS, sandbox=trusted)
    text, csv_text = format_report(report), _gradebook_csv(report)
    assert report.earned == 3  # the random mask still graded
    for shown in (text, csv_text.replace("\r\n", "\n")):  # the CSV's own line ends aside
        assert not any(c in shown for c in "\x1b\r\x07\u202e"), repr(shown)
    assert "\\x1b[1A" in text  # shown, escaped


def test_printable_escapes_every_control_character():
    assert printable("a\x1b[2K\rb\u202ec\x00\nd") == "a\\x1b[2K b\\u202ec\\x00 d"


def test_a_tensor_shape_that_overflows_is_a_wire_error():
    """An empty tensor whose other sizes multiply past int64 made torch raise, which became 'grader error'."""
    with pytest.raises(WireError, match="larger than any output may be"):
        decode({"__tensor__": ["float32", [0, 2**31 - 1, 2**31 - 1, 2**31 - 1], ""]})


def test_a_file_name_and_metadata_that_name_different_assignments_are_refused(assignments, tmp_path, trusted):
    path = tmp_path / "a4_principal_weights_alice.ipynb"
    shutil.copy(assignments / "solutions" / "a1_masks.ipynb", path)  # a1's solution, handed in as a4
    report = grade_notebook(path, limits=LIMITS, sandbox=trusted)
    assert report.earned == 0 and report.questions == []
    assert "the file name names a4_principal_weights but the notebook's metadata names a1_masks" in report.notes[0]
    forced = grade_notebook(path, assignment="a1_masks", limits=LIMITS, sandbox=trusted)
    assert forced.earned == 11  # the instructor may still say which it is
