"""`make demo`'s main job writes its report, figures and summary table (fast mode)."""

import re
from pathlib import Path

import pytest

import demo


def test_demo_writes_report_and_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    for figure in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (tmp_path / figure).stat().st_size > 10_000
    assert "lambda = 0 |" in report and "lambda = 0.001 |" in report
    assert "report written to" in capsys.readouterr().out
