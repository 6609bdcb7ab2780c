"""The update-sparsity inspector on saved Hugging Face checkpoints: it agrees with
sparsity.metrics on the same pair, streams in chunks and shards with the same result, and
refuses pairs that are not two checkpoints of one model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("transformers")

from hf_cases import finetuned, saved  # noqa: E402

from sparsity import SparseConfig  # noqa: E402
from sparsity import inspect as inspector  # noqa: E402
from sparsity.hf import load_causal_lm  # noqa: E402
from sparsity.metrics import update_rank, update_sparsity  # noqa: E402
from sparsity.regularize import snapshot  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A Llama checkpoint and a sparse fine-tune of it (30% of the matrices, the rest untouched)."""
    root = tmp_path_factory.mktemp("pair")
    base = saved("llama", root / "before")
    model, _ = finetuned(base, SparseConfig(criterion="magnitude", density=0.3, lr=1e-3), steps=3)
    model.save_pretrained(root / "after")
    return base, root / "after"


@pytest.mark.parametrize(("tol", "dtype"), [(1e-5, torch.bfloat16), (1e-5, None), (0.0, None), (1e-3, torch.float16)])
def test_agrees_with_update_sparsity_and_update_rank(pair: tuple[Path, Path], tol: float, dtype) -> None:
    before, after = load_causal_lm(pair[0]), load_causal_lm(pair[1])
    want = update_sparsity(after, snapshot(before), tol=tol, dtype=dtype)
    report = inspector.inspect(*pair, tol=tol, dtype=dtype)
    assert {t.name for t in report.tensors} == set(want.per_tensor)
    assert report.overall == want.overall
    for t in report.tensors:
        assert t.sparsity == want.per_tensor[t.name], t.name
    assert 0.05 < report.overall < 0.95, "the pair should be neither untouched nor dense"
    a, b = dict(before.named_parameters()), dict(after.named_parameters())
    for t in report.tensors:
        if len(t.shape) == 2:
            x, y = a[t.name].detach(), b[t.name].detach()
            if dtype is not None:
                x, y = x.to(dtype), y.to(dtype)
            assert t.rank == update_rank(y.float() - x.float()), t.name


def test_chunks_shards_and_sampled_ranks_give_the_same_counts(pair: tuple[Path, Path], tmp_path: Path) -> None:
    whole = inspector.inspect(*pair, dtype=torch.bfloat16)
    sharded = tmp_path / "sharded"
    load_causal_lm(pair[1]).save_pretrained(sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    streamed = inspector.inspect(pair[0], sharded, dtype=torch.bfloat16, chunk_bytes=256)
    assert [(t.name, t.unchanged, t.rank) for t in streamed.tensors] == [(t.name, t.unchanged, t.rank)
                                                                          for t in whole.tensors]
    sampled = inspector.inspect(*pair, rank_rows=8)
    full = {t.name: t for t in whole.tensors}
    for t in sampled.tensors:
        if t.rank is not None:
            assert t.rank_rows == min(8, t.shape[0]) and t.rank <= min(full[t.name].rank, 8)
    norms = [row for name, row in whole.per_type().items() if "norm" in name]
    assert norms and all(row["sparsity"] == 1.0 for row in norms), "norms are frozen: no update"


def test_cli_table_and_json(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    inspector.main([str(pair[0]), str(pair[1]), "--dtype", "bfloat16", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["dtype"] == "bfloat16" and out["tol"] == 1e-5
    assert out["overall_sparsity"] == inspector.inspect(*pair, dtype=torch.bfloat16).overall
    assert "model.layers.*.mlp.up_proj.weight" in out["per_type"]
    inspector.main([str(pair[0]), str(pair[1]), "--no-rank"])
    table = capsys.readouterr().out
    assert "| model.layers.*.self_attn.q_proj.weight | 2 |" in table and "overall update sparsity" in table
    with pytest.raises(SystemExit):
        inspector.main([str(pair[0]), str(pair[1]), "--dtype", "int8"])
    assert "not a floating torch dtype" in capsys.readouterr().err


def test_refuses_pairs_that_are_not_one_model(pair: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="AFTER: .* does not exist"):
        inspector.inspect(pair[0], tmp_path / "nowhere")
    gpt2 = saved("gpt2", tmp_path / "gpt2")
    with pytest.raises(ValueError, match="'llama' model and AFTER a 'gpt2' model"):
        inspector.inspect(pair[0], gpt2)
    save_file({"w": torch.zeros(2, 2)}, tmp_path / "a.safetensors")
    save_file({"v": torch.zeros(2, 2)}, tmp_path / "b.safetensors")
    save_file({"w": torch.zeros(2, 3)}, tmp_path / "c.safetensors")
    save_file({"w": torch.zeros(2, 2, dtype=torch.bfloat16)}, tmp_path / "d.safetensors")
    with pytest.raises(ValueError, match="different tensors"):
        inspector.inspect(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match="shape \\[2, 2\\] in BEFORE and \\[2, 3\\] in AFTER"):
        inspector.inspect(tmp_path / "a.safetensors", tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="F32 in BEFORE and BF16 in AFTER: pass --dtype"):
        inspector.inspect(tmp_path / "a.safetensors", tmp_path / "d.safetensors")
    both = inspector.inspect(tmp_path / "a.safetensors", tmp_path / "d.safetensors", dtype=torch.bfloat16)
    assert both.overall == 1.0
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="holds no .safetensors file"):
        inspector.inspect(tmp_path / "bin", tmp_path / "bin")
    with pytest.raises(ValueError, match="not a .safetensors file"):
        inspector.inspect(tmp_path / "bin" / "pytorch_model.bin", tmp_path / "a.safetensors")


def test_memory_benchmark_fast_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import inspect_memory

    monkeypatch.setenv("LAB_FAST", "1")
    out = tmp_path / "inspect_memory.md"
    assert inspect_memory.main(["--modes", "no-rank", "--out", str(out)]) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| no-rank |"))
    assert row.rstrip().endswith("| yes |"), row  # the inspector counted exactly the planted unchanged entries
    with pytest.raises(SystemExit):
        inspect_memory.main(["--modes", "everything"])
