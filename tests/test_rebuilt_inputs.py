"""Rebuilt inputs (sparsity.rebuilt_inputs): a values-only gradient layer keeps no copy of a GELU's or a
LayerNorm's output; backward rebuilds it bit for bit, and the saved activations shrink by exactly those copies."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from scaleup import gpt
from sparsity import SparseConfig, rebuilt_inputs, sparsify
from sparsity.memory import step_memory


def _rebuilt(x: torch.Tensor) -> torch.Tensor:
    rebuild, sources, *_ = rebuilt_inputs.recipe(x)
    return rebuild(*sources)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_a_gelus_output_is_rebuilt_bit_for_bit_from_the_input_gelu_keeps(approximate: str) -> None:
    gelu = nn.GELU(approximate)
    handles = rebuilt_inputs.tag_steps(gelu)
    u = torch.randn(5, 7, 33, requires_grad=True) * 3
    x = gelu(u)
    assert rebuilt_inputs.recipe(x).sources[0].data_ptr() == u.data_ptr()  # the tensor GELU keeps, not a copy
    assert torch.equal(_rebuilt(x), x)
    for handle in handles:
        handle.remove()
    assert rebuilt_inputs.recipe(gelu(u)) is None


def test_a_layer_norms_output_is_rebuilt_bit_for_bit_with_the_modules_eps() -> None:
    norm = nn.LayerNorm(33, eps=1e-3)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    rebuilt_inputs.tag_steps(nn.Sequential(norm))
    h = torch.randn(5, 7, 33, requires_grad=True) * 4 + 1
    x = norm(h)
    assert torch.equal(_rebuilt(x), x)
    plain = nn.LayerNorm(33, elementwise_affine=False)
    rebuilt_inputs.tag_steps(plain)
    assert torch.equal(_rebuilt(plain(h)), plain(h))


def test_the_kernel_rebuilds_block_by_block_only_steps_that_compute_each_row_alone() -> None:
    """A GELU with erf and a LayerNorm over the last dimension go to the kernel as row-wise steps (rebuilt a block of
    tokens at a time); a tanh GELU and a LayerNorm over two dimensions are rebuilt whole. (torch's tanh GELU rounds
    the last few elements of a contiguous stretch, its scalar tail, differently from the rest, so a block's edges
    would change bits; its erf GELU gave the same bits wherever the edges fell, checked on this torch at random
    offsets and lengths and kept honest by the bit-for-bit tests of the kernel.)"""
    u = torch.randn(4, 6, 8, requires_grad=True)
    steps = {"erf": nn.GELU(), "tanh": nn.GELU("tanh"), "last": nn.LayerNorm(8, eps=1e-3), "two": nn.LayerNorm((6, 8))}
    for step in steps.values():
        rebuilt_inputs.tag_steps(step)
    rows = {name: rebuilt_inputs.recipe(step(u)).row_step for name, step in steps.items()}
    assert rows["erf"] == rebuilt_inputs.RowStep("gelu")
    assert rows["last"].kind == "layer_norm" and rows["last"].eps == 1e-3
    assert rows["last"].weight.data_ptr() == steps["last"].weight.data_ptr()
    assert rows["tanh"] is None and rows["two"] is None
    for name in ("erf", "last"):
        x = steps[name](u)
        assert torch.equal(rows[name](u.detach()), x), name


def test_anything_else_is_kept_as_it_is() -> None:
    gelu = nn.GELU()
    rebuilt_inputs.tag_steps(gelu)
    u = torch.randn(4, 9, requires_grad=True)
    assert rebuilt_inputs.recipe(gelu(torch.randn(4, 9))) is None  # no gradient: no backward to keep it for
    assert rebuilt_inputs.recipe(F.gelu(u)) is None  # functional: no module, no hook
    assert rebuilt_inputs.recipe(gelu(u).view(9, 4)) is None  # a view: another tensor, untagged
    changed = gelu(u)
    changed.mul_(2)  # changed in place after the step: no longer the step's output
    assert rebuilt_inputs.recipe(changed) is None


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_forward_hook_that_changes_the_output_leaves_it_kept_and_the_gradient_right(sparse_cpu_route, when) -> None:
    """Activation steering: a hook on the GELU returns another tensor. Tagged after it (the tag on the hook's
    output), backward once rebuilt the GELU's own output instead: a silently wrong weight gradient."""
    x, y = torch.randn(300, 32), torch.randn(300, 8)

    def gradient(values: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 8))
        steer = lambda module, inputs, out: out * 2.0 + 0.5  # noqa: E731
        if when == "before":
            model[1].register_forward_hook(steer)
        run = sparsify(model, SparseConfig("random", density=0.1, include="weight", values_grad=values))
        if when == "after":
            model[1].register_forward_hook(steer)
        F.mse_loss(model(x), y).backward()
        idx = run.optimizer.indices["2.weight"]
        return run.optimizer.values_grads["2.weight"].grad if values else model[2].weight.grad.view(-1)[idx.long()]

    torch.testing.assert_close(gradient(True), gradient(False), rtol=1e-5, atol=1e-6)


