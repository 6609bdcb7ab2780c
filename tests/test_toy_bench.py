"""The controlled benchmark in the toy worlds (scaleup.bench_world): every method runs end to end on the
modular MLP and the teacher-student MLP, with traces, rows shaped like the GPT world's, and frontiers."""

import json
from dataclasses import replace

import pytest
import torch

from scaleup import bench_world as bw
from scaleup import bench_config as bc
from scaleup import compare as cp
from scaleup import finetune as ft
from scaleup.method_dynamic import LiftSettings
from scaleup import methods as meth
from scaleup import results as res
from scaleup import frontier
from scaleup.bench_modular import ModularConfig
from scaleup.bench_teacher_student import TeacherStudentConfig, teachers
from scaleup.results import load_config, load_results

SMALL_MODULAR = ModularConfig(n_tasks=3, hidden=(32, 32), n_train=1024, n_test=512, probe_steps=50)
STEPS, EVERY = 20, 10


def toy_config(world_kind, world, **kw):
    base = dict(world_kind=world_kind, world=world, steps=STEPS, warmup=2, seeds=1, pretrain_steps=100,
                densities=(0.05,), lrs_full=(3e-3,), lrs_sparse=(3e-2,), lrs_lora=(3e-2,), score_batches=2,
                eval_every=EVERY, lift=LiftSettings(reselect_every=5))
    base.update(kw)
    return bc.BenchConfig(**base)


@pytest.fixture(scope="module")
def gpt_row_keys(cache):
    """The keys of a GPT world's row (micro preset, traced), the shape every world's rows must have."""
    cfg = bc.BenchConfig(preset="micro", world=bc.MICRO_WORLD, steps=STEPS, warmup=2, seeds=1, pretrain_steps=100,
                         densities=(0.05,), eval_every=EVERY)
    row = ft.run_cell(bc.prepare(cfg, cache_dir=cache, progress=False), "random", "d0.05", 3e-2, 0)
    return set(row), set(row["trace"][0])


def check_benchmark(out, gpt_row_keys):
    cfg = load_config(out)
    rows = load_results(out)
    pairs = {(m, b) for m in meth.METHODS for b in cfg.budgets(m)}
    assert {(r["method"], r["budget"]) for r in rows.values()} == pairs
    keys, point_keys = gpt_row_keys
    for r in rows.values():
        assert set(r) - {"diverged_reason"} == keys - {"diverged_reason"}, r["method"]
        assert [p["step"] for p in r["trace"]] == [EVERY, 2 * EVERY]
        assert set(r["trace"][0]) == point_keys
        for k in ("target_test", "target_test_token", "retention", "retention_token"):
            assert 0.0 <= r[k] <= 1.0
    summary = frontier.summary(rows)
    assert {(e["method"], e["budget"]) for e in summary} == pairs
    assert all(0.0 <= e["area"]["mean"] <= 1.0 for e in summary)
    report = (out / "report.md").read_text()
    assert bw.describe(cfg) in report
    return rows


def test_modular_world_runs_every_method(tmp_path, cache, gpt_row_keys):
    cfg = toy_config("modular", SMALL_MODULAR, pretrain_steps=400)
    assert cp.run(cfg, tmp_path, cache_dir=cache, progress=False) == len(check_benchmark(tmp_path, gpt_row_keys))
    rows = load_results(tmp_path)
    before = json.loads((tmp_path / "before.json").read_text())
    assert before["retention"] > 0.45  # pretrained on every task but the target (chance: 0.25)
    full = rows[res.cell_key("full", "all", 3e-3, 0)]
    assert set(full["source"]) == {"t1", "t2", "r0", "r1", "r2"}
    assert full["update_sparsity"]["head.source"] == 1.0  # no gradient reaches the sources' heads
    assert full["update_sparsity"]["trunk.fc1"] < 0.5
    middle = rows[res.cell_key("middle_blocks", "d0.05", 3e-2, 0)]
    assert middle["update_sparsity"]["trunk.fc1"] == 1.0 and middle["update_sparsity"]["trunk.fc2"] < 1.0


