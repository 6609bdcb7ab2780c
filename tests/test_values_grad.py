"""Values-only weight gradients (sparsity.values_grad): the selected entries' gradient, no dense one."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sparsity import SparseConfig, masks, sparsify, values_grad
from sparsity.compact import CompactAdamW
from sparsity.rebuilt_inputs import RowStep
from sparsity.train import fit


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40), nn.Tanh(), nn.Linear(40, 8))


def test_the_gradient_is_the_dense_one_at_the_selected_entries(sparse_cpu_route) -> None:
    model = _model()
    x = torch.randn(3, 7, 24)  # extra leading dimensions, as in a transformer
    model(x).pow(2).sum().backward()
    dense = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    opt = CompactAdamW(model.named_parameters(), masks.random(model, 0.2, seed=0), lr=1e-2)
    assert values_grad.install(model, opt) == ["0.weight", "2.weight"]
    model(x).pow(2).sum().backward()
    for name in ("0.weight", "2.weight"):
        assert model.get_parameter(name).grad is None  # no dense gradient was made
        got = opt.values_grads[name].grad
        want = dense[name].reshape(-1)[opt.indices[name].long()]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[0].bias.grad, dense["0.bias"])  # biases and inputs as before


def test_training_with_values_only_gradients_follows_the_dense_gradient_run(sparse_cpu_route) -> None:
    data = [(torch.randn(16, 24), torch.randn(16, 8)) for _ in range(20)]

    def run(values: bool) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        model = _model()
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        sparse = sparsify(model, SparseConfig("random", density=0.2, include="weight", lr=1e-2, values_grad=values))
        fit(model, sparse.optimizer, lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), 20, batches=data.__getitem__)
        return model, sparse.mask, start

    plain, mask, start = run(False)
    values, _, _ = run(True)
    for (name, p), q in zip(plain.named_parameters(), values.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
        assert torch.equal(q[~mask[name]], start[name][~mask[name]]), name  # nothing outside the mask moved
    assert not torch.equal(values[0].weight, start["0.weight"])


def test_remove_restores_plain_layers() -> None:
    model = _model()
    opt = CompactAdamW(model.named_parameters(), masks.random(model, 0.2, seed=0), lr=1e-2)
    values_grad.install(model, opt)
    values_grad.remove(model, opt)
    model(torch.randn(2, 24)).sum().backward()
    assert model[0].weight.grad is not None and not opt.values_grads


def test_bad_uses_are_refused() -> None:
    model = _model()
    opt = CompactAdamW(model.named_parameters(), masks.random(model, 0.2, seed=0), lr=1e-2)
    with pytest.raises(TypeError, match="need a CompactAdamW"):
        values_grad.install(model, torch.optim.SGD(model.parameters(), lr=0.1))
    values_grad.install(model, opt)
    with pytest.raises(ValueError, match="reselect: values-only gradients"):
        opt.reselect(masks.random(model, 0.2, seed=1))
    other = CompactAdamW(_model().named_parameters(), masks.random(model, 0.2, seed=1), lr=1e-2)
    with pytest.raises(ValueError, match=r"state_dict\['indices'\]\['0.weight'\] selects other entries"):
        opt.load_state_dict(other.state_dict())  # same counts, other positions: once a silent wrong gradient
    before = {n: idx.clone() for n, idx in opt.indices.items()}
    opt.load_state_dict(opt.state_dict())  # the same selection (a resumed run) loads
    assert all(torch.equal(opt.indices[n], before[n]) for n in before)
    with pytest.raises(ValueError, match="values_grad=True needs storage='compact'"):
        SparseConfig("random", storage="dense", values_grad=True)
    with pytest.raises(ValueError, match="mode must be one of"):
        values_grad.install(_model(), CompactAdamW(_model().named_parameters(), {}), "fast")
    with pytest.raises(TypeError, match="values_grad must be None, True or False"):
        SparseConfig("random", values_grad="yes")


@pytest.mark.parametrize("tokens", [150, 40, 600])  # under one block of 256 tokens; two blocks and a short one
def test_every_product_is_the_dense_gradient_at_the_selected_entries(sparse_cpu_route, tokens) -> None:
    gen = torch.Generator().manual_seed(0)
    g, x = torch.randn(tokens, 33, generator=gen), torch.randn(tokens, 70, generator=gen)
    flat = torch.randperm(33 * 70, generator=gen)[:200].sort().values.int()
    want = (g.double().t() @ x.double()).view(-1)[flat]
    for how in values_grad.MODES:
        got = values_grad.selected_weight_grad(g, x, flat, how)
        assert got.dtype == torch.float32 and got.shape == (200,)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, msg=how)
    with pytest.raises(ValueError, match="how must be one of"):
        values_grad.selected_weight_grad(g, x, flat, "fast")
    with pytest.raises(TypeError, match="flat must hold int32 positions"):
        values_grad.selected_weight_grad(g, x, flat.long(), "sampled")
    for how in values_grad.MODES:  # every route, the kernel's included, refuses a step it does not know
        with pytest.raises(ValueError, match="step.kind must be one of \\('gelu', 'layer_norm'\\), got 'relu'"):
            values_grad.selected_weight_grad(g, x, flat, how, RowStep("relu"))


@pytest.mark.parametrize("shape", [(40, 50), (300, 200)])  # read in place (a narrow layer); through the block buffers
def test_the_kernels_sum_does_not_depend_on_the_thread_count(shape) -> None:
    """Every entry sums its blocks in block order, however the entries and the copies are split over threads."""
    from sparsity.kernels import sparse_cpu

    kernel = sparse_cpu.load()
    if kernel is None:
        pytest.skip("the CPU kernels could not be built here (no C++ compiler or ninja?)")
    gen = torch.Generator().manual_seed(1)
    (n_out, n_in), tokens = shape, 700  # two blocks of 256 tokens and a short one on the buffered path
    g, x = torch.randn(tokens, n_out, generator=gen), torch.randn(tokens, n_in, generator=gen)
    flat = torch.randperm(n_out * n_in, generator=gen)[:3000].sort().values.int()  # over the kernel's 1024-entry grain
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(kernel.selected_weight_grad(g, x, flat))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])
    torch.testing.assert_close(results[0].double(), (g.double().t() @ x.double()).view(-1)[flat], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["gelu", "layer_norm", "layer_norm without affine"])
@pytest.mark.parametrize("shape", [(96, 200), (5, 7)], ids=["buffered", "narrow"])
def test_a_steps_output_rebuilt_block_by_block_gives_the_same_bits_as_rebuilt_whole(sparse_cpu_route, kind: str,
                                                                                  shape: tuple[int, int]) -> None:
    """With a row-wise step (``rebuilt_inputs.RowStep``) the product rebuilds the layer's input from the step's input
    one block of tokens at a time: the same bits as the whole input rebuilt first, whatever the thread count, on the
    kernel's blocks (two of 256 tokens and a short one) and on its narrow path, and through the torch fallback."""
    gen = torch.Generator().manual_seed(3)
    (n_out, n_in), tokens = shape, 601
    g, u = torch.randn(tokens, n_out, generator=gen), torch.randn(tokens, n_in, generator=gen) * 2
    step = {"gelu": RowStep("gelu"),
            "layer_norm": RowStep("layer_norm", *torch.randn(2, n_in, generator=gen), 1e-3),
            "layer_norm without affine": RowStep("layer_norm", eps=1e-6)}[kind]
    flat = torch.randperm(n_out * n_in, generator=gen)[: n_out * n_in // 10].sort().values.int()
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            whole = F.gelu(u) if kind == "gelu" else F.layer_norm(u, (n_in,), step.weight, step.bias, step.eps)
            assert torch.equal(step(u), whole)
            assert torch.equal(values_grad.selected_weight_grad(g, u, flat, "sampled", step),
                               values_grad.selected_weight_grad(g, whole, flat, "sampled"))
            assert torch.equal(values_grad.selected_weight_grad(g, u, flat, "dense", step),
                               values_grad.selected_weight_grad(g, whole, flat, "dense"))
    finally:
        torch.set_num_threads(threads)


def test_an_entrys_sum_does_not_depend_on_its_row_neighbours_or_the_positions_order() -> None:
    """The kernel takes up to four entries of one weight row together (one load of the gradient's row for all): an
    entry's bits must be those it gets alone. And the positions' rows are found without a division per entry,
    relying on sorted order only for speed: a shuffled selection gives the same values, shuffled."""
    from sparsity.kernels import sparse_cpu

    kernel = sparse_cpu.load()
    if kernel is None:
        pytest.skip("the CPU kernels could not be built here (no C++ compiler or ninja?)")
    gen = torch.Generator().manual_seed(2)
    n_out, n_in, tokens = 64, 300, 520
    g, x = torch.randn(tokens, n_out, generator=gen), torch.randn(tokens, n_in, generator=gen)
    dense = torch.arange(n_out * n_in, dtype=torch.int32)  # every row full: groups of four
    lone = torch.arange(0, n_out * n_in, n_in + 7, dtype=torch.int32)  # about one entry per row: groups of one
    assert torch.equal(kernel.selected_weight_grad(g, x, dense)[lone.long()], kernel.selected_weight_grad(g, x, lone))
    flat = torch.randperm(n_out * n_in, generator=gen)[:900].int()
    in_order = flat.sort()
    assert torch.equal(kernel.selected_weight_grad(g, x, flat)[in_order.indices],
                       kernel.selected_weight_grad(g, x, in_order.values))


def test_auto_takes_the_sampled_product_only_where_it_was_measured_to_pay(monkeypatch) -> None:
    from sparsity.kernels import sparse_cpu

    calls = []

    class Kernel:  # records the sampled product's calls; the dense route never comes here
        def selected_weight_grad(self, g, x, flat):
            calls.append(flat.numel())
            return (g.t() @ x).view(-1)[flat]

    monkeypatch.setattr(sparse_cpu, "load", lambda: Kernel())
    g, x = torch.randn(300, 40), torch.randn(300, 50)
    sparse = torch.arange(0, 2000, 25, dtype=torch.int32)  # 4% of the entries
    dense = torch.arange(0, 2000, 2, dtype=torch.int32)  # 50%
    for flat in (sparse, dense):
        torch.testing.assert_close(values_grad.selected_weight_grad(g, x, flat, "auto"), (g.t() @ x).view(-1)[flat])
    assert calls == [sparse.numel()]
    few = values_grad.selected_weight_grad(g[:32], x[:32], sparse, "auto")  # 32 tokens: the dense product
    torch.testing.assert_close(few, (g[:32].t() @ x[:32]).view(-1)[sparse])
    assert calls == [sparse.numel()]
    assert not values_grad.sampled_pays(1, 40, 50, 1000, kernel=False)  # no kernel: the gather fallback never pays
    # The measured boundaries: 5% from 64 tokens, 10% from 512, 20% from 2,048, never beyond.
    pays = [values_grad.sampled_pays(k, 100, 100, tokens, kernel=True)
            for tokens, k in ((64, 500), (64, 501), (511, 1000), (512, 1000), (512, 1001), (2048, 2000), (4096, 2001))]
    assert pays == [True, False, False, True, False, True, False]


def test_sparsify_installs_auto_by_default_and_a_flag_forces_either_way() -> None:
    def layers(**kw) -> dict[str, str]:
        model = _model()
        run = sparsify(model, SparseConfig("random", density=0.2, **kw))
        return {n: m._values_grad.how for n, m in model.named_modules() if "_values_grad" in m.__dict__} \
            if getattr(run.optimizer, "values_grads", None) else {}

    assert layers() == {"0": "auto", "2": "auto"}
    assert layers(values_grad=True) == {"0": "sampled", "2": "sampled"}
    assert layers(values_grad=False) == {}
    assert layers(reselect_every=5) == {}  # a changing selection keeps autograd's dense gradient
    assert layers(storage="dense") == {}


def test_merge_makes_the_layers_plain_again() -> None:
    model = _model()
    run = sparsify(model, SparseConfig("random", density=0.2))
    run.merge()
    model(torch.randn(2, 24)).sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.shape == (40, 24)


def test_under_autocast_the_gradient_is_autocasts_at_the_selected_entries() -> None:
    x = torch.randn(5, 24)
    model = _model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().pow(2).sum().backward()
    dense = model[2].weight.grad.clone()
    model.zero_grad()
    opt = CompactAdamW(model.named_parameters(), masks.random(model, 0.2, seed=0))
    values_grad.install(model, opt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().pow(2).sum().backward()
    got = opt.values_grads["2.weight"].grad
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, dense.view(-1)[opt.indices["2.weight"]], rtol=2e-2, atol=2e-2)


def test_a_loop_that_clears_gradients_through_the_model_trains_the_same(sparse_cpu_route) -> None:
    """transformers.Trainer clears gradients with ``model.zero_grad()``, which never reaches the optimizer's
    ``[k]`` anchors: the step must consume their gradient, or it piles up across steps (and a run resumed
    from a checkpoint, whose anchors start empty, drifts from the uninterrupted one)."""
    data = [(torch.randn(16, 24), torch.randn(16, 8)) for _ in range(4)]

    def train(clear_through_model: bool) -> nn.Module:
        model = _model()
        run = sparsify(model, SparseConfig("random", density=0.2, include="weight", lr=1e-2, values_grad=True))
        for x, y in data:
            nn.functional.mse_loss(model(x), y).backward()
            run.optimizer.step()
            (model if clear_through_model else run.optimizer).zero_grad()
        assert all(anchor.grad is None for anchor in run.optimizer.values_grads.values())
        return model

    reference, through_model = train(False), train(True)
    for (name, p), q in zip(reference.named_parameters(), through_model.parameters()):
        assert torch.equal(q, p), f"{name}: the anchors' gradients piled up across steps"


class _TiedHead(nn.Module):
    """A head registered before the embedding that shares its matrix: the head's name is the parameter's."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 50, bias=False)
        self.emb = nn.Embedding(50, 16)
        self.emb.weight = self.head.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(tokens))


def test_a_tied_weight_keeps_autograds_gradient_summed_over_both_uses() -> None:
    torch.manual_seed(0)
    model, tokens = _TiedHead(), torch.randint(0, 50, (64,))
    model(tokens).square().mean().backward()
    dense = model.head.weight.grad.clone()
    model.zero_grad()
    opt = CompactAdamW(model.named_parameters(), masks.random(model, 0.3, seed=0))
    with pytest.raises(ValueError, match="'head.weight' is tied to emb.weight"):
        values_grad.install(model, opt, "sampled")  # once: the embedding's share of the gradient silently dropped
    assert values_grad.install(model, opt, "auto") == [] and model.head.weight.requires_grad
    model(tokens).square().mean().backward()
    torch.testing.assert_close(model.head.weight.grad, dense)


def test_a_layer_reused_in_two_places_sums_both_uses_in_its_anchor(sparse_cpu_route) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(24, 24)
    model = nn.Sequential(layer, nn.Tanh(), layer)  # one module, two places: not a tie
    x = torch.randn(40, 24)
    model(x).square().sum().backward()
    dense = layer.weight.grad.clone()
    model.zero_grad()
    opt = CompactAdamW(model.named_parameters(), masks.random(model, 0.2, seed=0))
    assert values_grad.install(model, opt, "sampled") == ["0.weight"]
    model(x).square().sum().backward()
    want = dense.reshape(-1)[opt.indices["0.weight"].long()]
    torch.testing.assert_close(opt.values_grads["0.weight"].grad, want, rtol=1e-5, atol=1e-6)


def test_clipping_the_anchors_with_the_parameters_clips_the_trained_entries_gradient(sparse_cpu_route) -> None:
    x, y = torch.randn(32, 24), torch.randn(32, 8)

    def clipped(values: bool) -> dict[str, torch.Tensor]:
        model = _model()
        run = sparsify(model, SparseConfig("random", density=0.2, include="weight", lr=1e-2, values_grad=values))
        nn.functional.mse_loss(model(x), y).backward()
        if not values:  # the reference: the dense gradient at the trained entries only
            for name, p in model.named_parameters():
                if p.grad is not None:
                    p.grad[~run.mask[name]] = 0.0
        norm = torch.nn.utils.clip_grad_norm_([*model.parameters(), *run.optimizer.values_grads.values()], 0.01)
        assert norm > 0.01  # the clip bites
        run.optimizer.step()
        return {n: p.detach().clone() for n, p in model.named_parameters()} | {"norm": norm}

    dense, values = clipped(False), clipped(True)
    for name, want in dense.items():
        torch.testing.assert_close(values[name], want, rtol=1e-5, atol=1e-6)