def test_a_global_forward_hook_leaves_outputs_untagged() -> None:
    gelu = nn.GELU()
    rebuilt_inputs.tag_steps(gelu)
    u = torch.randn(4, 9, requires_grad=True)
    assert rebuilt_inputs.recipe(gelu(u)) is not None
    handle = nn.modules.module.register_module_forward_hook(lambda module, inputs, out: out + 1.0)
    try:
        assert rebuilt_inputs.recipe(gelu(u)) is None  # it ran before the module's hooks: not forward's output
    finally:
        handle.remove()


def _micro() -> gpt.GPT:
    return gpt.build("micro", vocab_size=11, block_size=16, seed=0)


def _sparse(rebuild: bool, checkpointing: bool = False) -> tuple[gpt.GPT, object]:
    model = _micro()
    if checkpointing:
        model.gradient_checkpointing_enable()
    run = sparsify(model, SparseConfig("random", density=0.1, lr=1e-2, values_grad=True,
                                       rebuild_inputs=None if rebuild else False))  # None: the default, on
    return model, run


def _loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    logits = model(idx[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_training_is_bit_for_bit_the_same_and_keeps_fewer_activations(sparse_cpu_route, checkpointing: bool) -> None:
    idx = torch.randint(11, (6, 17), generator=torch.Generator().manual_seed(0))
    runs = {rebuild: _sparse(rebuild, checkpointing) for rebuild in (False, True)}
    for _ in range(3):
        for model, run in runs.values():
            run.optimizer.zero_grad()
            _loss(model, idx).backward()
            run.optimizer.step()
    (kept, _), (rebuilt, _) = runs[False], runs[True]
    for (name, p), q in zip(kept.named_parameters(), rebuilt.parameters()):
        assert torch.equal(p, q), name
    if checkpointing:
        return
    memory = {rebuild: step_memory(model, run.optimizer, lambda m=model: _loss(m, idx), [idx])
              for rebuild, (model, run) in runs.items()}
    # what is not kept: per block the normalised input of fc (ln2's output) and the GELU's output, and ln1's output
    # in every block but the first (whose input, the frozen embeddings, has no autograd node to rebuild from)
    cfg, tokens = kept.config, idx[:, :-1].numel()
    copies = (cfg.n_layer * (1 + 4) * cfg.n_embd + (cfg.n_layer - 1) * cfg.n_embd) * tokens * 4
    assert memory[False].activations - memory[True].activations == copies
    assert memory[True].peak_bytes < memory[False].peak_bytes
    for key in ("params", "grads", "optimizer_state"):
        assert getattr(memory[True], key) == getattr(memory[False], key), key


def test_inputs_rebuilt_block_by_block_in_the_kernel_train_bit_for_bit_as_inputs_kept(sparse_cpu_route) -> None:
    """A model wide enough for the kernel's buffered path (``micro`` is not: its layers are read in place) and a batch
    of over 256 tokens: every GELU and LayerNorm output is rebuilt a block of tokens at a time inside the product
    (``rebuilt_inputs.RowStep``), the last block short; three steps train the same weights as keeping the inputs."""
    idx = torch.randint(11, (20, 17), generator=torch.Generator().manual_seed(0))  # 320 tokens: blocks of 256 and 64
    models = {}
    for rebuild in (False, None):
        torch.manual_seed(0)
        model = gpt.GPT(gpt.config("micro", n_embd=64, vocab_size=11, block_size=16))
        run = sparsify(model, SparseConfig("random", density=0.1, lr=1e-2, values_grad=True, rebuild_inputs=rebuild))
        for _ in range(3):
            run.optimizer.zero_grad()
            _loss(model, idx).backward()
            run.optimizer.step()
        models[rebuild] = model
    for (name, p), q in zip(models[False].named_parameters(), models[None].parameters()):
        assert torch.equal(p, q), name


HF_BATCH = (3, 9)
"""Sequences x tokens of the tiny Hugging Face models' batch."""


def _hf_activations_saved(model_class: type, config: object) -> int:
    """Train a tiny Hugging Face model (built from ``config``) one step with values-only gradients, inputs kept
    and rebuilt: the same weights bit for bit; returns how many bytes of saved activations the rebuild saved."""
    idx = torch.randint(config.vocab_size, HF_BATCH, generator=torch.Generator().manual_seed(0))
    runs = {}
    for rebuild in (False, None):
        torch.manual_seed(0)
        model = model_class(config).train()
        run = sparsify(model, SparseConfig("random", density=0.1, lr=1e-2, values_grad=True, rebuild_inputs=rebuild))
        assert run.optimizer.values_grads, "no values-only gradient was installed: nothing would be rebuilt"
        runs[rebuild] = (model, step_memory(model, run.optimizer, lambda m=model: m(idx, labels=idx).loss, [idx]))
    (kept, kept_memory), (rebuilt, rebuilt_memory) = runs[False], runs[None]
    for (name, p), q in zip(kept.named_parameters(), rebuilt.parameters()):
        assert torch.equal(p, q), name
    return kept_memory.activations - rebuilt_memory.activations


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_a_hugging_face_models_gelus_and_layer_norms_are_rebuilt_too(sparse_cpu_route, act: str) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPTNeoXConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=16, hidden_act=act)
    # per layer the MLP's activation output and the attention's and the MLP's normalised inputs, but in the first layer
    # no normalised input: with GPT-NeoX's parallel residual both its LayerNorms read the frozen embeddings, so their
    # outputs carry no gradient (and no tag)
    layers, width = config.num_hidden_layers, config.hidden_size
    copies = layers * config.intermediate_size + (layers - 1) * 2 * width
    assert _hf_activations_saved(transformers.GPTNeoXForCausalLM, config) == copies * HF_BATCH[0] * HF_BATCH[1] * 4


def test_a_llama_models_rms_norms_are_rebuilt_too(sparse_cpu_route) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=16)
    # per layer the attention's and the MLP's normalised inputs (q, k and v share one), but not the first layer's
    # attention input: it normalises the frozen embeddings, so its output carries no gradient (and no tag). The MLP's
    # act(gate) * up is no module's output: down_proj keeps it as before.
    copies = 2 * config.num_hidden_layers - 1
    tokens = HF_BATCH[0] * HF_BATCH[1]
    assert _hf_activations_saved(transformers.LlamaForCausalLM, config) == copies * config.hidden_size * tokens * 4


