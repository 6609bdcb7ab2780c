"""CompactAdamW(fused=True), the fast path: our CPU kernel and torch's fused AdamW on gathered arrays,
tested against the single-tensor reference to the rounding torch's own fused AdamW shows."""

import copy

import pytest
import torch
from optim_cases import batch, mlp, params, train_step

from sparsity import masks
from sparsity.compact import CompactAdamW

SIZES = (13, 37, 11)  # odd sizes: every kernel's vector body and scalar tail are exercised
HP = dict(lr=1e-2, weight_decay=0.1)


def _trajectory(opt_of, steps: int = 100, mask=None):
    model = mlp(sizes=SIZES)
    opt = opt_of(model, mask)
    start = params(model)
    for step in range(steps):
        train_step(model, opt, step, SIZES)
    return model, opt, start


def _max_abs_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def _torch_fused_rounding(steps: int = 100) -> float:
    """How far torch's own fused AdamW drifts from its single-tensor form on this problem."""
    fused, _, _ = _trajectory(lambda m, _: torch.optim.AdamW(m.parameters(), fused=True, **HP), steps)
    single, _, _ = _trajectory(lambda m, _: torch.optim.AdamW(m.parameters(), foreach=False, **HP), steps)
    return _max_abs_diff(fused, single)


def _mask() -> dict[str, torch.Tensor]:
    mask = masks.random(mlp(sizes=SIZES), 0.3, seed=1, scope="per_tensor", include="all")
    mask["fc2.weight"] = torch.zeros_like(mask["fc2.weight"])  # a frozen tensor
    del mask["fc2.bias"]  # a dense one
    return mask


def test_the_fast_path_follows_the_reference_to_torchs_own_fused_rounding(sparse_cpu_route) -> None:
    mask = _mask()
    fast, fast_opt, start = _trajectory(lambda m, k: CompactAdamW(m.named_parameters(), k, fused=True, **HP), mask=mask)
    ref, _, _ = _trajectory(lambda m, k: CompactAdamW(m.named_parameters(), k, **HP), mask=mask)
    bound = _torch_fused_rounding()
    assert bound > 0  # torch's fused kernel rounds differently too: the bound is not vacuous
    assert _max_abs_diff(fast, ref) <= 2 * bound
    moved = fast.fc1.weight[mask["fc1.weight"]] != start["fc1.weight"][mask["fc1.weight"]]
    assert moved.all()  # every selected entry moved
    for name, p in fast.named_parameters():  # and nothing else, bit for bit
        if name in mask:
            assert torch.equal(p[~mask[name]].view(torch.int32), start[name][~mask[name]].view(torch.int32)), name
    k = int(mask["fc1.weight"].sum())
    assert fast_opt.state[fast.fc1.weight]["exp_avg"].shape == (k,)


def test_with_no_selection_the_fast_path_is_torchs_fused_adamw() -> None:
    ours, _, _ = _trajectory(lambda m, _: CompactAdamW(m.named_parameters(), fused=True, **HP), 30)
    theirs, _, _ = _trajectory(lambda m, _: torch.optim.AdamW(m.parameters(), fused=True, **HP), 30)
    assert _max_abs_diff(ours, theirs) == 0.0


def test_a_state_dict_moves_between_the_two_paths(sparse_cpu_route) -> None:
    mask = _mask()
    model = mlp(sizes=SIZES)
    fast = CompactAdamW(model.named_parameters(), mask, fused=True, **HP)
    for step in range(5):
        train_step(model, fast, step, SIZES)
    saved, weights = copy.deepcopy(fast.state_dict()), params(model)
    for fused_after in (False, True):
        again = mlp(sizes=SIZES)
        with torch.no_grad():
            for n, p in again.named_parameters():
                p.copy_(weights[n])
        opt = CompactAdamW(again.named_parameters(), None, fused=fused_after, **HP)
        opt.load_state_dict(saved)
        for step in range(5, 10):
            train_step(again, opt, step, SIZES)
        assert torch.equal(again.fc2.weight, weights["fc2.weight"])  # the frozen tensor stayed frozen
        assert not torch.equal(again.fc1.weight, weights["fc1.weight"])


def test_reselection_works_on_the_fast_path(sparse_cpu_route) -> None:
    model = mlp(sizes=SIZES)
    mask = masks.random(model, 0.3, seed=1, scope="per_tensor")
    opt = CompactAdamW(model.named_parameters(), mask, fused=True, **HP)
    train_step(model, opt, 0, SIZES)
    new = masks.random(model, 0.3, seed=2, scope="per_tensor")
    opt.reselect(new)
    before = params(model)
    train_step(model, opt, 1, SIZES)
    for name, m in new.items():
        p = model.get_parameter(name)
        assert torch.equal(p[~m], before[name][~m]), name


