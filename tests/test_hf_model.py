"""Hugging Face causal LMs through SparseConfig + sparsify: which parameters the budget spends on
(embeddings, norms and the head left out), GPT-2's Conv1D [in, out] layout under N:M and LIFT,
name-pattern targets, and the loading errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from hf_cases import saved  # noqa: E402

from sparsity import SparseConfig, criteria, masks, sparsify  # noqa: E402
from sparsity.eligibility import input_axes, parameter_kinds  # noqa: E402
from sparsity.hf import FAMILIES, describe, load_causal_lm, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, nn.Module]:
    root = tmp_path_factory.mktemp("hf")
    return {f: load_causal_lm(saved(f, root / f)) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_budget_spends_on_block_matrices_only(family: str, models: dict[str, nn.Module]) -> None:
    model = models[family]
    head = model.get_output_embeddings().weight
    kinds = parameter_kinds(model)
    head_names = [n for n, p in model.named_parameters() if p is head]
    assert head_names and all(kinds[n] == "embedding" for n in head_names)
    run = sparsify(model, SparseConfig(criterion="magnitude", density=0.1))
    for name, m in run.mask.items():
        assert bool(m.any()) == (kinds[name] == "weight"), name
        assert m.any() or not dict(model.named_parameters())[name].requires_grad
    assert all(not run.mask[n].any() for n, k in kinds.items() if k in ("norm", "embedding"))
    with_head = sparsify(model, SparseConfig(criterion="magnitude", density=0.1, include=("weight", "embedding")))
    assert all(with_head.mask[n].any() for n in head_names)


def test_conv1d_input_axis_and_n_m_groups_run_along_it(models: dict[str, nn.Module]) -> None:
    model = models["gpt2"]
    axes = input_axes(model)
    assert axes["transformer.h.0.attn.c_attn.weight"] == 0 and axes["transformer.wte.weight"] == 1
    assert describe(model)["transformer.h.0.mlp.c_fc.weight"] == {"kind": "weight", "shape": [32, 128], "input_axis": 0}
    mask = sparsify(model, SparseConfig(criterion="magnitude", n_m=(2, 4))).mask
    for name in (n for n, k in parameter_kinds(model).items() if k == "weight"):
        w = dict(model.named_parameters())[name]
        per_group = mask[name].T.reshape(-1, 4).sum(1)  # rows of W.T = outputs, groups along the inputs
        assert (per_group == 2).all(), name
        assert not (mask[name].reshape(-1, 4).sum(1) == 2).all(), f"{name}: grouped along the output axis"
        linear = nn.Linear(w.shape[0], w.shape[1], bias=False)  # the same layer stored [out, in]
        linear.weight.data.copy_(w.detach().T)
        same = masks.n_m(linear, criteria.magnitude(linear), 2, 4)["weight"]
        assert torch.equal(same, mask[name].T), name


def test_lift_on_conv1d_is_lift_on_the_linear_transpose(models: dict[str, nn.Module]) -> None:
    model = models["gpt2"]
    scores = criteria.lift(model, rank=4)
    for name, s in scores.items():
        w = dict(model.named_parameters())[name]
        linear = nn.Linear(w.shape[0], w.shape[1], bias=False)
        linear.weight.data.copy_(w.detach().T)
        torch.testing.assert_close(criteria.lift(linear, rank=4)["weight"], s.T, atol=1e-6, rtol=1e-5)
        assert s.shape == w.shape


def test_targets_narrow_the_budget_by_name_pattern(models: dict[str, nn.Module]) -> None:
    model = models["llama"]
    run = sparsify(model, SparseConfig(criterion="magnitude", density=0.1, targets=("*.mlp.*",)))
    selected = {n for n, m in run.mask.items() if m.any()}
    assert selected == {n for n, _ in model.named_parameters() if ".mlp." in n}
    with pytest.raises(ValueError, match="pattern '\\*.nowhere.\\*' matches no parameter"):
        sparsify(model, SparseConfig(criterion="magnitude", targets=("*.nowhere.*",)))
    with pytest.raises(ValueError, match="targets .* match no parameter of the kinds"):
        sparsify(model, SparseConfig(criterion="magnitude", targets=("*norm*",)))
    with pytest.raises(ValueError, match="targets must be a non-empty tuple"):
        SparseConfig(targets=["*.mlp.*"])


def test_loading_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_causal_lm(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_causal_lm(tmp_path / "empty")
    folder = saved("gpt2", tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_causal_lm(folder)
    with pytest.raises(ValueError, match="family must be one of"):
        tiny_config("bert")
    with pytest.raises(ValueError, match="divisible by n_heads"):
        tiny_config("gpt2", d_model=30, n_heads=4)
