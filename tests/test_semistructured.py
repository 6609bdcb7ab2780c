"""2:4 structured sparsity: the pattern, the compressed format, the layer, whole models, fine-tuning,
bad input; the Triton kernels against the reference (in Triton's CPU interpreter without a GPU);
the fast GPU paths (marked gpu, skipped without CUDA)."""

from __future__ import annotations

import copy
import importlib.util
import os
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

if not torch.cuda.is_available():
    # Must be set before triton compiles the kernels: then they run on CPU tensors.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from sparsity import criteria, prune, registry, two_four, two_four_convert, two_four_linear
from sparsity.compact import CompactAdamW
from sparsity.optim import MaskedAdamW

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install triton)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 6))


def _groups(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1, 4)


# --- the pattern -----------------------------------------------------------------------


def test_mask_keeps_the_two_largest_of_every_four_inputs() -> None:
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 4.0, 0.0, -0.2, 1.0]])
    keep = two_four.mask_24(w)
    assert keep.tolist() == [[False, True, True, False, True, False, False, True]]


def test_mask_from_any_score_and_ties_go_to_the_earlier_input() -> None:
    w = torch.randn(8, 12, generator=torch.Generator().manual_seed(1))
    score = torch.arange(w.numel(), dtype=torch.float32).reshape(w.shape)  # the last two of each group win
    assert torch.equal(_groups(two_four.mask_24(w, score)), torch.tensor([False, False, True, True]).expand(8, 3, 4))
    assert torch.equal(_groups(two_four.mask_24(w, torch.zeros_like(w))), torch.tensor([True, True, False, False]).expand(8, 3, 4))


def test_mask_is_two_of_four_everywhere_and_the_masked_weight_passes_the_check() -> None:
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(2))
    keep = two_four.mask_24(w)
    assert (_groups(keep).sum(-1) == 2).all()
    assert two_four.is_two_four(w * keep) and not two_four.is_two_four(w)
    assert torch.equal(two_four.check_two_four(w * keep), w * keep)  # returns the weight it checked
    # Kept entries are the largest: every kept |w| >= every pruned |w| within its group.
    g, k = _groups(w.abs()), _groups(keep)
    assert (g.masked_fill(~k, float("inf")).min(-1).values >= g.masked_fill(k, -1.0).max(-1).values).all()


def test_check_names_the_offending_group() -> None:
    w = torch.zeros(3, 8)
    w[2, 4:7] = 1.0
    with pytest.raises(ValueError, match=r"row 2, inputs 4\.\.7 hold 3 nonzeros"):
        two_four.check_two_four(w)


# --- the compressed format -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_compress_round_trip_is_exact(dtype: torch.dtype) -> None:
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(3)).to(dtype)
    w = w * two_four.mask_24(w)
    values, meta = two_four.compress(w)
    assert values.shape == (16, 16) and values.dtype == dtype
    assert meta.shape == (16, 8) and meta.dtype == torch.uint8
    assert torch.equal(two_four.decompress(values, meta), w)
    assert torch.equal(two_four.meta_to_mask(meta), w != 0)


def test_compress_documented_layout() -> None:
    w = torch.tensor([[0.0, 5.0, 0.0, 7.0, 1.0, 2.0, 0.0, 0.0]])
    values, meta = two_four.compress(w)
    assert values.tolist() == [[5.0, 7.0, 1.0, 2.0]]
    assert meta.tolist() == [[1 | 3 << 2, 0 | 1 << 2]]


