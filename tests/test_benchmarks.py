"""The optimizer-step benchmark runs end to end in fast mode and reports what it claims."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from benchmarks import optimizer_step
from sparsity.sweep import busy_warning, cpu_name

DENSITIES = ("1%", "5%", "20%", "100%")
OPTIMIZERS = ("CompactAdamW (default: fused)", "CompactAdamW (fused=False)", "CompactAdamW (fused), values-only gradient",
              "MaskedAdamW", "AdamW (fused=True)", "AdamW (foreach=True)", "AdamW (foreach=False)")
# The fast MLP is 320-640-640-320-320 with bias-free Linear layers.
FAST_PARAMETERS = 160 * 320 + 320 * 320 + 320 * 160 + 160 * 160  # = 230,400


def _table_rows(markdown: str) -> dict[tuple[str, str], list[str]]:
    """(density, optimizer) -> the other cells of each data row of the markdown table."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].endswith("%"):
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_optimizer_step_benchmark_fast_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LAB_FAST", "1")
    monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 6.0, 5.0))  # a busy machine: the benchmark says so first
    out = tmp_path / "optimizer_step.md"
    caller_threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's count, which the benchmark's --threads must replace and give back
    try:
        # 3 timed steps and one thread: the table's structure, bytes and ratios are what is checked, not speed.
        assert optimizer_step.main(["--steps", "3", "--threads", "1", "--out", str(out)]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(caller_threads)
    captured = capsys.readouterr()
    printed = captured.out
    assert "warning: the 1-minute load average is 7.5, above this benchmark's 1 thread(s)" in captured.err
    written = out.read_text()
    assert "- machine steadiness (`benchmarks.steadiness`" in written and "in 3 tries, after it" in written

    counts = re.findall(r"([\d,]+) parameters", printed)
    assert counts, "the benchmark must print the parameter count"
    assert {int(c.replace(",", "")) for c in counts} == {FAST_PARAMETERS}

    rows = _table_rows(written)
    assert set(rows) == {(d, o) for d in DENSITIES for o in OPTIMIZERS}
    assert len(rows) == len(DENSITIES) * len(OPTIMIZERS)
    for step_ms, time_ratio, _, _, peak_mb in rows.values():
        assert float(step_ms) > 0 and float(time_ratio) > 0 and float(peak_mb) >= 0
    for density in DENSITIES:
        assert float(rows[(density, "AdamW (fused=True)")][1]) == 1.0  # the baseline of the ratios

    def state_bytes(density: str, optimizer: str) -> int:
        return int(rows[(density, optimizer)][2].replace(",", ""))

    # A full mask trains every entry, and v1 MaskedAdamW keeps AdamW's dense state.
    adamw = state_bytes("100%", "AdamW (fused=True)")
    assert adamw > 0
    assert state_bytes("100%", "MaskedAdamW") == adamw
    assert state_bytes("100%", "AdamW (foreach=False)") == adamw
    fused, reference = OPTIMIZERS[:2]
    assert state_bytes("5%", fused) == state_bytes("5%", reference) == state_bytes("5%", OPTIMIZERS[2])
    # The compact form: 12 bytes per selected entry (two float32 moments, one int32 index).
    assert state_bytes("5%", reference) <= 0.08 * adamw
    assert state_bytes("1%", reference) < state_bytes("5%", reference) < state_bytes("20%", reference)
    assert f"- torch {torch.__version__}; device: CPU ({cpu_name()}); " in written
    assert "; 1 torch CPU threads of " in written  # the benchmark's --threads, not the caller's
    assert "- 1-minute load average at start / end: " in written and "- command: `LAB_FAST=1 " in written


def test_reports_name_the_cpu_by_model_vendor_and_instruction_set() -> None:
    name = cpu_name()
    assert name.endswith(f"; {torch.backends.cpu.get_cpu_capability()}")
    cpuinfo = Path("/proc/cpuinfo")
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", cpuinfo.read_text(), re.MULTILINE) if cpuinfo.exists() else None
    if vendor:  # Linux on x86: the vendor, family and model numbers too
        assert f"{vendor.group(1)} family " in name and " model " in name


def test_a_busy_machine_is_named_before_timing_and_a_quiet_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 9.0, 9.0))
    assert busy_warning(2) is None  # the 1-minute average, up to the thread count, is quiet enough
    assert busy_warning(1) is not None and "load average is 2.0, above this benchmark's 1 thread(s)" in busy_warning(1)


