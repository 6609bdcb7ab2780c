"""Pruning (sparsity.prune) and its classification world (toys.classification).

Unit tests of the keep-mask, the zeroing, recovery with the pattern fixed (exact zeros
under weight decay), IMP's schedule and rewinding; then the science claim at fast size:
fine-tuning with the pattern fixed brings a heavily pruned student back near dense.
"""

import copy
from collections import OrderedDict
from dataclasses import replace

import pytest
import torch
from torch import nn

from sparsity import prune
from sparsity.optim import MaskedAdamW, MaskedSGD
from sparsity.regularize import snapshot
from toys import classification as tc


def mlp(in_dim: int = 8, seed: int = 0) -> nn.Sequential:
    """fc1.weight (8 x in_dim), fc2.weight (4 x 8) and their biases."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(in_dim, 8), act=nn.ReLU(), fc2=nn.Linear(8, 4)))


def n_weights(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))


def sgd_train_fn(steps: int = 20, seed: int = 0):
    """A tiny masked-SGD regression loop: the train_fn(model, keep) callback of the unit tests."""

    def train_fn(model: nn.Module, keep: dict[str, torch.Tensor]) -> None:
        gen = torch.Generator().manual_seed(seed)
        x, y = torch.randn(32, 8, generator=gen), torch.randn(32, 4, generator=gen)
        opt = MaskedSGD(model.named_parameters(), mask=keep, lr=0.05, momentum=0.9, weight_decay=0.01)
        for _ in range(steps):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return train_fn


# ---------------------------------------------------------------- selecting and zeroing


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_global_magnitude_prune_removes_the_smallest_weights(sparsity: float) -> None:
    model = mlp()
    keep = prune.magnitude_prune(model, sparsity)
    weights = torch.cat([model.fc1.weight.flatten(), model.fc2.weight.flatten()]).abs()
    kept = torch.cat([keep["fc1.weight"].flatten(), keep["fc2.weight"].flatten()])
    assert int((~kept).sum()) == round(sparsity * weights.numel())
    if 0 < sparsity:
        assert weights[kept].min() > weights[~kept].max()
    assert keep["fc1.bias"].all() and keep["fc2.bias"].all(), "biases are not in the budget: kept"
    assert prune.pruned_fraction(model, keep) == pytest.approx(sparsity, abs=1 / weights.numel())


def test_per_tensor_scope_prunes_every_tensor_equally() -> None:
    model = mlp()
    with torch.no_grad():
        model.fc2.weight.mul_(100)  # globally, fc1 (64 entries) pays for all 48 removals
    keep = prune.magnitude_prune(model, 0.5, scope="per_tensor")
    assert int(keep["fc1.weight"].sum()) == 32 and int(keep["fc2.weight"].sum()) == 16
    global_keep = prune.magnitude_prune(model, 0.5)
    assert int(global_keep["fc1.weight"].sum()) == 16 and bool(global_keep["fc2.weight"].all())
    with pytest.raises(ValueError, match="would revive weights keep has pruned"):
        prune.magnitude_prune(model, 0.5, scope="per_tensor", keep=global_keep)  # fc1 has 16 left, not 32


def test_include_all_prunes_biases_too() -> None:
    model = mlp()
    keep = prune.magnitude_prune(model, 0.5, include="all")
    assert prune.pruned_fraction(model, keep, include="all") == pytest.approx(0.5, abs=0.01)
    assert not keep["fc1.bias"].all() or not keep["fc2.bias"].all()


def test_two_four_keeps_the_two_largest_of_every_four_inputs() -> None:
    model = mlp()
    keep = prune.magnitude_prune(model, structure=(2, 4))
    same = prune.magnitude_prune(model, 0.5, structure=(2, 4))
    assert all(torch.equal(keep[n], same[n]) for n in keep)
    for name in ("fc1.weight", "fc2.weight"):
        w, k = model.get_parameter(name).detach().abs().reshape(-1, 4), keep[name].reshape(-1, 4)
        assert (k.sum(1) == 2).all()
        assert (w.where(k, -1.0).topk(2, dim=1).values.min(1).values >= w.where(~k, -1.0).max(1).values).all()
    assert prune.pruned_fraction(model, keep) == 0.5


def test_two_four_on_an_indivisible_input_dimension_fails_clearly() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        prune.magnitude_prune(mlp(in_dim=6), structure=(2, 4))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_zero_one_is_a_value_error(bad: float) -> None:
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        prune.magnitude_prune(mlp(), bad)


def test_bad_arguments_fail_clearly() -> None:
    model = mlp()
    with pytest.raises(TypeError, match="sparsity must be a number"):
        prune.magnitude_prune(model, "0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sparsity is required"):
        prune.magnitude_prune(model)
    with pytest.raises(ValueError, match="fixes the sparsity"):
        prune.magnitude_prune(model, 0.8, structure=(2, 4))
    with pytest.raises(TypeError, match="structure must be None or a tuple"):
        prune.magnitude_prune(model, structure=[2, 4])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be <= m"):
        prune.magnitude_prune(model, structure=(4, 2))
    with pytest.raises(ValueError, match="scope must be one of"):
        prune.magnitude_prune(model, 0.5, scope="layer")
    with pytest.raises(ValueError, match="include must name kinds"):
        prune.magnitude_prune(model, 0.5, include="conv")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        prune.magnitude_prune({"w": torch.zeros(2)}, 0.5)  # type: ignore[arg-type]


def test_pruning_further_keeps_pruned_weights_pruned_and_never_revives() -> None:
    model = mlp()
    first = prune.prune_(model, 0.5)
    with torch.no_grad():
        model.fc1.weight.add_(torch.randn_like(model.fc1.weight))  # training moved the survivors, and the zeros
    second = prune.magnitude_prune(model, 0.75, keep=first)
    for name in first:
        assert not (second[name] & ~first[name]).any(), "a pruned weight came back"
    assert prune.pruned_fraction(model, second) == pytest.approx(0.75, abs=0.01)
    with pytest.raises(ValueError, match="never revives"):
        prune.magnitude_prune(model, 0.25, keep=first)
    with pytest.raises(ValueError, match="cannot be combined"):
        prune.magnitude_prune(model, structure=(2, 4), keep=first)


def test_apply_mask_writes_positive_zeros_and_leaves_the_rest_bit_identical() -> None:
    model = mlp()
    before = snapshot(model)
    keep = prune.prune_(model, 0.6)
    for name, p in model.named_parameters():
        k = keep[name]
        assert torch.equal(p[k], before[name][k])
        assert (p[~k].view(torch.int32) == 0).all(), "pruned entries must be +0.0 exactly (no -0.0)"
    assert prune.apply_mask_(model, keep) is model


def test_apply_mask_rejects_bad_masks() -> None:
    model = mlp()
    with pytest.raises(ValueError, match=r"keep\['fc1.weight'\] has shape"):
        prune.apply_mask_(model, {"fc1.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(TypeError, match="must have dtype torch.bool"):
        prune.apply_mask_(model, {"fc1.weight": torch.ones(8, 8)})
    with pytest.raises(ValueError, match="not a parameter"):
        prune.apply_mask_(model, {"fc9.weight": torch.ones(8, 8, dtype=torch.bool)})


# ---------------------------------------------------------------- recovery with the pattern fixed


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_pruned_entries_stay_exactly_zero_for_1000_steps_of_weight_decay(optimizer: str) -> None:
    model = mlp()
    keep = prune.prune_(model, 0.8)
    kept_before = snapshot(model)
    x, y = torch.randn(64, 8), torch.randn(64, 4)
    if optimizer == "adamw":
        opt = MaskedAdamW(model.named_parameters(), mask=keep, lr=1e-2, weight_decay=0.1)
    else:
        opt = MaskedSGD(model.named_parameters(), mask=keep, lr=1e-2, momentum=0.9, weight_decay=0.1)
    for _ in range(1000):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in model.named_parameters():
        pruned = p.detach()[~keep[name]]
        assert (pruned.view(torch.int32) == 0).all(), f"{name}: a pruned entry is no longer exactly +0.0"
    assert not torch.equal(model.fc1.weight[keep["fc1.weight"]], kept_before["fc1.weight"][keep["fc1.weight"]])


def test_recover_zeros_trains_and_catches_an_optimizer_that_ignores_the_mask() -> None:
    model = mlp()
    keep = prune.magnitude_prune(model, 0.5)  # selected, not yet zeroed: recover zeros first
    prune.recover(model, keep, sgd_train_fn())
    assert all((p.detach()[~keep[n]] == 0).all() for n, p in model.named_parameters())

    def plain_adamw(m: nn.Module, _keep: dict[str, torch.Tensor]) -> None:
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        nn.functional.mse_loss(m(torch.randn(4, 8)), torch.randn(4, 4)).backward()
        opt.step()

    with pytest.raises(RuntimeError, match="moved pruned entries"):
        prune.recover(model, keep, plain_adamw)
    with pytest.raises(TypeError, match="train_fn must be callable"):
        prune.recover(model, keep, None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- iterative magnitude pruning


def recording_train_fn(starts: list[dict[str, torch.Tensor]]):
    """Train like sgd_train_fn, but first record the weights each round starts from."""
    inner = sgd_train_fn()

    def train_fn(model: nn.Module, keep: dict[str, torch.Tensor]) -> None:
        starts.append(snapshot(model))
        inner(model, keep)

    return train_fn


def test_imp_sparsity_follows_the_schedule_and_masks_are_nested() -> None:
    model = mlp()
    rate, rounds = 0.3, 5
    result = prune.iterative_magnitude_pruning(
        model, sgd_train_fn(), rounds=rounds, rate=rate, evaluate=lambda m: 0.5, progress=False
    )
    assert [r.round for r in result.rounds] == list(range(rounds + 1))
    total = n_weights(model)
    for record in result.rounds:
        assert record.sparsity == pytest.approx(1 - (1 - rate) ** record.round, abs=1 / total)
        assert record.kept == round((1 - record.sparsity) * total)
        assert record.score == 0.5
    assert [r.kept for r in result.rounds] == sorted((r.kept for r in result.rounds), reverse=True)
    assert prune.pruned_fraction(model, result.keep) == result.rounds[-1].sparsity
    assert all((p.detach()[~result.keep[n]] == 0).all() for n, p in model.named_parameters())


def test_imp_rewinding_restores_the_surviving_weights_exactly() -> None:
    model = mlp()
    rewind_point = snapshot(model)  # the lottery-ticket recipe: rewind to init
    starts: list[dict[str, torch.Tensor]] = []
    result = prune.iterative_magnitude_pruning(
        model, recording_train_fn(starts), rounds=3, rate=0.5, rewind_to=rewind_point, progress=False
    )
    assert len(starts) == 4  # round 0 (dense) and three pruned rounds
    assert all(torch.equal(starts[0][n], rewind_point[n]) for n in rewind_point), "round 0 trains from the start"
    total = n_weights(model)
    for r, start in enumerate(starts[1:], start=1):
        zeros = sum(int((start[n] == 0).sum()) for n in ("fc1.weight", "fc2.weight"))
        assert zeros == round((1 - 0.5**r) * total), f"round {r} starts pruned to its sparsity"
        for name, value in start.items():
            survived = value != 0
            assert torch.equal(value[survived], rewind_point[name][survived]), f"round {r}, {name}"
    for name, k in result.keep.items():
        assert torch.equal(starts[-1][name][k], rewind_point[name][k]), "survivors start at the rewind point"
        assert (starts[-1][name][~k] == 0).all(), "pruned entries start at zero"


def test_imp_without_rewinding_continues_from_the_trained_weights() -> None:
    model = mlp()
    starts: list[dict[str, torch.Tensor]] = []
    ends: list[dict[str, torch.Tensor]] = []

    def evaluate(m: nn.Module) -> float:
        ends.append(snapshot(m))
        return 0.0

    result = prune.iterative_magnitude_pruning(
        model, recording_train_fn(starts), rounds=2, rate=0.5, evaluate=evaluate, progress=False
    )
    for r in (1, 2):
        # round r starts where round r-1 ended, with the newly pruned entries zeroed
        for name, value in starts[r].items():
            survived = value != 0
            assert torch.equal(value[survived], ends[r - 1][name][survived])
    assert len(result.rounds) == 3


def test_imp_can_start_from_a_trained_model() -> None:
    model = mlp()
    starts: list[dict[str, torch.Tensor]] = []
    result = prune.iterative_magnitude_pruning(
        model, recording_train_fn(starts), rounds=2, rate=0.5, train_first=False, progress=False
    )
    assert [r.round for r in result.rounds] == [1, 2] and len(starts) == 2
    assert result.rounds[0].score is None


def test_imp_bad_arguments_fail_before_training() -> None:
    model = mlp()
    ok = sgd_train_fn()
    with pytest.raises(ValueError, match="rounds must be a positive int"):
        prune.iterative_magnitude_pruning(model, ok, rounds=0)
    for rate in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match=r"rate must be in \(0, 1\)"):
            prune.iterative_magnitude_pruning(model, ok, rounds=2, rate=rate)
    with pytest.raises(TypeError, match="train_fn must be callable"):
        prune.iterative_magnitude_pruning(model, "train", rounds=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="evaluate must be None or callable"):
        prune.iterative_magnitude_pruning(model, ok, rounds=2, evaluate=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"rewind_to\['fc1.weight'\] has shape"):
        prune.iterative_magnitude_pruning(model, ok, rounds=2, rewind_to={"fc1.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="include must name kinds"):
        prune.iterative_magnitude_pruning(model, ok, rounds=2, include="conv")


# ---------------------------------------------------------------- the classification world


def test_world_is_deterministic_balanced_and_respects_the_margin() -> None:
    cfg = tc.Config(n_train=512, n_test=256)
    a, b = tc.make_world(cfg), tc.make_world(cfg)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.chance < 1.6 / cfg.n_classes, "classes should be about equally frequent"
    with torch.no_grad():
        top2 = a.teacher(a.x_test).topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1] >= cfg.margin).all()
    assert torch.equal(a.teacher(a.x_train).argmax(1), a.y_train)
    assert not torch.equal(a.x_train, tc.make_world(replace(cfg, world_seed=1)).x_train)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("hidden", (), "hidden must be"), ("n_classes", 1, "n_classes must be"), ("margin", -1.0, "margin must be"),
     ("steps", 0, "steps must be"), ("lr", float("nan"), "lr must be")],
)
def test_config_rejects_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tc.Config(**{field: value})


def test_training_is_reproducible_and_snapshots_the_early_checkpoint() -> None:
    cfg = tc.Config(hidden=(16,), n_train=256, n_test=64, steps=6, batch=32)
    world = tc.make_world(cfg)
    runs = []
    for _ in range(2):
        model = tc.make_student(cfg)
        init = snapshot(model)
        early = tc.train(model, world, snapshot_at=2, progress=False)
        runs.append((init, early, snapshot(model)))
    assert all(torch.equal(runs[0][2][n], runs[1][2][n]) for n in runs[0][2]), "bit-for-bit reproducible"
    assert early is not None and not torch.equal(early["fc1.weight"], init["fc1.weight"])
    assert not torch.equal(early["fc1.weight"], runs[1][2]["fc1.weight"])
    model = tc.make_student(cfg)
    assert torch.equal(tc.train(model, world, steps=3, snapshot_at=0, progress=False)["fc1.weight"], init["fc1.weight"])
    with pytest.raises(ValueError, match="snapshot_at must be"):
        tc.train(model, world, snapshot_at=10, progress=False)
    with pytest.raises(ValueError, match="split must be"):
        tc.accuracy(model, world, "val")


# ---------------------------------------------------------------- the science claim, at fast size


@pytest.fixture(scope="module")
def trained() -> tuple[tc.World, nn.Module, float]:
    cfg = tc.default_config(fast=True)
    world = tc.make_world(cfg)
    model = tc.make_student(cfg)
    tc.train(model, world, progress=False)
    return world, model, tc.accuracy(model, world)


def test_recovery_brings_a_heavily_pruned_student_back_near_dense(trained) -> None:
    """Seed 001's "95-100% of dense" after fixed-pattern fine-tuning, checked where it holds.

    Measured at this fast size (student 16-128-128-8, 500 steps): dense 0.926; at 80% sparsity
    one-shot 0.750 -> recovered 0.914 (99% of dense); at 90% 0.539 -> 0.862 (93%). So the claim
    holds at 80% and falls just short at 90% (asserted: >= 90%). At full size the knee is
    further out (98% of dense at 87.5%, 94% at 93.8%; lesson 4).
    """
    world, dense_model, dense = trained
    assert dense > 0.85 > 3 * world.chance, f"the dense student should learn the task, got {dense:.3f}"
    one_shot, recovered = {}, {}
    for sparsity in (0.8, 0.9):
        model = copy.deepcopy(dense_model)
        keep = prune.prune_(model, sparsity)
        one_shot[sparsity] = tc.accuracy(model, world)
        prune.recover(model, keep, tc.trainer(world))
        recovered[sparsity] = tc.accuracy(model, world)
        assert prune.pruned_fraction(model, keep) == pytest.approx(sparsity, abs=1e-4)
    assert one_shot[0.9] < one_shot[0.8] < dense - 0.05, "one-shot pruning alone costs accuracy"
    assert recovered[0.8] >= 0.95 * dense, f"80%: {recovered[0.8]:.3f} vs dense {dense:.3f}"
    assert recovered[0.9] >= 0.9 * dense, f"90%: {recovered[0.9]:.3f} vs dense {dense:.3f}"
    assert all(recovered[s] > one_shot[s] + 0.1 for s in one_shot), "recovery must win back a lot"


def test_trainer_shows_a_progress_bar_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    """Lesson 4's minute-long recoveries show a bar; the studies' many short ones stay quiet."""
    cfg = tc.Config(hidden=(8,), n_train=64, n_test=32, steps=3, batch=16)
    world = tc.make_world(cfg)
    keep = {n: torch.ones_like(p, dtype=torch.bool) for n, p in tc.make_mlp((cfg.in_dim, 8, cfg.n_classes), 0).named_parameters()}
    tc.trainer(world)(tc.make_mlp((cfg.in_dim, 8, cfg.n_classes), 0), keep)
    assert "recovery" not in capsys.readouterr().err
    tc.trainer(world, progress=True, desc="recovery")(tc.make_mlp((cfg.in_dim, 8, cfg.n_classes), 0), keep)
    assert "recovery" in capsys.readouterr().err
