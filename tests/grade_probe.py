"""Running a few lines of attacking code in the grader's sandbox and reading back what they saw.

``probe`` grades one code cell that defines ``probe()`` against one fake question whose
only case calls it; the string it returns comes back through the same pipe and the same
checks (``lessons.grading.wire``) as a student's answer. The attack tests use it to ask
the kernel directly whether a call is refused, rather than infer it from points.
"""

from types import SimpleNamespace

from lessons.grade import IsolationUnavailable, Limits, Sandbox
from lessons.grading.runner import SandboxRun, run_submission

NO_HOOK = Limits(question_s=20.0, cell_s=20.0, startup_s=60.0, audit_hook=False)
"""The audit hook off: what holds then is the operating system's fence alone."""


def bubblewrap_missing() -> str:
    """Why the sandbox cannot be built here ('' when it can)."""
    try:
        Sandbox().close()
    except IsolationUnavailable as err:
        return str(err)
    return ""


def run_probe(sandbox: Sandbox, cells: list[str], limits: Limits = NO_HOOK, args: tuple = ()) -> SandboxRun:
    """Grade ``cells`` against one question, ``probe(*args)``."""
    question = SimpleNamespace(id="probe", function="probe")
    case = SimpleNamespace(mode="call", args=args, kwargs={})
    return run_submission(sandbox, list(enumerate(cells)), [question], {"probe": [("probe/0", case)]}, limits)


def probe(sandbox: Sandbox, source: str, limits: Limits = NO_HOOK) -> object:
    """What ``probe()`` (defined by ``source``) returned in the sandbox, or the failure the grader saw."""
    run = run_probe(sandbox, [source], limits)
    got = run.outputs.get("probe", {}).get("probe/0")
    if isinstance(got, dict) and "output" in got:
        return got["output"]
    return f"no output: {got or run.failures.get('probe')}"