def test_values_grad_crossover_fast_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from benchmarks import values_grad_crossover as crossover

    monkeypatch.setenv("LAB_FAST", "1")
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))  # quiet for one thread: no warning, no remark
    out = tmp_path / "crossover.md"
    assert crossover.main(["--threads", "1", "--reps", "1", "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    written, rows = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert "- 1-minute load average at start / end: 1.0 / 1.0\n" in written
    shapes = {(4 * d, d) for d in crossover.FAST_WIDTHS} | {(d, 4 * d) for d in crossover.FAST_WIDTHS}
    cases = {(r["n_out"], r["n_in"], r["tokens"], r["density"]) for r in rows}
    assert cases == {(o, i, t, d) for o, i in shapes for t in crossover.FAST_TOKENS for d in crossover.DENSITIES}
    assert all(r["sampled_ms"] > 0 and r["dense_ms"] > 0 and r["ratio"] == pytest.approx(
        r["sampled_ms"] / r["dense_ms"], rel=1e-3) for r in rows)
    crossing = [line for line in written.splitlines() if line.startswith("- ") and " tokens: " in line]
    assert len(crossing) == len(shapes) * len(crossover.FAST_TOKENS)  # one crossover per layer and token count
    assert "GPU: not run" in written


def test_crossover_is_the_largest_density_where_sampled_wins() -> None:
    from benchmarks.values_grad_crossover import Case, crossovers

    cases = [Case(8, 2, 64, 0.01, 1.0, 2.0), Case(8, 2, 64, 0.1, 1.5, 2.0), Case(8, 2, 64, 0.4, 3.0, 2.0),
             Case(8, 2, 32, 0.01, 3.0, 2.0)]
    assert crossovers(cases) == {(8, 2, 64): 0.1, (8, 2, 32): None}


def test_timing_reports_say_other_jobs_shared_the_cpu_only_when_they_did() -> None:
    from sparsity.sweep import load_line

    assert "above" not in load_line(("1.4", "1.9"), 2) and "1.4 / 1.9" in load_line(("1.4", "1.9"), 2)
    assert "above the 2 thread(s): other jobs shared the CPU" in load_line(("1.4", "3.5"), 2)
    assert "above" not in load_line(("n/a", "n/a"), 2)


def test_optimizer_step_benchmark_refuses_bad_counts(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--steps", "0"], ["--threads", "-1"]):
        with pytest.raises(SystemExit):
            optimizer_step.parse_args(argv)
        assert "must be a positive int" in capsys.readouterr().err


def test_criteria_cost_benchmark_fast_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import criteria_cost

    monkeypatch.setenv("LAB_FAST", "1")
    out = tmp_path / "criteria_cost.md"
    assert criteria_cost.main(["--batches", "1", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "criterion" not in line and "---" not in line]
    names = [row.split("|")[1].strip() for row in rows]
    assert names[:6] == ["random", "magnitude", "gradient", "SNIP", "Fisher", "movement"]
    assert any(n.startswith("LIFT") and "exact" in n for n in names) and any("svd_lowrank" in n for n in names)
    assert all(float(row.split("|")[4]) > 0 for row in rows)


def test_markdown_table_aligns_columns_and_rejects_ragged_rows() -> None:
    from sparsity.sweep import markdown_table

    table = markdown_table(["method", "acc"], [["full", "0.91"], ["lora", "0.88"]])
    assert table.splitlines() == ["| method | acc |", "| --- | ---: |", "| full | 0.91 |", "| lora | 0.88 |"]
    with pytest.raises(ValueError, match="one entry per header column"):
        markdown_table(["method", "acc"], [["full"]])


def test_lesson_times_runs_a_lesson_and_skips_only_the_check_cells_errors(tmp_path: Path) -> None:
    from benchmarks import lesson_times

    (tmp_path / "99_tiny.py").write_text('# %%\nx = sum(range(10))\n\n# %% tags=["raises-exception"]\n'
                                         'raise AssertionError("check_x: not implemented yet")\n\n# %%\nprint(x)\n')
    wall, cells, errors = lesson_times.time_lesson("99", folder=tmp_path)
    assert wall > 0 and errors == 0 and sorted(i for _, i, _ in cells) == [0, 1, 2]
    (tmp_path / "98_broken.py").write_text("# %%\n1 / 0\n")
    with pytest.raises(Exception, match="ZeroDivisionError"):
        lesson_times.time_lesson("98", folder=tmp_path)
    with pytest.raises(ValueError, match="lesson '97'"):
        lesson_times.time_lesson("97", folder=tmp_path)
    with pytest.raises(ValueError, match="no widget-driving cell for 99_tiny.py"):  # the checks load from tests/
        lesson_times.time_lesson("99", widget_checks=True, folder=tmp_path)


def test_rounds_rotate_their_order_and_ratios_are_read_within_each_round() -> None:
    order: list[str] = []

    class Step:
        def __init__(self, name: str) -> None:
            self.name = name

        def step(self) -> None:
            order.append(self.name)

    steppers = {name: Step(name) for name in ("a", "b", "c")}
    rounds = optimizer_step.time_rounds(steppers, 12, warmup=1)  # type: ignore[arg-type]
    per_round = optimizer_step.STEPS_PER_ROUND
    assert order[:3] == ["a", "b", "c"]  # the warm-up
    firsts = order[3::per_round][:3]
    assert firsts == ["a", "b", "c"] and order[3 + 3 * per_round] == "b"  # round two starts one further on
    assert [len(r) for r in rounds["a"]] == [per_round, per_round, 12 - 2 * per_round]
    timed = {"x": [[2.0, 4.0, 3.0], [10.0]], "full": [[1.0, 1.0, 5.0], [4.0]]}
    assert optimizer_step.round_ratios(timed, "x", "full") == [3.0, 2.5]  # medians 3 / 1, then 10 / 4
    assert optimizer_step.medians(timed) == {"x": 3.5, "full": 2.5}  # over all steps: (3 + 4) / 2, (1 + 4) / 2


def test_steadiness_times_the_same_work_and_reports_its_spread(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import steadiness

    before = torch.get_num_threads()
    probe = steadiness.probe(4)
    assert torch.get_num_threads() == before  # one thread only while it times
    assert len(probe.times_ms) == 4 and all(t > 0 for t in probe.times_ms)
    assert probe.spread == max(probe.times_ms) / min(probe.times_ms) >= 1.0
    assert len(probe.copy_ms) == 4 and all(t > 0 for t in probe.copy_ms)  # the memory's part of each try
    fixed = steadiness.Steadiness((10.0, 12.0, 15.0))
    assert fixed.describe() == "10.0 to 15.0 ms (median 12.0; max/min 1.50) in 3 tries" and fixed.copy_spread is None
    both = steadiness.Steadiness((10.0, 12.0, 15.0), (2.0, 3.0, 4.0))
    assert both.copy_spread == 2.0
    assert both.describe() == ("10.0 to 15.0 ms (median 12.0; max/min 1.50), copying 32 MiB 2.0 to 4.0 ms "
                               "(median 3.0; max/min 2.00), in 3 tries")
    assert "before the timing 10.0 to 15.0 ms" in steadiness.line(fixed, probe)
    with pytest.raises(ValueError, match="tries must be at least 2"):
        steadiness.probe(1)
    with pytest.raises(SystemExit):
        steadiness.main(["--tries", "1"])
    assert "--tries: tries must be at least 2" in capsys.readouterr().err


def test_a_timing_session_warns_sets_threads_notes_loads_and_gives_them_back(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.steadiness import TimingSession

    original = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's count, which the session must replace and give back
    caller = 2
    try:
        loads = iter([(3.0, 0, 0), (3.0, 0, 0), (4.0, 0, 0)])  # the warning's, the start's, the end's
        monkeypatch.setattr(os, "getloadavg", lambda: next(loads))
        with TimingSession(1, tries=2) as session:
            assert torch.get_num_threads() == 1
            session.finish()
            assert session.loads == ("3.0", "4.0")
            assert session.line is not None and "in 2 tries, after it" in session.line
            assert session.lines == [session.line]
        assert torch.get_num_threads() == caller
        warned = capsys.readouterr().err
        assert "warning: the 1-minute load average is 3.0, above this benchmark's 1 thread(s)" in warned
        monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 0, 0))
        with pytest.raises(RuntimeError, match="interrupted"), TimingSession(1, tries=2, timed=False) as session:
            raise RuntimeError("interrupted")
        assert torch.get_num_threads() == caller  # given back after an error too
        assert session.line is None and session.lines == []  # bytes only: no probe
        assert capsys.readouterr().err == ""  # and no warning
    finally:
        torch.set_num_threads(original)


def test_values_grad_breakdown_fast_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import values_grad_breakdown as breakdown
    from sparsity import values_grad

    real = values_grad.selected_weight_grad
    monkeypatch.setenv("LAB_FAST", "1")
    out = tmp_path / "breakdown.md"
    assert breakdown.main(["--threads", "1", "--out", str(out)]) == 0
    assert values_grad.selected_weight_grad is real  # the timing wrapper is gone after the run
    written = out.read_text()
    rows = {cells[0]: cells[1:] for line in written.splitlines() if line.startswith("| ") and "---" not in line
            for cells in [[c.strip() for c in line.strip("|").split("|")]] if cells[0] in breakdown.VARIANTS}
    assert set(rows) == set(breakdown.VARIANTS)
    assert float(rows[breakdown.FULL][1]) == 1.0
    assert float(rows[breakdown.SPARSE_VALUES][6]) > 0  # the sampled product's calls were timed
    assert rows[breakdown.FLOOR][6] == "-" and rows[breakdown.FULL][6] == "-"
    assert "Without the selected entries' gradient the step takes" in written and "GPT `micro`" in written


def test_the_floor_computes_no_weight_gradient_and_the_real_step_does() -> None:
    from benchmarks import scaleup_memory as sm
    from benchmarks.values_grad_breakdown import PhasedStep, sampled_product
    from scaleup import gpt
    from scaleup import tasks as tk
    from sparsity import values_grad

    world = tk.World()
    base = gpt.build("micro", world.vocab_size, 16, seed=0)
    batch = sm.random_batch(world.vocab_size, 2, 16, "cpu")
    rank = sm.matched_rank(base)
    for skip in (True, False):
        model, opt, _ = sm.prepare(sm.SPARSE_VALUES, base, rank)
        before = [p.detach().clone() for p in model.parameters()]
        stepper = PhasedStep(model, opt, batch, skip_sampled=skip)
        stepper.step(1)
        changed = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
        assert changed is not skip  # zero gradients move no AdamW weight (no decay here); real ones do
        assert all(len(t) == 1 for t in stepper.phases.values())
        assert (stepper.phases["sampled product"][0] > 0) is not skip
    g, x = torch.randn(8, 6), torch.randn(8, 5)
    flat = torch.tensor([0, 7, 29], dtype=torch.int32)
    with sampled_product(skip=True):
        assert torch.equal(values_grad.selected_weight_grad(g, x, flat), torch.zeros(3))
    with sampled_product(skip=False) as spent:
        got = values_grad.selected_weight_grad(g, x, flat)
    assert len(spent) == 1 and torch.allclose(got, (g.t() @ x).view(-1)[flat.long()], atol=1e-5)
