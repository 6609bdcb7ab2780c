"""The fine-tuning cost benchmark (full vs compact sparse vs LoRA) runs in fast mode and reports what it claims."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from benchmarks import scaleup_memory as bench
from scaleup import gpt
from scaleup import tasks as tk


def _tables(markdown: str) -> list[dict[str, list[str]]]:
    """Per batch size (in the report's order): method (without the rank suffix) -> the other cells of its row."""
    tables: list[dict[str, list[str]]] = []
    for line in markdown.splitlines():
        if line.startswith("## Batch "):
            tables.append({})
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = cells[0].split(" (r=")[0]
        if line.startswith("|") and name in bench.METHODS:
            tables[-1][name] = cells[1:]
    return tables


def _int(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_matched_rank_is_the_closest_lora_count_to_5_percent() -> None:
    world = tk.World()
    model = gpt.build("tiny", world.vocab_size, world.block_size)
    d = model.config.n_embd  # block matrices: qkv (3d, d), proj (d, d), fc (4d, d), proj (d, 4d)
    total, per_rank = 12 * d * d * model.config.n_layer, 14 * d * model.config.n_layer
    r = bench.matched_rank(model)
    assert all(abs(r * per_rank - 0.05 * total) <= abs(k * per_rank - 0.05 * total) for k in (r - 1, r + 1) if k >= 1)


def test_benchmark_fast_mode_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LAB_FAST", "1")
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 3.0, 3.0))  # a busy machine: said before timing and after
    out = tmp_path / "scaleup_memory.md"
    assert bench.main(["--threads", "1", "--out", str(out)]) == 0
    written = out.read_text()
    captured = capsys.readouterr()
    assert "warning: the 1-minute load average is 3.5, above this benchmark's 1 thread(s)" in captured.err
    assert "- 1-minute load average at start / end: 3.5 / 3.5 (above the 1 thread(s)" in written
    assert written.strip() in captured.out
    assert "GPT `micro` (cpu)" in written and "LAB_FAST=1" in written

    rows, small_rows = _tables(written)
    assert set(rows) == set(bench.methods_for("cpu")) == set(bench.METHODS)
    assert set(small_rows) == set(bench.SMALL_BATCH_METHODS)
    world = tk.World()
    model = gpt.build("micro", world.vocab_size, 16)  # fast mode: sequences of 16 random tokens
    weights = sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2)
    trainable = {m: _int(r[0]) for m, r in rows.items()}
    assert trainable[bench.FULL] == model.n_params()
    assert trainable[bench.SPARSE] == pytest.approx(0.05 * weights, rel=0.02)
    assert trainable[bench.LORA] == trainable[bench.SPARSE_LORA]  # the matched count, exactly
    for cells in rows.values():
        step_ms, ratio, tokens_s = float(cells[1]), float(cells[2]), float(cells[3].replace(",", ""))
        assert step_ms > 0 and ratio > 0 and tokens_s > 0 and float(cells[7]) > 0  # saved activations
    assert float(rows[bench.FULL][2]) == 1.0

    everything = json.loads(out.with_suffix(".json").read_text())
    data = {r["method"]: r for r in everything if r["batch"] == 32}
    small = {r["method"]: r for r in everything if r["batch"] == 8}
    assert set(data) == set(bench.METHODS) and set(small) == set(bench.SMALL_BATCH_METHODS)
    assert len(everything) == len(data) + len(small)
    assert {r["setting"] for r in data.values()} == {"32 x 16"} and {r["setting"] for r in small.values()} == {"8 x 16"}
    n, tensors, matrices = model.n_params(), len(list(model.parameters())), 4 * model.config.n_layer
    for m, r in data.items():  # float32 weights (and LoRA's adapters), by category
        assert r["params"] == 4 * (n + (trainable[m] if m.startswith(bench.LORA) else 0)), m
        assert r["peak_bytes"] >= r["params"] + r["grads"] + r["optimizer_state"], m  # all live at the step's end
    full, sparse, values, lora_row = (data[m] for m in (bench.FULL, bench.SPARSE, bench.SPARSE_VALUES, bench.LORA))
    assert full["grads"] == 4 * n  # a float32 gradient per parameter
    assert sparse["grads"] == 4 * weights  # the dense weight gradient of every block matrix
    assert values["grads"] == 4 * trainable[bench.SPARSE_VALUES]  # the [k] anchors' only
    assert lora_row["grads"] == 4 * trainable[bench.LORA]
    # AdamW: two float32 moments per parameter and a float32 step counter per tensor.
    assert full["optimizer_state"] == 8 * n + 4 * tensors
    # Compact, per selected entry: two moments and an int32 index; a step counter per matrix;
    # values-grad adds the [k] anchor. LoRA: two moments per adapter entry, a counter per adapter tensor.
    assert sparse["optimizer_state"] == 12 * trainable[bench.SPARSE] + 4 * matrices
    assert values["optimizer_state"] == 16 * trainable[bench.SPARSE_VALUES] + 4 * matrices
    assert lora_row["optimizer_state"] == 8 * trainable[bench.LORA] + 4 * 2 * matrices
    assert lora_row["peak_bytes"] < full["peak_bytes"] and values["peak_bytes"] < sparse["peak_bytes"]
    assert trainable[bench.SPARSE_VALUES] == trainable[bench.SPARSE]
    # rebuilt inputs (the default) change the saved activations only: fewer of them, a lower peak
    for by in (data, small):
        rebuilt, kept = by[bench.SPARSE_VALUES], by[bench.SPARSE_KEPT]
        for key in ("params", "grads", "optimizer_state", "trainable"):
            assert rebuilt[key] == kept[key], key
        assert rebuilt["activations"] < kept["activations"] and rebuilt["peak_bytes"] < kept["peak_bytes"]
    assert trainable[bench.SPARSE_1] < trainable[bench.SPARSE] < trainable[bench.SPARSE_20]
    # each step-time ratio comes with its lowest and highest within one interleaved round; full's is 1 in every round
    assert data[bench.FULL]["time_vs_full_rounds"] == [1.0, 1.0]
    for m, r in data.items():
        low, high = r["time_vs_full_rounds"]
        assert 0 < low <= high, m
    spread = re.search(r"values-grad step time <= 0.80x full \(batch 32 x 16\): (?:met|NOT met) \(([\d.]+)x; "
                       r"([\d.]+)x to ([\d.]+)x within single rounds\)", written)
    assert spread, "the values-grad step target names its per-round spread"
    assert re.search(r"- machine steadiness .*: before the timing [\d.]+ to [\d.]+ ms "
                     r"\(median [\d.]+; max/min [\d.]+\), copying 32 MiB [\d.]+ to [\d.]+ ms "
                     r"\(median [\d.]+; max/min [\d.]+\), in 3 tries, after it [\d.]+ to [\d.]+ ms", written)
    assert [float(v) for v in spread.groups()[1:]] == pytest.approx(data[bench.SPARSE_VALUES]["time_vs_full_rounds"],
                                                                   abs=6e-4)
    # checkpointing changes the saved activations only: fewer of them and a lower peak, at both batch sizes
    for by in (data, small):
        for method in (bench.FULL, bench.SPARSE_VALUES, bench.LORA):
            plain, ckpt = by[method], by[method + bench.CKPT]
            assert not plain["checkpointing"] and ckpt["checkpointing"]
            for key in ("params", "grads", "optimizer_state", "trainable"):
                assert ckpt[key] == plain[key], (method, key)
            assert ckpt["activations"] < plain["activations"] / 2 and ckpt["peak_bytes"] < plain["peak_bytes"], method
    # the smaller batch saves fewer activations and keeps the same weight side
    for method in bench.SMALL_BATCH_METHODS:
        assert small[method]["activations"] < data[method]["activations"], method
        assert small[method]["optimizer_state"] == data[method]["optimizer_state"], method
    assert sum(line.startswith("- target ") for line in written.splitlines()) == 7 + 6
    assert "**What reaches 0.6x, and why.**" in written and "(batch 8 x 16)" in written