def test_fused_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="fused must be True or False"):
        CompactAdamW(mlp().named_parameters(), fused="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_fast_path_on_cuda_follows_the_reference() -> None:
    mask = {n: m.cuda() for n, m in _mask().items()}

    def run(fused: bool) -> torch.nn.Module:
        model = mlp(sizes=SIZES).cuda()
        opt = CompactAdamW(model.named_parameters(), mask, fused=fused, **HP)
        for step in range(50):
            x, y = (t.cuda() for t in batch(step, SIZES))
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
        return model

    assert _max_abs_diff(run(True), run(False)) <= 2 * _torch_fused_rounding(50) + 1e-6


def test_the_default_step_is_the_fast_path(monkeypatch) -> None:
    from sparsity.kernels import sparse_cpu

    calls = []

    class Kernel:  # records the one-pass kernel's calls
        def sparse_adamw_(self, p, *args):
            calls.append(p.shape)

    monkeypatch.setattr(sparse_cpu, "load", lambda: Kernel())
    model = mlp(sizes=SIZES)
    opt = CompactAdamW(model.named_parameters(), _mask(), **HP)
    train_step(model, opt, 0, SIZES)
    assert opt.fused and model.fc1.weight.shape in calls
    calls.clear()
    reference = CompactAdamW(model.named_parameters(), _mask(), fused=False, **HP)
    train_step(model, reference, 1, SIZES)
    assert not calls  # fused=False: the bit-exact reference step, no kernel


def test_sparsify_takes_the_fast_step_unless_told_otherwise() -> None:
    from sparsity import SparseConfig, sparsify

    assert sparsify(mlp(sizes=SIZES), SparseConfig("random")).optimizer.fused
    assert sparsify(mlp(sizes=SIZES), SparseConfig("random", fused=True)).optimizer.fused
    assert not sparsify(mlp(sizes=SIZES), SparseConfig("random", fused=False)).optimizer.fused


def test_a_build_lock_left_by_a_killed_build_is_cleared_and_a_fresh_or_finished_one_is_kept(tmp_path):
    """torch's build lock names no process: an old one beside no library would make every load wait forever."""
    import os
    import time

    from sparsity.kernels.sparse_cpu import STALE_LOCK_S, clear_stale_lock

    lock = tmp_path / "lock"
    assert not clear_stale_lock(tmp_path)  # no lock at all
    lock.touch()
    assert not clear_stale_lock(tmp_path) and lock.exists()  # a build running now
    old = time.time() - STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    (tmp_path / "kernel.so").touch()
    assert not clear_stale_lock(tmp_path) and lock.exists()  # built: the lock is not ours to judge
    (tmp_path / "kernel.so").unlink()
    with pytest.warns(UserWarning, match="a build lock .* s old with no built library"):
        assert clear_stale_lock(tmp_path)
    assert not lock.exists()


def test_the_build_command_says_where_the_kernels_are_and_exits_0_without_a_compiler(monkeypatch, capsys):
    """`python -m sparsity.kernels` (make's set-up step) must not fail an install on a machine without a compiler."""
    from sparsity.kernels import __main__ as build
    from sparsity.kernels import sparse_cpu

    monkeypatch.setattr(sparse_cpu, "load", lambda: object())
    assert build.main() == 0 and "the CPU kernels are ready in" in capsys.readouterr().out
    monkeypatch.setattr(sparse_cpu, "load", lambda: None)
    assert build.main() == 0 and "could not be built" in capsys.readouterr().out
    assert sparse_cpu.extension_name().startswith("subnet_lab_sparse_cpu_")
    assert str(sparse_cpu.build_directory()).endswith(sparse_cpu.extension_name())


def test_kernels_built_on_one_kind_of_cpu_are_not_loaded_on_another(monkeypatch):
    """The build is ``-march=native``: a home folder shared by two kinds of CPU must hold one build per kind."""
    from sparsity import sweep
    from sparsity.kernels import sparse_cpu

    here = sparse_cpu.extension_name()
    monkeypatch.setattr(sweep, "cpu_name", lambda: "Intel Xeon; GenuineIntel family 6 model 85; AVX2")
    assert sparse_cpu.extension_name() != here
