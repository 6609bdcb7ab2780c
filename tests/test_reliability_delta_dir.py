"""Delta folders fingerprint their base: merge refuses another model of the same shapes and a second
merge, unmerge refuses a model the delta is not merged into (``force`` / ``--force`` override);
old folders without a fingerprint load with a warning; a tampered ``sparse_delta.json`` is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsity import SparseConfig, delta_dir, fit, sparsify
from sparsity.regularize import snapshot


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def _delta(tmp_path: Path) -> tuple[Path, nn.Module, nn.Module]:
    """(delta folder, the base model, the fine-tuned model)."""
    base, model = _model(), _model()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
    run = sparsify(model, SparseConfig("magnitude", density=0.3, lr=1e-2))
    fit(model, run.optimizer, lambda m, b: nn.functional.mse_loss(m(x), y), 5)
    return delta_dir.save_run(run, tmp_path / "delta"), base, model


def _same(a: nn.Module, b: nn.Module) -> bool:
    other = dict(b.named_parameters())
    return all(torch.equal(p, other[n]) for n, p in a.named_parameters())


def test_merge_refuses_another_base_and_a_second_merge_unless_forced(tmp_path: Path) -> None:
    folder, base, tuned = _delta(tmp_path)
    with pytest.raises(ValueError, match="this model is not the delta's base .*holds other values"):
        delta_dir.merge(_model(seed=7), folder)
    delta_dir.merge(base, folder)
    assert _same(base, tuned)
    with pytest.raises(ValueError, match="already merged into this model .*a second merge would add it twice"):
        delta_dir.merge(base, folder)
    assert _same(base, tuned), "the refused merge changed the model"
    delta_dir.merge(base, folder, force=True)
    assert not _same(base, tuned)


def test_unmerge_refuses_a_model_the_delta_is_not_merged_into(tmp_path: Path) -> None:
    folder, base, tuned = _delta(tmp_path)
    before = snapshot(base)
    with pytest.raises(ValueError, match="not merged into this model .*nothing to unmerge"):
        delta_dir.unmerge(base, folder)
    with pytest.raises(ValueError, match="not the delta's base with the delta merged"):
        delta_dir.unmerge(_model(seed=7), folder)
    delta_dir.unmerge(tuned, folder)
    assert all(torch.equal(p, before[n]) for n, p in tuned.named_parameters())
    delta_dir.unmerge(base, folder, force=True)
    assert not all(torch.equal(p, before[n]) for n, p in base.named_parameters())


def test_a_folder_without_a_fingerprint_loads_with_a_warning(tmp_path: Path) -> None:
    folder, base, tuned = _delta(tmp_path)
    info = json.loads((folder / delta_dir.CONFIG).read_text())
    del info["fingerprint"]
    (folder / delta_dir.CONFIG).write_text(json.dumps(info))
    with pytest.warns(UserWarning, match="no fingerprint of its base"):
        loaded = delta_dir.load(folder)
    delta_dir.merge(base, loaded)
    assert _same(base, tuned)


@pytest.mark.parametrize(("tamper", "match"), [
    (lambda i: i.update(tensors=list(i["tensors"])), "'tensors' must map each tensor name"),
    (lambda i: next(iter(i["tensors"].values())).pop("dtype"), r"tensors\['0.weight'\].dtype must name a torch dtype"),
    (lambda i: next(iter(i["tensors"].values())).update(dtype="float99"), "got 'float99'"),
    (lambda i: i.update(dtype="nope"), "'dtype' must name a torch dtype"),
    (lambda i: next(iter(i["tensors"].values())).update(shape="12x6"), r"shape must be a list of ints"),
    (lambda i: i["fingerprint"]["base"].popitem(), "'fingerprint' must hold 'base' and 'merged' hashes"),
])
def test_a_tampered_description_names_the_file_and_field(tmp_path: Path, tamper, match: str) -> None:
    folder, _, _ = _delta(tmp_path)
    info = json.loads((folder / delta_dir.CONFIG).read_text())
    tamper(info)
    (folder / delta_dir.CONFIG).write_text(json.dumps(info))
    with pytest.raises(ValueError, match=f"sparse_delta.json: .*{match}"):
        delta_dir.load(folder)


def test_cli_refuses_a_second_merge_and_force_overrides(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from hf_cases import finetuned, saved

    from sparsity.hf import load_causal_lm

    base = saved("gpt2", tmp_path / "base")
    model, run = finetuned(base, SparseConfig(criterion="magnitude", density=0.05, lr=1e-2), steps=2)
    delta_dir.save_run(run, tmp_path / "delta")
    delta_dir.main(["merge", str(base), str(tmp_path / "delta"), str(tmp_path / "merged")])
    with pytest.raises(ValueError, match="already merged"):
        delta_dir.main(["merge", str(tmp_path / "merged"), str(tmp_path / "delta"), str(tmp_path / "twice")])
    with pytest.raises(ValueError, match="not merged into this model"):
        delta_dir.main(["unmerge", str(base), str(tmp_path / "delta"), str(tmp_path / "un")])
    delta_dir.main(["merge", str(tmp_path / "merged"), str(tmp_path / "delta"), str(tmp_path / "twice"), "--force"])
    assert not _same(load_causal_lm(tmp_path / "twice"), model)