def test_the_small_batch_must_be_below_the_batch(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--batch", "8", "--small-batch", "8"])
    assert "--small-batch (8) must be below --batch (8)" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_benchmark_cuda_path_fast_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_FAST", "1")
    out = tmp_path / "scaleup_memory_cuda.md"
    assert bench.main(["--device", "cuda", "--preset", "tiny", "--out", str(out)]) == 0
    written = out.read_text()
    assert "GPT `tiny` (cuda)" in written and "torch.cuda.max_memory_allocated" in written
    rows = _tables(written)[0]
    assert set(rows) == set(bench.methods_for("cuda"))
    assert all(float(cells[6]) > 0 for cells in rows.values())  # the allocator's peak above model + data


def test_memory_only_reports_bytes_and_no_step_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LAB_FAST", "1")
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 3.0, 3.0))  # busy, but bytes do not depend on the load
    out = tmp_path / "bytes.md"
    assert bench.main(["--threads", "1", "--memory-only", "--out", str(out)]) == 0
    assert "warning: the 1-minute load average" not in capsys.readouterr().err
    written = out.read_text()
    assert "not measured (`--memory-only`" in written
    targets = [line for line in written.splitlines() if line.startswith("- target ")]
    assert targets and not any("step time" in line for line in targets)
    rows = json.loads(out.with_suffix(".json").read_text())
    assert len(rows) == len(bench.METHODS) + len(bench.SMALL_BATCH_METHODS)
    for r in rows:
        assert r["step_ms"] is None and r["time_vs_full"] is None and r["rss_peak_mb"] is None, r["method"]
        assert r["peak_bytes"] >= r["params"] + r["grads"] + r["optimizer_state"] > 0, r["method"]