def test_modular_pretraining_is_cached(tmp_path):
    cache = tmp_path  # a private cache: this test damages a cached file, which the run's shared cache must not see
    cfg = toy_config("modular", SMALL_MODULAR, pretrain_steps=400)
    world = bw.make_world(cfg, "cpu")
    first = world.pretrained(cache, progress=False)
    assert world.cache_path(cache).exists()
    again = bw.make_world(cfg, "cpu").pretrained(cache, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    other = bw.make_world(replace(cfg, target="t1"), "cpu").cache_path(cache)
    assert other != world.cache_path(cache)
    world.cache_path(cache).write_bytes(b"not a safetensors file")  # a broken cache is named, removed and rebuilt
    with pytest.warns(UserWarning, match="discarding the cached modular model .*modular-t0"):
        rebuilt = bw.make_world(cfg, "cpu").pretrained(cache, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), rebuilt.state_dict().values()))


def test_teacher_student_world_runs_every_method_from_the_command_line(tmp_path, gpt_row_keys):
    argv = ["--world", "teacher_student", "--steps", str(STEPS), "--seeds", "1", "--density", "0.05",
            "--eval-every", str(EVERY), "--lrs-full", "3e-3", "--lrs-sparse", "3e-2", "--lrs-lora", "3e-2",
            "--threads", "1", "--no-progress", "--out", str(tmp_path)]
    assert cp.main(argv) == 0
    rows = check_benchmark(tmp_path, gpt_row_keys)
    assert json.loads((tmp_path / "before.json").read_text())["retention"] == 1.0  # a copy of teacher A
    assert all(set(r["update_sparsity"]) == {"fc1", "fc2", "fc3"} for r in rows.values())
    assert "--world teacher_student" in (tmp_path / "command.txt").read_text()


def test_teacher_b_differs_from_a_only_where_the_source_never_looks():
    cfg = TeacherStudentConfig()
    a, b = teachers(cfg)
    diff = {n: ~torch.isclose(p, q) for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters())}
    assert diff["fc1.weight"][:, -cfg.new_inputs:].all() and not diff["fc1.weight"][:, :-cfg.new_inputs].any()
    assert not any(d.any() for n, d in diff.items() if n != "fc1.weight")
    world = bw.make_world(bc.BenchConfig(world_kind="teacher_student"), "cpu")
    val, test, source = world.evaluate(b)  # teacher B is perfect on the target and keeps the source
    assert val.token == test.token == source["teacher_a"].token == 1.0 and test.exact == 1.0
    _, start, _ = world.evaluate(world.pretrained(None, progress=False))
    assert 0.0 < start.token < 0.9  # the target is there to learn


def test_configs_round_trip_and_bad_ones_are_refused():
    for cfg in (toy_config("modular", SMALL_MODULAR), toy_config("teacher_student", TeacherStudentConfig())):
        assert bc.BenchConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    assert bc.BenchConfig().world_kind == "gpt" and bc.BenchConfig().preset == "tiny"
    assert bc.BenchConfig(world_kind="modular").target == "t0"
    with pytest.raises(ValueError, match="world_kind must be one of"):
        bc.BenchConfig(world_kind="cnn")
    with pytest.raises(TypeError, match="ModularConfig for world_kind 'modular'"):
        bc.BenchConfig(world_kind="modular", world=TeacherStudentConfig())
    with pytest.raises(ValueError, match="target must be one of"):
        bc.BenchConfig(world_kind="modular", target="add2")
    with pytest.raises(ValueError, match="preset must be one of"):
        bc.BenchConfig(world_kind="teacher_student", preset="tiny")
    with pytest.raises(ValueError, match="pretrain is the GPT world's"):
        bc.BenchConfig(world_kind="modular").pretrain
    with pytest.raises(ValueError, match="new_inputs"):
        TeacherStudentConfig(new_inputs=100)
    with pytest.raises(ValueError, match="is not a parameter name"):
        bw.make_world(bc.BenchConfig(world_kind="teacher_student"), "cpu").layer_type("blocks.0.mlp.fc.weight")
