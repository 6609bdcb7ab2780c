"""sparsity.threads: the one place that chooses torch's thread count (by model size, LAB_THREADS above it), and
one_thread: one CPU thread inside a block, the caller's setting back after it."""

import pytest
import torch

from sparsity.threads import MANY_THREADS_FROM, THREADS_ENV, choose_threads, one_thread, usable_cpus, use_threads


def test_one_thread_inside_and_the_previous_count_back_even_after_an_error():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="inside"), one_thread():
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2

        @one_thread()
        def threads() -> int:
            return torch.get_num_threads()

        assert threads() == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_labs_models_get_one_thread_and_a_big_model_every_usable_cpu():
    assert choose_threads(environ={}) == 1
    assert choose_threads(0, environ={}) == 1
    assert choose_threads(MANY_THREADS_FROM - 1, environ={}) == 1
    assert choose_threads(MANY_THREADS_FROM, environ={}) == usable_cpus()
    assert usable_cpus() >= 1


def test_lab_threads_in_the_environment_overrides_the_size_rule():
    assert choose_threads(environ={THREADS_ENV: "3"}) == 3
    assert choose_threads(10**9, environ={THREADS_ENV: " 1 "}) == 1
    assert choose_threads(environ={THREADS_ENV: ""}) == 1  # set but empty: not told


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_lab_threads_is_an_error_that_names_it(value):
    with pytest.raises(ValueError, match=f"{THREADS_ENV} must be a positive integer.*{value!r}"):
        choose_threads(environ={THREADS_ENV: value})


@pytest.mark.parametrize("parameters", [-1, 2.5, True, "100"])
def test_a_bad_parameter_count_is_an_error_that_names_it(parameters):
    with pytest.raises(ValueError, match="parameters must be a non-negative int"):
        choose_threads(parameters, environ={})


def test_use_threads_sets_torch_to_the_choice(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(THREADS_ENV, "2")
        assert use_threads() == 2 and torch.get_num_threads() == 2
        monkeypatch.delenv(THREADS_ENV)
        assert use_threads(1000) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("preset", ["micro", "tiny", "small", "mid"])
def test_a_gpt_presets_approximate_size_is_its_blocks_matrices(preset):
    from scaleup import gpt

    with torch.device("meta"):
        model = gpt.GPT(gpt.config(preset, vocab_size=25, block_size=17))
    matrices = sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2)
    assert gpt.approx_parameters(preset) == matrices


def test_the_gpt_presets_up_to_tiny_get_one_thread_and_small_every_cpu():
    from scaleup import gpt

    assert [choose_threads(gpt.approx_parameters(p), environ={}) for p in ("micro", "tiny")] == [1, 1]
    assert choose_threads(gpt.approx_parameters("small"), environ={}) == usable_cpus()


def test_the_threads_benchmark_times_each_preset_on_both_counts(tmp_path, monkeypatch):
    from benchmarks import threads as bench

    monkeypatch.setenv("LAB_FAST", "1")
    out = tmp_path / "threads.md"
    assert bench.main(["--presets", "micro", "--threads", "2", "--reps", "1", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| micro")]
    assert len(rows) == 1
    preset, parameters, one_ms, two_ms, ratio, given = (c.strip() for c in rows[0].strip("|").split("|"))
    assert int(parameters.replace(",", "")) > 0 and float(one_ms) > 0 and float(two_ms) > 0
    # The ratio is printed from the unrounded times: it agrees with the printed ones (0.1 ms steps) to their rounding.
    one, two = float(one_ms), float(two_ms)
    assert float(ratio.rstrip("x")) == pytest.approx(two / one, abs=0.005 + two / one * (0.05 / one + 0.05 / two))
    assert given == "1"