def test_an_rms_norms_output_is_rebuilt_bit_for_bit_and_a_weight_changed_since_is_refused(sparse_cpu_route) -> None:
    norm = nn.RMSNorm(33, eps=1e-3)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    handles = rebuilt_inputs.tag_steps(norm)
    h = torch.randn(5, 7, 33, requires_grad=True)
    y = norm(h)
    assert rebuilt_inputs.recipe(y).sources[0].data_ptr() == h.data_ptr()  # the input RMSNorm's backward keeps
    assert torch.equal(_rebuilt(y), y)
    for handle in handles:
        handle.remove()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.RMSNorm(16), nn.Linear(16, 4))
    sparsify(model, SparseConfig("random", density=0.3, values_grad=True))
    out = model(torch.randn(5, 8))
    with torch.no_grad():
        model[1].weight.mul_(2.0)  # the norm's weight, which the rebuild would read (the norm's own backward too)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_a_source_changed_in_place_after_the_forward_is_refused_as_autograd_refuses_it(sparse_cpu_route) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    sparsify(model, SparseConfig("random", density=0.3, values_grad=True, rebuild_inputs=True))
    u = model[0](torch.randn(5, 8))
    out = model[2](model[1](u))
    with torch.no_grad():
        u.add_(1.0)  # the GELU's input, which both the GELU and the rebuilt layer read in backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.act, self.proj = nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class _Backwards(TorchDispatchMode):
    """Records every GELU backward: its overload and whether it wrote into its gradient argument."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket is torch.ops.aten.gelu_backward:
            in_place = out.untyped_storage().data_ptr() == args[0].untyped_storage().data_ptr()
            self.calls.append((func._overloadname, in_place))
        return out


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_the_gelus_backward_runs_in_place_inside_the_next_layers_bit_for_bit(sparse_cpu_route, approximate) -> None:
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    grads, calls = {}, {}
    for rebuild in (False, None):
        torch.manual_seed(0)
        model = _MLP()
        model.act.approximate = approximate
        run = sparsify(model, SparseConfig("random", density=0.3, values_grad=True, rebuild_inputs=rebuild))
        x.grad = None
        with _Backwards() as seen:
            model(x).square().sum().backward()
        calls[rebuild] = seen.calls
        grads[rebuild] = [x.grad, *(a.grad for a in run.optimizer.values_grads.values())]
    assert calls[False] == [("default", False)]  # autograd's GELU node: a new gradient beside the one it got
    assert calls[None] == [("grad_input", True)]  # the same kernel, written into the gradient it got
    for kept, rebuilt in zip(grads[False], grads[None]):
        assert torch.equal(kept, rebuilt)


@pytest.mark.parametrize("ask", ["retain_grad", "tensor hook", "module hook"])
def test_a_gelu_output_whose_own_gradient_is_asked_for_keeps_its_backward(ask: str) -> None:
    torch.manual_seed(0)
    model = _MLP()
    sparsify(model, SparseConfig("random", density=0.3, values_grad=True))
    seen: list[torch.Tensor] = []
    if ask == "module hook":
        model.act.register_full_backward_hook(lambda module, grad_in, grad_out: seen.append(grad_out[0]))
    a = model.act(model.fc(torch.randn(5, 16)))
    if ask == "retain_grad":
        a.retain_grad()
    elif ask == "tensor hook":
        a.register_hook(seen.append)
    model.proj(a).sum().backward()
    got = a.grad if ask == "retain_grad" else seen[0]
    torch.testing.assert_close(got, torch.ones(5, 16) @ model.proj.weight)


def test_a_gelu_output_read_twice_gets_the_gradient_of_both_reads() -> None:
    torch.manual_seed(0)
    model = _MLP()
    reference = copy.deepcopy(model)
    sparsify(model, SparseConfig("random", density=0.3, values_grad=True))
    grads = []
    for m in (model, reference):
        x = torch.randn(5, 16, generator=torch.Generator().manual_seed(2), requires_grad=True)
        a = m.act(m.fc(x))
        (m.proj(a).sum() + a.square().sum()).backward()  # the layer fuses the GELU's backward; the square does not
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_the_flag_is_checked() -> None:
    with pytest.raises(TypeError, match="rebuild_inputs must be None, True or False"):
        SparseConfig(rebuild_inputs=1)
    for bad in (dict(values_grad=False), dict(storage="dense"), dict(reselect_every=5)):
        with pytest.raises(ValueError, match="rebuild_inputs=True rebuilds the inputs of values-only gradient layers"):
            SparseConfig(rebuild_inputs=True, **bad)
