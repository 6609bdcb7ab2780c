"""Attacks on the grader's clock (issue 26, "Grader"): pooling time limits and stopping the
parent's clock.

- A question's inputs reach the child only when that question's clock starts, so a thread
  started in a cell cannot find them and precompute a slow answer on the cells' time.
- An event can advance the grader only to the next unit; a line naming any other unit,
  earlier or later, changes nothing.
- A flood of well-formed report lines beside thousands of ``pass`` cells costs the parent
  constant work per line, with its clock checked before each: the run ends on time, with a report.
"""

import threading
import time

import pytest

from grade_probe import NO_HOOK, bubblewrap_missing, run_probe
from lessons.grade import Limits, Sandbox
from lessons.grading.runner import SandboxRun, _Job

REASON = bubblewrap_missing()
needs_bubblewrap = pytest.mark.skipif(bool(REASON), reason=f"needs a working bubblewrap: {REASON}")


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox() as box:
        yield box


def test_an_event_advances_only_to_the_next_unit_and_a_question_gets_its_inputs_when_it_starts():
    sent = []
    units = [("start", "", 9.0), ("cell", "0", 9.0), ("cell", "1", 9.0), ("q", "a", 9.0), ("q", "b", 9.0)]
    job = _Job(units, time.monotonic() + 60, {"a": {"x"}, "b": {"x"}}, sent.append, {"a": b"A", "b": b"B"})
    run = SandboxRun()

    def feed(*events):
        for event in events:
            assert job.handle(event, run) is False
        return job.unit()[:2]

    assert feed({"e": "cell", "i": 1}, {"e": "q", "id": "b"}, {"e": "ready"}) == ("start", "")
    assert feed({"e": "cell", "i": 0}, {"e": "cell", "i": 0}, {"e": "ready"}) == ("cell", "0")
    assert sent == []
    assert feed({"e": "cell", "i": 1}, {"e": "out", "id": "b", "cases": {}}, {"e": "ready"}) == ("q", "a")
    assert sent == [b"A"]  # the first question's inputs, now and not before
    assert feed({"e": "cell", "i": 1}, {"e": "ready"}, {"e": "out", "id": "b", "cases": {}}) == ("q", "a")
    assert feed({"e": "out", "id": "a", "cases": {}}) == ("q", "b") and sent == [b"A", b"B"]
    assert job.handle({"e": "out", "id": "b", "cases": {}}, run) is True
    assert set(run.outputs) == {"a", "b"}


PRECOMPUTE = '''
import builtins, sys, threading, time
def find_inputs():
    frame = sys._current_frames()[threading.main_thread().ident]
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if isinstance(value, dict) and "questions" in value:
                return value["questions"][0]["cases"][0]["args"][0]
        frame = frame.f_back
def precompute():
    secret = find_inputs()
    time.sleep(6)  # the slow answer
    builtins.PRECOMPUTED = secret * 2
threading.Thread(target=precompute, daemon=True).start()
time.sleep(2)
'''
SLOW_ANSWER = '''
import builtins, time
def probe(secret):
    if getattr(builtins, "PRECOMPUTED", None) is not None:
        return builtins.PRECOMPUTED
    time.sleep(6)
    return secret * 2
'''


@needs_bubblewrap
def test_a_slow_answer_cannot_be_precomputed_on_the_cells_time(sandbox):
    """Four 2 s cells (3 s each allowed) give a thread 8 s; the answer takes 6 s, a question 3 s."""
    limits = Limits(question_s=3.0, cell_s=3.0, startup_s=60.0, audit_hook=False)
    run = run_probe(sandbox, [PRECOMPUTE, "time.sleep(2)", "time.sleep(2)", SLOW_ANSWER], limits, args=(21,))
    assert "probe" not in run.outputs, run.outputs
    assert run.failures["probe"] == "stopped after its time limit of 3 s"


FLOOD = '''
import json, os, sys
fd = int(sys.argv[-1])
line = (json.dumps({"e": "cell", "i": 19_990}) + "\\n").encode()
for _ in range(200):
    os.write(fd, line * 1000)
import time
time.sleep(1000)
'''


@needs_bubblewrap
def test_a_flood_of_report_lines_beside_many_cells_cannot_stop_the_parents_clock(sandbox):
    """200,000 lines naming a late unit, 20,000 ``pass`` cells, a hanging cell: with a 3 s cell limit it ends
    within the 45 s submission limit, the rest graded (the old parent took hours: every line scanned every
    later unit). 45 s: two start-ups of a sandboxed torch take ~11 s each on a loaded 2-core machine."""
    limits = Limits(question_s=3.0, cell_s=3.0, startup_s=60.0, submission_s=45.0, audit_hook=False)
    cells = [FLOOD, *["pass"] * 20_000, "def probe():\n    return 'graded'"]
    result = {}

    def grade():
        start = time.monotonic()
        result["run"] = run_probe(sandbox, cells, limits)
        result["seconds"] = time.monotonic() - start

    worker = threading.Thread(target=grade, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the grader did not finish within 120 s"
    run = result["run"]
    assert result["seconds"] < 45 + 15
    assert 0 in run.skipped_cells  # the flooding cell: too many lines, or its time limit
    assert run.outputs["probe"]["probe/0"] == {"output": "graded"}  # and the rest was graded
