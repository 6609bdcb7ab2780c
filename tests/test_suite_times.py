"""benchmarks/suite_times.py: each test's CPU seconds, its own and its waited-for children's."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import suite_times
from sparsity.sweep import cpu_name


def test_the_report_counts_a_childs_cpu_in_the_test_that_waited_for_it(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "test_two.py").write_text(
        "import subprocess, sys\n"
        "def test_busy_child():\n"
        "    subprocess.run([sys.executable, '-c', 'x = 0\\nfor i in range(3_000_000): x += i'], check=True)\n"
        "def test_idle():\n"
        "    pass\n")
    out = tmp_path / "times.md"
    suite_times.main(["--out", str(out), "--", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_two.py")])
    rows = {r["test"].split("::")[-1]: r for r in json.loads(out.with_suffix(".json").read_text())}
    assert set(rows) == {"test_busy_child", "test_idle"}
    assert rows["test_busy_child"]["cpu_s"] > 0.05 > rows["test_idle"]["cpu_s"]
    report = out.read_text()
    assert report.strip() in capsys.readouterr().out
    assert "- 2 tests; CPU" in report and "(exit code 0)" in report
    assert "- machine steadiness (`benchmarks.steadiness`" in report and "in 30 tries, after it" in report
    assert report.index("test_busy_child") < report.index("test_idle")  # slowest first
    if Path("/proc/stat").exists():  # the whole machine: the busy child is a Python process the run waited for
        assert "## The whole machine" in report and "core-seconds idle" in report
        shares = dict(re.findall(r"^\| ([a-zA-Z ]+) \| ([0-9.]+) \|", report.split("## The whole machine")[1], re.M))
        assert float(shares["pytest workers"]) + float(shares.get("other Python processes", 0)) > 0.05, shares


def test_a_machine_sampler_counts_a_process_it_did_not_start_by_kind() -> None:
    if not Path("/proc/stat").exists():
        pytest.skip("needs Linux's /proc")
    sampler = suite_times.MachineSampler(period_s=0.2)
    sampler.start()
    busy_then_asleep = ("import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass\n"
                        "time.sleep(0.5)")
    subprocess.run([sys.executable, "-c", busy_then_asleep], check=True)
    sampler.stop()
    assert sampler.cpu["other Python processes"] > 0.7, sampler.cpu  # its last 0.5 s are asleep: one second seen
    assert sampler.idle_s >= 0


def test_the_table_gives_each_module_its_share() -> None:
    rows = [{"test": "tests/a.py::x", "cpu_s": 3.0, "wall_s": 4.0}, {"test": "tests/b.py::y", "cpu_s": 1.0, "wall_s": 1.0}]
    text = suite_times.table(rows, 10.0, (0.5, 1.5))
    assert "| tests/a.py | 3.0 | 75% |" in text and "| tests/b.py | 1.0 | 25% |" in text
    assert "CPU 4 s" in text and "wall 10 s" in text and "load average 0.5 at the start, 1.5 at the end" in text
    assert f"logical CPUs: {cpu_name()})" in text  # the CPU the seconds were spent on


@pytest.mark.parametrize("command, kind", [
    ("/usr/lib/chromium/chromium --type=renderer", "Chromium"),
    ("python -m ipykernel_launcher -f kernel.json", "lesson kernels"),
    ("python -m jupyterlab --no-browser", "JupyterLab"),
    ("bwrap --unshare-all -- python -I /sandbox/sandbox.py 5", "grader sandboxes"),
    ("python -B -c from multiprocessing.spawn import spawn_main", "process pools"),
    ("python -u -c import sys;exec(eval(sys.stdin.readline()))", "pytest workers"),
    ("python -c x = [1, 2] # an array", "other Python processes"),
    ("make test", "other"),
])
def test_processes_are_told_apart_by_their_command_lines(command: str, kind: str) -> None:
    assert suite_times.process_kind(command) == kind
