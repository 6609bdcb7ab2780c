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
    shown = capsys.readouterr().out
    assert "report written to" in shown
    n = len(demo.SECTIONS)
    assert all(f"[section {i} of {n}] done in " in shown for i in range(1, n + 1))
    assert "make demo FULL=1" in shown and "make demo FULL=1" in report
    assert report.count("| ") > 0 and "## Time per section" in report


def test_the_update_sentence_follows_the_numbers() -> None:
    assert "W2 holds 95% of the update; it holds the largest share" in demo.update_sentence(
        1e-3, {"W1": 0.02, "W2": 0.95, "W3": 0.03})
    assert "W1 holds more (39%): raw update sizes point away" in demo.update_sentence(
        0.0, {"W1": 0.39, "W2": 0.29, "W3": 0.31})


@pytest.mark.parametrize("told, expected", [(None, 1), ("2", 2)])
def test_the_demo_runs_on_the_thread_count_sparsity_threads_chooses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    told: str | None, expected: int) -> None:
    import torch

    seen = []

    def section(out: Path, fast: bool) -> tuple[str, str]:
        """A section that records the thread count it runs on."""
        seen.append(torch.get_num_threads())
        return "", ""

    monkeypatch.setattr(demo, "SECTIONS", [section])
    if told is None:
        monkeypatch.delenv("LAB_THREADS", raising=False)
    else:
        monkeypatch.setenv("LAB_THREADS", told)
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # torch's own default on a bigger machine
    try:
        assert demo.main(["--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [expected]
