"""The inspector on hostile pairs: infinities equal in both files are unchanged, NaN is counted apart
(never "updated"), unreadable files and indexes name BEFORE or AFTER, and ``--params-only`` counts
what ``named_parameters()`` counts, as the RL-sparsity authors' ``check_sparsity`` does."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsity import inspect as inspector

INF = math.inf


def _pair(tmp_path: Path, before: torch.Tensor, after: torch.Tensor) -> tuple[Path, Path]:
    save_file({"w": before, "b": torch.zeros(3)}, tmp_path / "before.safetensors")
    save_file({"w": after, "b": torch.zeros(3)}, tmp_path / "after.safetensors")
    return tmp_path / "before.safetensors", tmp_path / "after.safetensors"


def test_identical_files_with_infinities_are_fully_unchanged(tmp_path: Path) -> None:
    w = torch.tensor([[INF, -INF, 1.0], [2.0, 3.0, INF]])
    report = inspector.inspect(*_pair(tmp_path, w, w.clone()))
    assert report.overall == 1.0 and report.nonfinite == 0
    assert {t.name: t.sparsity for t in report.tensors} == {"w": 1.0, "b": 1.0}


def test_nan_is_counted_apart_and_never_updated(tmp_path: Path) -> None:
    before = torch.tensor([[1.0, 2.0, 3.0], [4.0, INF, 6.0]])
    after = torch.tensor([[1.0, math.nan, 3.5], [math.nan, -INF, 6.0]])
    report = inspector.inspect(*_pair(tmp_path, before, after))
    w = next(t for t in report.tensors if t.name == "w")
    assert (w.entries, w.unchanged, w.nonfinite) == (6, 2, 3)  # 1.0 and 6.0 unchanged; 3 -> 3.5 updated
    assert w.sparsity == 2 / 3 and w.rank is None
    assert report.nonfinite == 3 and report.overall == (2 + 3) / (9 - 3)
    table = report.table()
    assert "non-finite entries" in table and "w (3)" in table
    assert report.to_dict()["nonfinite"] == 3

    all_nan = inspector.inspect(*_pair(tmp_path, before, torch.full_like(before, math.nan)))
    w = next(t for t in all_nan.tensors if t.name == "w")
    assert w.sparsity is None and w.nonfinite == 6 and w.unchanged == 0
    assert "| w | 1 | 6 | - |" in all_nan.table()


def test_unreadable_files_and_indexes_name_before_or_after(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(2)}, good)
    text = tmp_path / "text.safetensors"
    text.write_text("not a safetensors file at all")
    with pytest.raises(ValueError, match="BEFORE: .*text.safetensors is not a readable safetensors file"):
        inspector.inspect(text, good)
    with pytest.raises(ValueError, match="AFTER: .*text.safetensors is not a readable safetensors file"):
        inspector.inspect(good, text)
    for name, content, match in (("bad", "{oops", "is not valid JSON"), ("list", "[1]", "must hold a JSON object"),
                                 ("nomap", '{"weight_map": [1]}', "has no weight_map")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.safetensors.index.json").write_text(content)
        with pytest.raises(ValueError, match=f"AFTER: .*index.json {match}"):
            inspector.inspect(good, folder)
    shard_folder = tmp_path / "shards"
    shard_folder.mkdir()
    (shard_folder / "model.safetensors").write_text("garbage")
    with pytest.raises(ValueError, match="BEFORE: .*model.safetensors is not a readable safetensors file"):
        inspector.inspect(shard_folder, shard_folder)


def _with_extra(folder: Path, extra: dict[str, torch.Tensor]) -> None:
    file = folder / "model.safetensors"
    tensors = load_file(file)
    save_file({**tensors, **extra}, file, metadata={"format": "pt"})


def test_params_only_counts_what_named_parameters_counts(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from hf_cases import saved

    from sparsity.hf import load_causal_lm

    before = saved("llama", tmp_path / "before")
    model = load_causal_lm(before)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            if i % 2:
                p.view(-1)[: p.numel() // 3] += 0.01
    model.save_pretrained(tmp_path / "after")
    after = tmp_path / "after"
    # an older Llama checkpoint holds its rotary buffer; here it differs between the two files
    _with_extra(before, {"model.rotary_emb.inv_freq": torch.rand(4)})
    _with_extra(after, {"model.rotary_emb.inv_freq": torch.rand(4) + 1})

    a, b = dict(load_causal_lm(before).named_parameters()), dict(load_causal_lm(after).named_parameters())
    unchanged = sum(int(((b[n].detach().bfloat16().float() - a[n].detach().bfloat16().float()).abs() <= 1e-5).sum())
                    for n in a)
    authors = unchanged / sum(p.numel() for p in a.values())  # check_sparsity's count, over named_parameters()

    every = inspector.inspect(before, after, dtype=torch.bfloat16, rank=False)
    params = inspector.inspect(before, after, dtype=torch.bfloat16, rank=False, params_only=True)
    assert "model.rotary_emb.inv_freq" in {t.name for t in every.tensors}
    assert {t.name for t in params.tensors} == set(a)
    assert abs(params.overall - authors) < 1e-12 and every.overall != params.overall
    with pytest.raises(ValueError, match="--params-only needs two Hugging Face model folders"):
        inspector.inspect(before / "model.safetensors", after / "model.safetensors", params_only=True)


def test_params_only_counts_a_tied_weight_once(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from hf_cases import saved

    folder = saved("gpt2", tmp_path / "gpt2")
    wte = load_file(folder / "model.safetensors")["transformer.wte.weight"]
    _with_extra(folder, {"lm_head.weight": wte.clone()})
    every = inspector.inspect(folder, folder, rank=False)
    params = inspector.inspect(folder, folder, rank=False, params_only=True)
    assert "lm_head.weight" in {t.name for t in every.tensors}
    assert "lm_head.weight" not in {t.name for t in params.tensors}
    out = json.loads(json.dumps(params.to_dict()))
    assert out["params_only"] is True and out["nonfinite"] == 0
