"""Scale-out of the benchmark (sparsity.executor, scaleup.grid): a process pool and a local Ray instance give
the rows of a serial run on one thread, a killed pooled run resumes, failures name their cell."""

import importlib.util
import sys

import pytest

from scaleup import bench_config as bc
from scaleup import compare as cp
from scaleup import results as res
from scaleup import grid
from scaleup.method_mask import L1Settings
from sparsity.executor import CellFailed, Executor, Worker, check_executor
from sparsity.threads import one_thread

TIMINGS = ("train_s", "select_s", "peak_mb")
METHODS = ["full", "random"]  # phase 1: 2 lrs of full + 1 of random; phase 2: seed 1 of each = 5 runs


def micro_config():
    return bc.BenchConfig(preset="micro", world=bc.MICRO_WORLD, steps=10, warmup=1, seeds=2, pretrain_steps=200,
                          densities=(), lrs_full=(1e-3, 3e-3), lrs_sparse=(3e-2,), lrs_lora=(3e-2,), l1=L1Settings(lam=1e-4),
                          score_batches=2)


def _measured(out):
    """Every stored row by key, without the fields that time the run."""
    return {k: {f: v for f, v in row.items() if f not in TIMINGS} for k, row in res.load_results(out).items()}


@pytest.fixture(scope="module")
def serial(tmp_path_factory, cache):
    """The serial run on one torch thread: what every executor must reproduce."""
    out = tmp_path_factory.mktemp("serial")
    with one_thread():
        assert cp.run(micro_config(), out, METHODS, cache_dir=cache, progress=False) == 5
    return _measured(out)


def test_a_killed_pooled_run_resumes_to_the_serial_rows(serial, tmp_path, cache):
    kw = dict(cache_dir=cache, progress=False, workers=2)
    assert cp.run(micro_config(), tmp_path, METHODS, stop_after=2, **kw) == 2
    assert len(res.load_results(tmp_path)) == 2 and not (tmp_path / "summary.json").exists()
    assert cp.run(micro_config(), tmp_path, METHODS, **kw) == 3
    assert _measured(tmp_path) == serial
    assert (tmp_path / "summary.json").exists()
    assert cp.run(micro_config(), tmp_path, METHODS, **kw) == 0  # nothing left: no pool is started


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='Ray is not installed (pip install -e ".[ray]")')
def test_a_local_ray_instance_gives_the_serial_rows(serial, tmp_path, cache):
    n = cp.run(micro_config(), tmp_path, METHODS, cache_dir=cache, progress=False, workers=2, executor="ray")
    assert n == 5 and _measured(tmp_path) == serial


def _no_state():
    return None


def _fail_on_three(state, cell):
    if cell["x"] == 3:
        raise ValueError("three is not allowed")
    return {"x": cell["x"], "square": cell["x"] ** 2}


def test_a_cell_that_fails_in_a_worker_is_named_in_the_driver():
    worker = Worker(_no_state, (), _fail_on_three)
    with Executor(worker, 2, "process") as pool:
        got = {}
        with pytest.raises(CellFailed, match=r"cell \(x=3\) failed: ValueError: three is not allowed"):
            for cell, row in pool.run({"x": x} for x in range(6)):
                got[cell["x"]] = row["square"]
        assert set(got) <= {0, 1, 2, 4, 5} and all(v == k * k for k, v in got.items())


def test_a_worker_never_pretrains(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no pretrained checkpoint .* share that folder \(\$SUBNET_LAB_CACHE\)"):
        grid.worker_setup(micro_config(), tmp_path, "cpu")


def test_bad_scale_out_settings_fail_before_any_work(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="executor must be one of"):
        check_executor("dask", 2)
    with pytest.raises(ValueError, match="workers must be a positive int, got 0"):
        check_executor("process", 0)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ImportError, match=r'pip install -e "\.\[ray\]"'):
        check_executor("ray", 2)
    for argv, message in ((["--ray-address", "auto"], "argument --ray-address: needs --executor ray"),
                          (["--executor", "ray"], "ray needs --workers 2 or more"),
                          (["--executor", "ray", "--workers", "2"], 'pip install -e ".[ray]"'),
                          (["--workers", "0"], "argument --workers: must be a positive int")):
        with pytest.raises(SystemExit):
            cp.main(["--preset", "micro", "--out", str(tmp_path), *argv])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "config.json").exists()


def test_a_toy_world_scales_out_too(tmp_path, cache):
    """Each world says where its pretrained model is cached: the modular toy's file, none for teacher-student."""
    from scaleup import bench_modular, bench_teacher_student

    modular = bc.BenchConfig(world_kind="modular", world=bench_modular.ModularConfig(n_tasks=2, n_train=512, n_test=256),
                             steps=6, warmup=1, seeds=1, pretrain_steps=50, densities=(), lrs_full=(1e-3, 3e-3),
                             lrs_sparse=(3e-2,), lrs_lora=(3e-2,), score_batches=2)
    with pytest.raises(FileNotFoundError, match="no pretrained checkpoint .*modular-t0"):
        grid.worker_setup(modular, tmp_path, "cpu")
    teacher = bc.BenchConfig(world_kind="teacher_student", world=bench_teacher_student.TeacherStudentConfig(),
                             steps=6, warmup=1, seeds=1)
    assert grid.worker_setup(teacher, tmp_path, "cpu").bench.checkpoint(tmp_path) is None
    with one_thread():
        cp.run(modular, tmp_path / "serial", ["full"], cache_dir=cache, progress=False)
    assert cp.run(modular, tmp_path / "pool", ["full"], cache_dir=cache, progress=False, workers=2) == 2
    assert _measured(tmp_path / "pool") == _measured(tmp_path / "serial")


def test_ray_gets_a_second_start_when_its_raylet_missed_rays_30_s_on_a_busy_machine(monkeypatch):
    """Ray waits a fixed 30 s for its raylet to register; a loaded machine can miss it once."""
    from sparsity import executor

    calls = []

    class FakeRay:
        def is_initialized(self):
            return False

        def init(self, **kwargs):
            calls.append("init")
            if len(calls) == 1:
                raise Exception("The current node timed out during startup. This could happen because ...")

        def shutdown(self):
            calls.append("shutdown")

        def remote(self, **kwargs):
            return lambda cls: type("Actor", (), {"remote": staticmethod(lambda *a: object())})

    monkeypatch.setattr(executor, "_ray", FakeRay)
    with pytest.warns(UserWarning, match="Ray did not start .*timed out during startup.*; trying once more"):
        pool = executor._Ray(Worker(_no_state, (), _fail_on_three), 2, 1, None)
    assert calls == ["init", "shutdown", "init"] and len(pool.idle) == 2
