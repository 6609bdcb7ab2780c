"""The small GPT, the synthetic tasks and cached, resumable pretraining (scaleup.gpt, .tasks, .pretrain)."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from scaleup import gpt
from scaleup import pretrain as pt
from scaleup import tasks as tk
from sparsity.eligibility import parameter_kinds
from sparsity.train import cosine

SMALL_WORLD = tk.WorldConfig(n_symbols=5, length=3, n_facts=6, n_eval=64)


def test_parameter_names_and_kinds_follow_the_convention():
    model = gpt.build("micro", vocab_size=20, block_size=10)
    kinds = parameter_kinds(model)
    assert kinds["tok_emb.weight"] == kinds["pos_emb.weight"] == "embedding"
    assert kinds["blocks.0.ln1.weight"] == kinds["ln_f.bias"] == "norm"
    d = model.config.n_embd
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["blocks.1.attn.qkv.weight"] == (3 * d, d)
    assert shapes["blocks.1.mlp.fc.weight"] == (4 * d, d)
    assert shapes["blocks.1.mlp.proj.weight"] == (d, 4 * d)
    assert {n for n, k in kinds.items() if k == "weight"} == {
        f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")}


def test_head_is_tied_to_the_token_embedding():
    model = gpt.build("micro", vocab_size=20, block_size=10)
    idx = torch.randint(20, (2, 6))
    with torch.no_grad():
        before = model(idx)
        model.tok_emb.weight[3] += 1.0
        after = model(idx)
    assert not torch.equal(before[..., 3], after[..., 3])
    assert model.n_params() == sum(p.numel() for p in model.parameters())


def test_attention_is_causal():
    model = gpt.build("micro", vocab_size=20, block_size=10).eval()
    idx = torch.randint(20, (1, 8))
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % 20
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("preset,low,high", [("tiny", 2e5, 1e6), ("small", 3e6, 1e7), ("mid", 1e8, 3.5e8)])
def test_preset_sizes_match_the_issue(preset, low, high):
    with torch.device("meta"):  # no memory for the 200M-parameter preset
        model = gpt.GPT(gpt.config(preset, vocab_size=25, block_size=17))
    assert low <= model.n_params() <= high


def test_build_is_seeded():
    a, b = (gpt.build("micro", 20, 10, seed=3) for _ in range(2))
    c = gpt.build("micro", 20, 10, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.blocks[0].mlp.fc.weight, c.blocks[0].mlp.fc.weight)


def test_autocast_is_a_no_op_on_cpu():
    model = gpt.build("micro", 20, 10)
    with gpt.autocast("cpu"):
        assert model(torch.zeros(1, 4, dtype=torch.long)).dtype == torch.float32


def test_bad_model_input_raises_clear_errors():
    with pytest.raises(ValueError, match="divisible by n_head"):
        gpt.GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="preset"):
        gpt.config("huge")
    with pytest.raises(ValueError, match="n_layer"):
        gpt.GPTConfig(n_layer=0)
    model = gpt.build("micro", 20, 10)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 11, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(1, 4))


# ---- tasks ----


def test_answers_of_the_algorithmic_tasks():
    world = tk.World()
    x = torch.tensor([[3, 0, 15, 7, 1, 2, 9, 4]])
    assert world.answer("copy", x).tolist() == x.tolist()
    assert world.answer("reverse", x).tolist() == [[4, 9, 2, 1, 7, 15, 0, 3]]
    assert world.answer("increment", x).tolist() == [[4, 1, 0, 8, 2, 3, 10, 5]]
    assert world.answer("add2", x).tolist() == [[5, 2, 1, 9, 3, 4, 11, 6]]
    assert world.answer("sort", x).tolist() == [[0, 1, 2, 3, 4, 7, 9, 15]]


def test_splits_never_share_an_input():
    world = tk.World()
    gen = torch.Generator().manual_seed(0)
    seen = {s: {tuple(r) for r in world.sample("copy", s, 3000, gen)[0].tolist()} for s in tk.SPLITS}
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"]
    x = torch.randint(16, (20000, 8), generator=gen)
    shares = torch.bincount(world.split_of(x), minlength=3) / len(x)
    torch.testing.assert_close(shares, torch.tensor([0.8, 0.1, 0.1]), atol=0.02, rtol=0)


def test_fact_tables_are_disjoint_and_fixed_by_the_seed():
    a, b = tk.World(), tk.World()
    keys_a = {tuple(k) for k in a.facts["facts_a"][0].tolist()}
    keys_b = {tuple(k) for k in a.facts["facts_b"][0].tolist()}
    assert len(keys_a) == len(keys_b) == a.config.n_facts and not keys_a & keys_b
    assert torch.equal(a.facts["facts_b"][1], b.facts["facts_b"][1])


def test_batch_layout_puts_the_loss_on_the_answer_only():
    world = tk.World()
    batch = world.encode("reverse", torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]), torch.tensor([[8, 7, 6, 5, 4, 3, 2, 1]]))
    assert batch.idx.shape == batch.targets.shape == (1, world.block_size)
    assert batch.idx[0, 0] == world.task_token("reverse") and batch.idx[0, 9] == tk.SEP
    scored = batch.targets[0] != tk.IGNORE
    assert scored.sum() == 8
    assert batch.targets[0, scored].tolist() == world.symbol_tokens(torch.tensor([8, 7, 6, 5, 4, 3, 2, 1])).tolist()
    # target at position p is the token at p + 1: the model predicts the answer from the prompt
    assert torch.equal(batch.targets[0, 9:16], batch.idx[0, 10:17])


def test_training_batches_depend_on_seed_and_step_only():
    world = tk.World()
    a = world.train_batch(tk.SOURCE_TASKS, step=5, batch_size=16, seed=1)
    b = world.train_batch(tk.SOURCE_TASKS, step=5, batch_size=16, seed=1)
    c = world.train_batch(tk.SOURCE_TASKS, step=6, batch_size=16, seed=1)
    assert torch.equal(a.idx, b.idx) and not torch.equal(a.idx, c.idx)
    tokens = set(a.idx[:, 0].tolist())
    assert tokens <= {world.task_token(t) for t in tk.SOURCE_TASKS} and len(tokens) > 1


class Oracle(nn.Module):
    """Logits that put all mass on the true next token of one fixed batch (with some rows spoiled)."""

    def __init__(self, batch: tk.Batch, vocab: int, spoil_rows: int = 0) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        targets = batch.targets.clamp(min=0).clone()
        last = (batch.targets != tk.IGNORE).nonzero()
        for row in range(spoil_rows):
            col = last[last[:, 0] == row][-1, 1]
            targets[row, col] = (targets[row, col] + 1) % vocab
        self.logits = nn.functional.one_hot(targets, vocab).float()

    def forward(self, idx):
        return self.logits


def test_exact_match_needs_every_answer_token():
    world = tk.World()
    batch = world.eval_set("add2", "val")
    assert tk.exact_match(Oracle(batch, world.vocab_size), batch) == 1.0
    half = len(batch.idx) // 2
    assert tk.exact_match(Oracle(batch, world.vocab_size, spoil_rows=half), batch) == pytest.approx(0.5)


def test_bad_task_input_raises_clear_errors():
    world = tk.World()
    with pytest.raises(ValueError, match="task must be one of"):
        world.eval_set("divide", "test")
    with pytest.raises(ValueError, match="split must be one of"):
        world.eval_set("copy", "dev")
    with pytest.raises(ValueError, match="n must be a positive int"):
        world.batch("copy", "train", 0, torch.Generator())
    with pytest.raises(ValueError, match="distinct keys"):
        tk.WorldConfig(n_symbols=4, key_length=1, n_facts=3)
    with pytest.raises(ValueError, match="tasks is empty"):
        world.batch([], "train", 4, torch.Generator())


# ---- pretraining and the checkpoint cache ----


def _cfg(**kw):
    base = dict(preset="micro", world=SMALL_WORLD, steps=12, batch_size=16, warmup=2, checkpoint_every=5)
    base.update(kw)
    return pt.PretrainConfig(**base)


def test_a_killed_pretraining_resumes_bit_for_bit(tmp_path):
    cfg = _cfg()
    straight = pt.pretrained(cfg, cache_dir=tmp_path / "a", progress=False)
    partial = pt.pretrained(cfg, cache_dir=tmp_path / "b", progress=False, stop_after=7)
    assert (tmp_path / "b" / f"{cfg.key}.partial.safetensors").exists()
    assert not pt.checkpoint_path(cfg, tmp_path / "b").exists()
    assert not all(torch.equal(p, q) for p, q in zip(straight.parameters(), partial.parameters()))
    resumed = pt.pretrained(cfg, cache_dir=tmp_path / "b", progress=False)
    assert pt.checkpoint_path(cfg, tmp_path / "b").exists()
    assert not (tmp_path / "b" / f"{cfg.key}.partial.safetensors").exists()
    for (n, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n


def test_a_checkpoint_does_not_depend_on_the_callers_thread_count(tmp_path):
    cfg = _cfg(preset="tiny", steps=12)  # tiny's matmuls are large enough for threads to change their rounding
    before = torch.get_num_threads()
    models = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            models.append(pt.pretrained(cfg, cache_dir=tmp_path / str(threads), progress=False))
        finally:
            torch.set_num_threads(before)
        assert torch.get_num_threads() == before  # pretraining gives the caller's thread count back
    for (n, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.equal(p, q), n


def test_two_callers_of_an_uncached_model_train_it_once(tmp_path, monkeypatch):
    """A lesson and a test worker asking at once: one trains, the other waits on the lock and loads its result."""
    cfg, calls, train = _cfg(), [], pt._train

    def counted(*args, **kwargs):
        calls.append(1)
        time.sleep(0.5)  # the other caller arrives while this one trains
        return train(*args, **kwargs)

    monkeypatch.setattr(pt, "_train", counted)
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: pt.pretrained(cfg, cache_dir=tmp_path, progress=False), range(2))
    assert len(calls) == 1
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), second.parameters()))
    assert pt.checkpoint_path(cfg, tmp_path).exists()


def test_the_cache_is_used_and_keyed_by_the_config(tmp_path, monkeypatch):
    cfg = _cfg()
    first = pt.pretrained(cfg, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(tk, "loss", lambda *a: pytest.fail("a cached model was retrained"))
    again = pt.pretrained(cfg, cache_dir=tmp_path, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), again.parameters()))
    assert _cfg(seed=1).key != cfg.key and _cfg(steps=13).key != cfg.key and _cfg(preset="tiny").key != cfg.key


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SUBNET_LAB_CACHE", str(tmp_path))
    assert pt.checkpoint_path(_cfg()).parent == tmp_path


def test_pretraining_learns_the_source_tasks(tmp_path):
    world = tk.World(SMALL_WORLD)
    model = pt.pretrained(_cfg(steps=200, batch_size=64, lr=3e-3, checkpoint_every=200), cache_dir=tmp_path,
                          progress=False)
    untrained = pt.build(_cfg(), world)
    assert tk.retention(untrained, world) == 0.0
    assert tk.retention(model, world) > 0.4
    assert tk.accuracy(model, world, "add2") == 0.0  # the targets are not in the mixture


def test_loading_a_checkpoint_into_another_model_fails_clearly(tmp_path):
    cfg = _cfg()
    pt.pretrained(cfg, cache_dir=tmp_path, progress=False)
    other = gpt.build("tiny", tk.World(SMALL_WORLD).vocab_size, tk.World(SMALL_WORLD).block_size)
    with pytest.raises(ValueError, match="holds a model of config"):
        pt.load_checkpoint(pt.checkpoint_path(cfg, tmp_path), other)
    with pytest.raises(ValueError, match="steps"):
        _cfg(steps=0)
    with pytest.raises(TypeError, match="PretrainConfig"):
        pt.pretrained("tiny", cache_dir=tmp_path)


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    schedule = pt.schedule(_cfg(steps=100, warmup=10, lr=1.0))
    lrs = [schedule(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert schedule(100) == pytest.approx(0.1)
    assert lrs == [cosine(1.0, 100, 10, floor=0.1)(s) for s in range(100)]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_bf16_autocast_on_cuda_matches_the_float32_cpu_model():
    cpu_model = gpt.build("micro", vocab_size=20, block_size=10)
    cuda_model = gpt.build("micro", vocab_size=20, block_size=10, device="cuda")
    idx = torch.randint(20, (4, 10))
    with gpt.autocast("cuda"):
        logits = cuda_model(idx.cuda())
    assert logits.dtype == torch.bfloat16 and cuda_model.tok_emb.weight.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(logits.float().cpu(), cpu_model(idx), atol=5e-2, rtol=5e-2)


def test_the_cache_key_hashes_every_digit_of_the_config():
    assert _cfg(lr=1e-3).key != _cfg(lr=1e-3 + 1e-12).key
    assert _cfg(weight_decay=0.01).key != _cfg(weight_decay=0.0100000001).key


@pytest.mark.parametrize("field, value", [("lr", float("inf")), ("lr", float("nan")), ("lr", 0.0),
                                          ("weight_decay", float("inf")), ("seed", -1)])
def test_nonfinite_or_negative_pretraining_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=f"PretrainConfig.{field}"):
        _cfg(**{field: value})


def test_a_cache_file_of_another_config_is_reported_and_rebuilt(tmp_path):
    cfg, other = _cfg(), _cfg(lr=2e-3)
    pt.pretrained(other, cache_dir=tmp_path, progress=False)
    # the other config's checkpoint, put where cfg's belongs (a renamed or copied cache file)
    pt.checkpoint_path(other, tmp_path).rename(pt.checkpoint_path(cfg, tmp_path))
    model = pt.build(cfg, tk.World(SMALL_WORLD))
    with pytest.raises(ValueError, match="was pretrained with config"):
        pt.load_checkpoint(pt.checkpoint_path(cfg, tmp_path), model, cfg=cfg)
    with pytest.warns(UserWarning, match="discarding the cached checkpoint"):
        rebuilt = pt.pretrained(cfg, cache_dir=tmp_path, progress=False)
    fresh = pt.pretrained(cfg, cache_dir=tmp_path / "fresh", progress=False)
    assert all(torch.equal(p, q) for p, q in zip(rebuilt.parameters(), fresh.parameters()))


@pytest.mark.parametrize("damage", ["truncate", "nan"])
def test_a_truncated_or_nonfinite_cache_file_is_reported_with_its_path_and_rebuilt(tmp_path, damage):
    cfg = _cfg()
    good = pt.pretrained(cfg, cache_dir=tmp_path, progress=False)
    path = pt.checkpoint_path(cfg, tmp_path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        broken = pt.build(cfg, tk.World(SMALL_WORLD))
        with torch.no_grad():
            for p, q in zip(broken.parameters(), good.parameters()):
                p.copy_(q)
        # written behind save_checkpoint's back, which refuses non-finite weights
        tensors = {f"model::{n}": p.detach().clone() for n, p in broken.named_parameters()}
        next(iter(tensors.values()))[0] = float("nan")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        save_file(tensors, str(path), metadata=meta)
    with pytest.warns(UserWarning, match=f"discarding the cached checkpoint.*{path.name}"):
        again = pt.pretrained(cfg, cache_dir=tmp_path, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(good.parameters(), again.parameters()))


def test_a_diverged_run_is_not_cached(tmp_path):
    cfg = _cfg(lr=1e6, warmup=0)
    with pytest.raises(FloatingPointError):
        pt.pretrained(cfg, cache_dir=tmp_path, progress=False)
    assert not pt.checkpoint_path(cfg, tmp_path).exists()
    model = pt.build(cfg, tk.World(SMALL_WORLD))
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")
    with pytest.raises(FloatingPointError, match="is not finite"):
        pt.save_checkpoint(tmp_path / "x.safetensors", model, cfg, 3)


def test_a_save_leaves_the_file_another_process_is_writing_alone(tmp_path):
    """Parallel test workers (and lessons run side by side) share a cache: each writer has its own temporary file."""
    cfg = _cfg()
    model = pt.build(cfg, tk.World(SMALL_WORLD))
    path = tmp_path / "model.safetensors"
    others = [tmp_path / "model.safetensors.tmp", tmp_path / "model.tmp", tmp_path / "model.safetensors.1.tmp"]
    for other in others:
        other.write_bytes(b"another process is writing this")
    pt.save_checkpoint(path, model, cfg, 3)
    assert [o.read_bytes() for o in others] == [b"another process is writing this"] * len(others)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, *(o.name for o in others)])
    loaded = pt.build(cfg, tk.World(SMALL_WORLD))
    pt.load_checkpoint(path, loaded)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), loaded.parameters()))


def test_graded_scores_agree_with_exact_match_and_move_before_it():
    world = tk.World(SMALL_WORLD)
    model = gpt.build("micro", world.vocab_size, world.block_size, seed=0)
    batch = world.eval_set("copy", "test")
    s = tk.scores(model, batch)
    assert s.exact == tk.exact_match(model, batch)
    with torch.no_grad():
        assert s.nll == pytest.approx(tk.loss(model, batch).item(), rel=1e-5)
        pred = model(batch.idx).argmax(-1)
    scored = batch.targets != tk.IGNORE
    assert s.token == pytest.approx(float((pred == batch.targets)[scored].float().mean()))
    # one wrong token in every answer: exact match drops to 0, per-token accuracy only a little
    perfect = tk.Batch(batch.idx, torch.where(scored, pred, batch.targets))
    assert tk.scores(model, perfect).exact == 1.0 and tk.scores(model, perfect).token == 1.0
    first = scored.float().argmax(1)
    spoiled = perfect.targets.clone()
    spoiled[torch.arange(len(spoiled)), first] = (spoiled[torch.arange(len(spoiled)), first] + 1) % world.vocab_size
    worse = tk.scores(model, tk.Batch(batch.idx, spoiled))
    assert worse.exact == 0.0 and worse.token == pytest.approx(1 - 1 / world.config.length, abs=0.02)