def test_compress_with_a_mask_keeps_zero_valued_kept_entries_in_place() -> None:
    w = torch.tensor([[0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    keep = torch.tensor([[True, False, True, False], [False, False, True, True]])
    values, meta = two_four.compress(w, keep)
    assert torch.equal(two_four.meta_to_mask(meta), keep)
    assert torch.equal(two_four.decompress(values, meta), w)
    # Without a mask, sparse groups are padded with the lowest free positions.
    assert two_four.meta_to_mask(two_four.compress(w)[1]).tolist() == [[True, False, True, False], [True, True, False, False]]


def test_compressor_refuses_bad_weights() -> None:
    with pytest.raises(ValueError, match="violates 2:4"):
        two_four.compress(torch.ones(4, 8))
    with pytest.raises(ValueError, match="divisible by 4"):
        two_four.compress(torch.zeros(4, 6))
    with pytest.raises(ValueError, match="2-D"):
        two_four.compress(torch.zeros(8))
    w = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="nonzero entries where the mask prunes"):
        two_four.compress(w, torch.tensor([[True, True, False, False]]))
    with pytest.raises(ValueError, match="exactly 2 required"):
        two_four.compress(w, torch.tensor([[True, True, True, True]]))
    with pytest.raises(TypeError, match="bool"):
        two_four.compress(w, torch.ones(1, 4))


def test_decompress_refuses_corrupt_metadata() -> None:
    values, meta = two_four.compress(torch.tensor([[1.0, 0.0, 2.0, 0.0]]))
    with pytest.raises(ValueError, match="invalid groups"):
        two_four.decompress(values, torch.tensor([[1 | 1 << 2]], dtype=torch.uint8))  # i0 == i1
    with pytest.raises(TypeError, match="uint8"):
        two_four.decompress(values, meta.to(torch.int32))
    with pytest.raises(ValueError, match="do not match"):
        two_four.decompress(values[:, :1], meta)


# --- the layer -------------------------------------------------------------------------


def test_layer_equals_the_dense_masked_reference_and_says_once_why_it_is_slow() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(32, 12)
    reference = copy.deepcopy(linear)
    keep = two_four.mask_24(linear.weight)
    layer = two_four_linear.SemiStructuredLinear.from_linear(linear, keep)
    assert layer.weight is linear.weight  # parameters are shared
    x = torch.randn(3, 5, 32)
    two_four_linear._NOTICED.clear()
    with pytest.warns(two_four_linear.FastPathNotice, match="CUDA is not available"):
        y = layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", two_four_linear.FastPathNotice)  # the notice is given once only
        layer(x)
    assert torch.equal(y, F.linear(x, reference.weight * keep, reference.bias))
    assert layer.route(x) == ("reference", "CUDA is not available")
    assert torch.equal(layer.weight[~keep], torch.zeros(int((~keep).sum())))


def test_layer_constructed_directly_is_two_four_and_has_a_masked_gradient() -> None:
    layer = two_four_linear.SemiStructuredLinear(8, 4)
    assert two_four.is_two_four(layer.weight.detach()) and (_groups(layer.mask).sum(-1) == 2).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", two_four_linear.FastPathNotice)
        layer(torch.randn(6, 8)).square().sum().backward()
    assert (layer.weight.grad[~layer.mask] == 0).all() and (layer.weight.grad[layer.mask] != 0).any()


def test_layer_refuses_bad_configuration() -> None:
    with pytest.raises(ValueError, match="in_features divisible by 4"):
        two_four_linear.SemiStructuredLinear(6, 4)
    with pytest.raises(ValueError, match="kernel must be one of"):
        two_four_linear.SemiStructuredLinear(8, 4, kernel="cuda")
    with pytest.raises(ValueError, match="backend must be"):
        two_four_linear.SemiStructuredLinear(8, 4, backend="magic")
    with pytest.raises(ValueError, match="kernel='torch' cannot run here: CUDA is not available"):
        two_four_linear.SemiStructuredLinear(8, 4, kernel="torch")(torch.randn(2, 8))


def test_gpu_path_refuses_cpu_tensors_and_unsupported_shapes_or_dtypes() -> None:
    w = torch.randn(32, 64)
    w = w * two_four.mask_24(w)
    with pytest.raises(ValueError, match="cannot build PyTorch's 2:4 tensor"):
        two_four_linear.to_semi_structured(w)
    assert two_four_linear.min_shape(torch.float16, "cutlass") == (32, 64)
    assert two_four_linear.min_shape(torch.bfloat16, "cusparselt") == (16, 16)
    assert "not a multiple of (32, 64)" in two_four_linear.shape_problem(torch.zeros(32, 48, dtype=torch.float16), "cutlass")
    assert two_four_linear.shape_problem(torch.zeros(64, 128, dtype=torch.float16), "cutlass") is None
    with pytest.raises(ValueError, match="no torch.float64 support"):
        two_four_linear.min_shape(torch.float64, "cusparselt")


# --- whole models ----------------------------------------------------------------------


def test_sparsify_and_densify_round_trip_any_model() -> None:
    net = _net()
    reference = copy.deepcopy(net)
    two_four_convert.sparsify_24(net, modules=["0", "2"])
    layers = two_four_convert.two_four_layers(net)
    assert set(layers) == {"0", "2"} and isinstance(net[4], nn.Linear) and not isinstance(net[4], two_four_linear.SemiStructuredLinear)
    keep = two_four_convert.keep_mask(net)
    for name in ("0.weight", "2.weight"):
        assert torch.equal(keep[name], two_four.mask_24(reference.get_parameter(name)))
    assert keep["4.weight"].all() and keep["0.bias"].all()
    x = torch.randn(10, 16)
    masked_ref = copy.deepcopy(reference)
    prune.apply_mask_(masked_ref, keep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", two_four_linear.FastPathNotice)
        assert torch.equal(net(x), masked_ref(x))
    two_four_convert.densify(net)
    assert not two_four_convert.two_four_layers(net) and all(type(m) is nn.Linear for m in (net[0], net[2], net[4]))
    assert torch.equal(net(x), masked_ref(x))


def test_sparsify_with_another_criterion_and_by_pattern() -> None:
    net = _net()
    scores = criteria.random(net, seed=3)
    two_four_convert.sparsify_24(net, criterion=scores, modules="[02]")
    layer = net[2]
    assert isinstance(layer, two_four_linear.SemiStructuredLinear)
    assert torch.equal(layer.mask, two_four.mask_24(layer.weight, scores["2.weight"]))
    net2 = _net()
    two_four_convert.sparsify_24(net2, criterion="random", modules="0")
    assert torch.equal(net2[0].mask, two_four.mask_24(net2[0].weight, criteria.random(_net(), seed=0)["0.weight"]))


def test_sparsify_takes_every_registered_criterion() -> None:
    """The criterion name goes through ``sparsity.registry``: a new criterion works without edits here."""
    def squared(model: nn.Module, inputs: registry.CriterionInputs) -> dict[str, torch.Tensor]:
        return {n: p.detach() ** 2 for n, p in model.named_parameters() if n in inputs.names(model)}

    registry.register_criterion("test_squared_24", squared)
    try:
        net = two_four_convert.sparsify_24(_net(), criterion="test_squared_24", modules="2")
    finally:
        registry.unregister_criterion("test_squared_24")
    assert torch.equal(net[2].mask, two_four.mask_24(net[2].weight, net[2].weight.detach() ** 2))
    assert torch.equal(two_four_convert.sparsify_24(_net(), criterion=squared, modules="2")[2].mask, net[2].mask)

    torch.manual_seed(1)
    batches = [(torch.randn(8, 16), torch.randn(8, 6)) for _ in range(2)]

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.mse_loss(model(batch[0]), batch[1])

    reference = _net()
    fisher = criteria.fisher(reference, loss_fn, batches)
    net = two_four_convert.sparsify_24(_net(), criterion="fisher", modules=["0", "2"],
                         inputs=registry.CriterionInputs(loss_fn=loss_fn, batches=batches))
    assert torch.equal(net[0].mask, two_four.mask_24(net[0].weight, fisher["0.weight"]))
    assert torch.equal(net[2].mask, two_four.mask_24(net[2].weight, fisher["2.weight"]))
    with pytest.raises(ValueError, match="needs gradients"):
        two_four_convert.sparsify_24(_net(), criterion="fisher")
    with pytest.raises(ValueError, match="cannot be cut into a 2:4 pattern"):
        two_four_convert.sparsify_24(_net(), criterion="layers", inputs=registry.CriterionInputs(options={"layers": ["2"]}))


def test_sparsify_refuses_bad_choices() -> None:
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        two_four_convert.sparsify_24(_net(), modules="nothing")
    odd = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4))
    with pytest.raises(ValueError, match=r"in_features divisible by 4; not so for \['0 \(6 inputs\)'\]"):
        two_four_convert.sparsify_24(odd)
    with pytest.raises(ValueError, match="criterion must be one of"):
        two_four_convert.sparsify_24(_net(), criterion="psychic")
    with pytest.raises(TypeError, match="criterion must be a registered name"):
        two_four_convert.sparsify_24(_net(), criterion=3)
    with pytest.raises(ValueError, match="gives no scores for"):
        two_four_convert.sparsify_24(_net(), criterion={"0.weight": torch.ones(32, 16)}, modules=["0", "2"])
    with pytest.raises(ValueError, match="no SemiStructuredLinear"):
        two_four_convert.keep_mask(_net())


# --- fine-tuning with the pattern fixed ----------------------------------------------------


def _regression_train_fn(kind: str, steps: int = 30):
    torch.manual_seed(5)
    x, y = torch.randn(64, 16), torch.randn(64, 6)

    def train_fn(model: nn.Module, keep: dict[str, torch.Tensor]) -> None:
        maker = MaskedAdamW if kind == "masked" else CompactAdamW
        opt = maker(model.named_parameters(), mask=keep, lr=1e-2, weight_decay=0.5)
        for _ in range(steps):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    return train_fn, x, y


@pytest.mark.parametrize("kind", ["masked", "compact"])
def test_finetuning_keeps_the_pattern_exactly_with_weight_decay(kind: str) -> None:
    net = _net()
    train_fn, x, y = _regression_train_fn(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", two_four_linear.FastPathNotice)
        two_four_convert.sparsify_24(net, modules=["0", "2"])
        before_loss = F.mse_loss(net(x), y).item()
        masks_before = {n: m.mask.clone() for n, m in two_four_convert.two_four_layers(net).items()}
        kept_before = {n: m.weight.detach()[m.mask].clone() for n, m in two_four_convert.two_four_layers(net).items()}
        train_fn(net, two_four_convert.keep_mask(net))
        after_loss = F.mse_loss(net(x), y).item()
    for name, layer in two_four_convert.two_four_layers(net).items():
        assert torch.equal(layer.mask, masks_before[name])
        assert (layer.weight.detach()[~layer.mask] == 0).all()  # exactly zero despite weight decay 0.5
        assert not torch.equal(layer.weight.detach()[layer.mask], kept_before[name])  # the kept ones trained
        assert two_four.is_two_four(layer.weight.detach())
    assert after_loss < before_loss
    two_four_convert.check_pattern(net)


def test_finetune_24_prunes_trains_and_checks() -> None:
    net = _net()
    train_fn, _, _ = _regression_train_fn("masked")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", two_four_linear.FastPathNotice)
        two_four_convert.finetune_24(net, train_fn, modules=["0", "2"])
        report = two_four_convert.to_inference_(net)
    assert report == {"0": "reference: CUDA is not available", "2": "reference: CUDA is not available"}
    assert not any(p.requires_grad for p in net.parameters()) and not net.training


def test_plain_adamw_would_break_the_pattern_and_is_caught() -> None:
    net = _net()

    def careless(model: nn.Module, keep: dict) -> None:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        with torch.no_grad():
            model[0].weight.add_(1.0)  # stands for any update that ignores the mask
        opt.zero_grad()

    with pytest.raises(RuntimeError, match="moved pruned entries"):
        two_four_convert.finetune_24(net, careless, modules="0")


def test_optimizer_helper_builds_on_the_keep_mask() -> None:
    net = two_four_convert.sparsify_24(_net(), modules="2")
    opt = two_four_convert.optimizer(net, "compact", lr=1e-3)
    assert isinstance(opt, CompactAdamW) and set(opt.indices) == {"2.weight"}
    assert opt.indices["2.weight"].numel() == net[2].weight.numel() // 2
    assert isinstance(two_four_convert.optimizer(net), MaskedAdamW)
    with pytest.raises(ValueError, match="kind must be one of"):
        two_four_convert.optimizer(net, "sgd")


# --- Triton kernels against the reference (CPU interpreter without a GPU) --------------------


def _kernels():
    from sparsity.kernels import two_four_triton

    if not torch.cuda.is_available() and not two_four_triton.interpreting():
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set in this process")
    return two_four_triton


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@needs_triton
@pytest.mark.parametrize("shape", [(5, 24, 40), (1, 8, 4), (17, 33, 68)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_matmul_matches_the_reference(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    k = _kernels()
    t, n, kin = shape
    gen = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(n, kin, generator=gen)
    w = (w * two_four.mask_24(w)).to(dtype)
    x, b = torch.randn(t, kin, generator=gen).to(dtype), torch.randn(n, generator=gen).to(dtype)
    values, meta = (v.to(_device()) for v in two_four.compress(w))
    y = k.matmul(x.to(_device()), values, meta, b.to(_device())).cpu()
    expected = x.double() @ w.double().T + b.double()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert y.dtype == dtype and y.shape == (t, n)
    torch.testing.assert_close(y.double(), expected, rtol=tol, atol=tol * kin ** 0.5)
    no_bias = k.matmul(x.to(_device()).reshape(1, t, kin), values, meta).cpu()
    assert no_bias.shape == (1, t, n)
    torch.testing.assert_close(no_bias[0].double(), expected - b.double(), rtol=tol, atol=tol * kin ** 0.5)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_weight_gradient_is_the_masked_dense_gradient(dtype: torch.dtype) -> None:
    k = _kernels()
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(20, 36, generator=gen)
    keep = two_four.mask_24(w)
    _, meta = two_four.compress(w * keep)
    x, dy = torch.randn(2, 9, 36, generator=gen).to(dtype), torch.randn(2, 9, 20, generator=gen).to(dtype)
    grad_values = k.weight_grad(dy.to(_device()), x.to(_device()), meta.to(_device())).cpu()
    assert grad_values.shape == (20, 18)
    dense = two_four.decompress(grad_values, meta)
    expected = (dy.double().reshape(-1, 20).T @ x.double().reshape(-1, 36)) * keep
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(dense.double(), expected, rtol=tol, atol=tol * 4)
    assert (dense[~keep] == 0).all()


@needs_triton
def test_triton_kernels_refuse_bad_input() -> None:
    k = _kernels()
    values, meta = two_four.compress(torch.tensor([[1.0, 0.0, 2.0, 0.0]] * 2))
    with pytest.raises(ValueError, match="input features"):
        k.matmul(torch.randn(3, 8), values, meta)
    with pytest.raises(TypeError, match="dtype"):
        k.matmul(torch.randn(3, 4, dtype=torch.float64), values.double(), meta)
    with pytest.raises(TypeError, match="uint8"):
        k.matmul(torch.randn(3, 4), values, meta.int())
    with pytest.raises(ValueError, match="do not describe one 2:4 weight"):
        k.matmul(torch.randn(3, 4), values[:, :1], meta)
    with pytest.raises(ValueError, match="do not match a 2:4 weight"):
        k.weight_grad(torch.randn(3, 5), torch.randn(3, 4), meta)


@needs_triton
def test_triton_kernels_refuse_cpu_tensors_outside_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    k = _kernels()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    values, meta = two_four.compress(torch.tensor([[1.0, 0.0, 2.0, 0.0]]))
    with pytest.raises(ValueError, match="need CUDA tensors, got tensors on cpu"):
        k.matmul(torch.randn(2, 4), values, meta)


# --- the fast GPU paths -------------------------------------------------------------------


def _gpu_layer(n: int, k: int, dtype: torch.dtype, kernel: str, backend: str = "auto") -> tuple[nn.Linear, two_four_linear.SemiStructuredLinear]:
    torch.manual_seed(0)
    linear = nn.Linear(k, n, device="cuda", dtype=dtype)
    reference = copy.deepcopy(linear)
    layer = two_four_linear.SemiStructuredLinear.from_linear(linear, kernel=kernel, backend=backend)
    with torch.no_grad():
        reference.weight.copy_(layer.weight)
    return reference, layer


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel,backend", [("torch", "cusparselt"), ("torch", "cutlass"), ("triton", "auto")])
def test_gpu_forward_matches_the_dense_masked_reference(dtype: torch.dtype, kernel: str, backend: str) -> None:
    if backend == "cusparselt" and two_four_linear.resolve_backend("auto") != "cusparselt":
        pytest.skip("this PyTorch build has no cuSPARSELt")
    reference, layer = _gpu_layer(256, 512, dtype, kernel, backend)
    x = torch.randn(64, 512, device="cuda", dtype=dtype)
    with torch.no_grad():
        assert layer.route(x)[0] == kernel
        torch.testing.assert_close(layer(x), reference(x), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@needs_cuda
def test_gpu_auto_uses_triton_where_pytorch_refuses_the_shape() -> None:
    reference, layer = _gpu_layer(24, 40, torch.float16, "auto")
    x = torch.randn(3, 40, device="cuda", dtype=torch.float16)
    assert layer.route(x)[0] == "triton"
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(x), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@needs_cuda
def test_gpu_training_step_gradients_match_the_reference() -> None:
    reference, layer = _gpu_layer(128, 256, torch.bfloat16, "auto")
    x = torch.randn(32, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    layer(x).float().square().sum().backward()
    F.linear(x_ref, reference.weight * layer.mask, reference.bias).float().square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=3e-2, atol=3e-1)
    assert (layer.weight.grad[~layer.mask] == 0).all()


@pytest.mark.gpu
@needs_cuda
def test_gpu_path_refuses_float32_and_says_why() -> None:
    _, layer = _gpu_layer(64, 64, torch.float32, "auto")
    assert layer.route(torch.randn(2, 64, device="cuda")) == ("reference", "dtype torch.float32 is not float16/bfloat16")
    with pytest.raises(ValueError, match="not float16/bfloat16"):
        two_four_linear.to_semi_structured(layer.weight.detach())


# --- the benchmark script ---------------------------------------------------------------


def test_benchmark_dry_run_exercises_every_part_on_the_cpu(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import semistructured as bench

    out = tmp_path / "dry.md"
    before = set(bench.RESULTS.glob("semistructured-*"))
    assert bench.main(["--dry-run", "--out", str(out)]) == 0
    text = out.read_text()
    assert "Dry run on the CPU" in text and "not a measurement" in text
    linear_rows = [line for line in text.splitlines() if line.startswith(("| bf16 |", "| fp16 |"))]
    assert len(linear_rows) == 2 * len(bench.weight_shapes(bench.DRY_SIZES)) * len(bench.DRY_TOKENS) == 12
    assert all(line.rstrip(" |").endswith("reference") for line in linear_rows)
    gpt_rows = [line for line in text.splitlines() if line.count("|") == 5 and "x" in line and "tokens/s" not in line
                and any(v in line for v in bench.GPT_VARIANTS)]
    assert len(gpt_rows) == len(bench.GPT_VARIANTS) * len(bench.DRY_GPT_SHAPES)
    assert set(bench.RESULTS.glob("semistructured-*")) == before  # a dry run never writes results
    assert bench.device_slug("NVIDIA H100 80GB HBM3") == "h100" and bench.device_slug("NVIDIA A100-SXM4-40GB") == "a100"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_benchmark_without_a_gpu_stops_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import semistructured as bench

    assert bench.main([]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU of compute capability >= 8.0" in err and "Nothing was measured" in err


def test_benchmark_results_can_be_read_back(tmp_path) -> None:
    from benchmarks import semistructured as bench

    out = tmp_path / "dry.md"
    assert bench.main(["--dry-run", "--no-gpt", "--out", str(out)]) == 0
    tables = bench.read_markdown_tables(out)
    (linear,) = [rows for heading, rows in tables.items() if heading.startswith("Linear layer")]
    assert len(linear) == 12 and {r["dtype"] for r in linear} == {"bf16", "fp16"}
    assert all(float(r["dense ms"]) > 0 and r["train route"] == "reference" for r in linear)
    rows, gpt_rows, routes = bench.read_results(out)
    assert routes == () and gpt_rows == [] and len(rows) == 12
    assert all(r.train_route == "reference" and r.dense_ms > 0 and r.sparse_ms == {} for r in rows)


def test_benchmark_results_round_trip_with_routes_and_draw(tmp_path) -> None:
    """What format_linear / format_gpt write, read_results reads back (to the printed precision)."""
    from benchmarks import semistructured as bench

    routes = ("cusparselt", "triton")
    rows = [bench.LinearRow("bf16", (4096, 1024), t, 0.5 * t, {"cusparselt": 0.25 * t, "triton": None if t > 1 else 0.4},
                            1.5 * t, 1.0 * t, "torch") for t in (1, 16)]
    gpt = [bench.GptRow("prefill 8 x 512", "dense", 1000.0), bench.GptRow("prefill 8 x 512", "2:4 MLPs", 1500.0)]
    path = tmp_path / "semistructured-h100.md"
    path.write_text("\n".join(["# title", "", "## Linear layer (forward)", "", bench.format_linear(rows, routes), "",
                               "Best forward speedup at the largest weight: cusparselt 2.00x", "",
                               "## GPT `mid` inference (bf16 forward)", "", bench.format_gpt(gpt), ""]))
    back_rows, back_gpt, back_routes = bench.read_results(path)
    assert back_routes == routes and back_rows == rows and back_gpt == gpt
    fig = bench.speedup_figure(back_rows, back_routes, path.stem)
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 2 + 2  # two routes, and the 1x and 2x guides


def test_the_core_imports_and_works_without_triton() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` fail
        "import torch, warnings\n"
        "import sparsity\n"
        "from sparsity import two_four_convert, two_four_linear\n"
        "assert not two_four_linear.triton_available()\n"
        "warnings.simplefilter('ignore')\n"
        "net = two_four_convert.sparsify_24(torch.nn.Sequential(torch.nn.Linear(8, 4)))\n"
        "print(net(torch.randn(2, 8)).shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": "."})
    assert done.returncode == 0, done.stderr
    assert "torch.Size([2, 4])" in done.stdout


@needs_triton
def test_layer_on_the_triton_route_trains_like_the_reference() -> None:
    """The fast routes' autograd (forward kernel, input gradient, masked weight gradient) against the reference."""
    _kernels()
    torch.manual_seed(0)
    linear = nn.Linear(20, 12, device=_device())
    reference = copy.deepcopy(linear)
    layer = two_four_linear.SemiStructuredLinear.from_linear(linear, kernel="triton")
    with torch.no_grad():
        reference.weight.copy_(layer.weight)
    assert layer.route(torch.randn(1, 20, device=_device()))[0] == "triton"
    x = torch.randn(2, 3, 20, device=_device(), requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y = layer(x)
    y_ref = F.linear(x_ref, reference.weight * layer.mask, reference.bias)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    y_ref.backward(upstream)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-5)
    assert (layer.weight.grad[~layer.mask] == 0).all()
    with torch.no_grad():  # inference skips autograd and gives the same numbers
        torch.testing.assert_close(layer(x), y_ref, rtol=1e-5, atol=1e-5)


def test_copies_of_a_layer_drop_the_compressed_cache_and_rebuild_it() -> None:
    layer = two_four_linear.SemiStructuredLinear(8, 4)
    values, meta = layer._compressed_meta()
    assert set(layer._cache) == {"reference-format"}
    twin = copy.deepcopy(layer)
    assert twin._cache == {} and set(layer._cache) == {"reference-format"}
    assert torch.equal(twin.mask, layer.mask) and twin.weight is not layer.weight
    twin_values, twin_meta = twin._compressed_meta()
    assert torch.equal(twin_values, values) and torch.equal(twin_meta, meta)
    with torch.no_grad():
        layer.weight.mul_(2.0)  # an optimizer step changes the weight's version: the cache follows
    assert torch.equal(layer._compressed_meta()[0], 2.0 * values)
