"""The controlled benchmark on a Hugging Face architecture (``scaleup.hf_model``): every method runs
on a micro GPT-2 end to end with the rows the lab's GPT gives, LoRA goes through PEFT and changes
only the matrices it targets, the pretrained model comes back through ``from_pretrained``, layer
types and blocks are read from GPT-2, Llama and GPT-NeoX names, 2:4 groups along Conv1D's input
axis, and a bad ``--model`` is a clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from scaleup import compare, hf_model  # noqa: E402
from scaleup import pretrain as pt  # noqa: E402
from scaleup import tasks as tk  # noqa: E402
from scaleup import results as res  # noqa: E402
from scaleup.bench_config import MICRO_WORLD, BenchConfig, Setup, prepare  # noqa: E402
from scaleup.finetune import finetune, select  # noqa: E402
from scaleup.layers import LAYER_TYPES, block_names, layer_type  # noqa: E402
from scaleup.method_dynamic import LiftSettings  # noqa: E402
from scaleup.methods import METHODS  # noqa: E402
from sparsity.eligibility import input_axes, parameter_kinds  # noqa: E402
from sparsity.hf import FAMILIES, tiny_config  # noqa: E402

MICRO = dict(preset="micro", world=MICRO_WORLD, steps=6, warmup=1, seeds=1, densities=(), pretrain_steps=20,
             lrs_full=(3e-3,), lrs_sparse=(3e-2,), lrs_lora=(3e-2,), score_batches=1, lift=LiftSettings(reselect_every=3),
             eval_every=3)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every default method on a micro hf-gpt2, and full + lora on the lab's micro GPT, same settings."""
    root = tmp_path_factory.mktemp("hf_bench")
    cfg = BenchConfig(model="hf-gpt2", **MICRO)
    with mock.patch.object(peft, "get_peft_model", wraps=peft.get_peft_model) as spy:
        compare.run(cfg, root / "hf", METHODS, cache_dir=root / "cache", progress=False)
    compare.run(BenchConfig(**MICRO), root / "gpt", ["full", "lora"], cache_dir=root / "cache", progress=False)
    return dict(root=root, cfg=cfg, peft_calls=spy.call_count, hf=res.load_results(root / "hf"),
                gpt=res.load_results(root / "gpt"))


@pytest.fixture(scope="module")
def setup(bench: dict[str, Any]) -> Setup:
    return prepare(bench["cfg"], cache_dir=bench["root"] / "cache", progress=False)


def test_every_method_runs_with_the_lab_gpts_row_keys(bench: dict[str, Any]) -> None:
    rows = bench["hf"]
    assert sorted({r["method"] for r in rows.values()}) == sorted(METHODS)
    assert not any(r["diverged"] and "target_test" not in r for r in rows.values())
    for method in ("full", "lora"):
        hf_row = next(r for r in rows.values() if r["method"] == method)
        gpt_row = next(r for r in bench["gpt"].values() if r["method"] == method)
        assert set(hf_row) == set(gpt_row)
        assert set(hf_row["update_sparsity"]) == set(gpt_row["update_sparsity"])
        assert [p["step"] for p in hf_row["trace"]] == [3, 6]
    assert (bench["root"] / "hf" / "summary.json").exists()


def test_pretrained_model_is_a_save_pretrained_folder_loaded_back(bench: dict[str, Any], setup: Setup) -> None:
    folder = pt.checkpoint_path(bench["cfg"].pretrain, bench["root"] / "cache")
    assert folder.name.startswith("hf-gpt2-micro-") and (folder / "config.json").is_file()
    assert (folder / "model.safetensors").is_file() and (folder / hf_model.NOTE).is_file()
    assert isinstance(setup.pretrained, hf_model.CausalLM)
    assert setup.pretrained.hf.config.vocab_size == tk.World(MICRO_WORLD).vocab_size
    assert setup.pretrained.hf.config.n_positions == tk.World(MICRO_WORLD).block_size
    # a folder of another pretraining config is refused and rebuilt, never used
    (folder / hf_model.NOTE).write_text(json.dumps({"config": "{}", "code_version": "0"}))
    with pytest.warns(UserWarning, match="discarding the cached model folder"):
        again = pt.pretrained(bench["cfg"].pretrain, cache_dir=bench["root"] / "cache", progress=False)
    for (n, p), q in zip(again.named_parameters(), setup.pretrained.parameters(), strict=True):
        assert torch.equal(p, q), n


def test_lora_goes_through_peft_and_changes_only_the_targeted_matrices(bench: dict[str, Any], setup: Setup) -> None:
    assert bench["peft_calls"] == 2  # the one lora run of the sweep, and rosa's adapter
    model, costs = finetune(setup, "lora", "lora_equal", 3e-2, 0)
    assert not isinstance(model.hf, peft.PeftModel)  # merged and unloaded
    names = [n for n, _ in model.named_parameters()]
    assert names == list(setup.reference)
    targets = {f"{hf_model.PREFIX}.{t}.weight" for t in hf_model.lora_targets(setup.pretrained)}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, setup.reference[n])}
    assert changed == targets
    assert costs["trainable"] == sum(4 * sum(setup.reference[t].shape) for t in targets)  # r * (in + out)


def test_rosa_adds_its_adapter_through_peft_at_lora_s_count(setup: Setup) -> None:
    mask, _ = select(setup, "rosa", "lora_equal", 0)
    model, costs = finetune(setup, "rosa", "lora_equal", 3e-2, 0)
    assert not isinstance(model.hf, peft.PeftModel) and [n for n, _ in model.named_parameters()] == list(setup.reference)
    targets = {f"{hf_model.PREFIX}.{t}.weight" for t in hf_model.lora_targets(setup.pretrained)}
    assert costs["trainable"] == sum(4 * sum(setup.reference[t].shape) for t in targets)  # LoRA's r * (in + out)
    assert sum(int(m.sum()) for m in mask.values()) == sum(2 * sum(setup.reference[t].shape) for t in targets)


def test_middle_blocks_and_two_four_on_conv1d(setup: Setup) -> None:
    blocks = block_names(setup.pretrained)
    assert blocks == ["hf.transformer.h.0", "hf.transformer.h.1"]
    mask, _ = select(setup, "middle_blocks", "lora_equal", 0)
    assert all(not m.any() for n, m in mask.items() if not n.startswith("hf.transformer.h.1."))
    assert sum(int(m.sum()) for m in mask.values()) > 0
    mask, _ = select(setup, "2:4", "2:4", 0)
    axes = input_axes(setup.pretrained)
    chosen = {n: m for n, m in mask.items() if m.any()}
    assert chosen and all(axes[n] == 0 for n in chosen)  # every block matrix is a Conv1D [in, out]
    for m in chosen.values():
        groups = m.movedim(0, -1).reshape(-1, 4)  # groups of 4 consecutive inputs
        assert (groups.sum(1) == 2).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_type_maps_every_parameter(family: str) -> None:
    model = hf_model.build(f"hf-{family}", "micro", vocab_size=16, block_size=12)
    kinds = parameter_kinds(model)
    types = {n: layer_type(n) for n in kinds}
    assert set(types.values()) == set(LAYER_TYPES)
    for n, kind in kinds.items():
        assert (kind == "embedding") == (types[n] == "embedding"), n
        assert (kind == "norm") == (types[n] == "norm"), n
    assert len(block_names(model)) == 2
    with pytest.raises(ValueError, match="hf.model.layers.0.mystery.weight"):
        layer_type("hf.model.layers.0.mystery.weight")


def test_model_from_a_local_folder_or_config_json(tmp_path: Path) -> None:
    tiny_config("llama").save_pretrained(tmp_path / "llama")
    world = tk.World(MICRO_WORLD)
    for name in (str(tmp_path / "llama"), str(tmp_path / "llama" / "config.json")):
        config = hf_model.hf_config(name, "tiny", world.vocab_size, world.block_size)
        assert (config.model_type, config.vocab_size) == ("llama", world.vocab_size)
        assert config.max_position_embeddings == world.block_size
        assert BenchConfig(model=name, **MICRO).pretrain.key.startswith("hf-llama-micro-")
    args = compare.build_parser().parse_args(["--model", str(tmp_path / "llama"), "--out", str(tmp_path / "out")])
    assert compare._overrides(args)["model"] == str(tmp_path / "llama")
    # a Llama from the folder's config, end to end: PEFT on nn.Linear (fan_in_fan_out off), untied head frozen
    cfg = BenchConfig(model=str(tmp_path / "llama"), **MICRO)
    compare.run(cfg, tmp_path / "out", ["lora", "lift"], cache_dir=tmp_path / "cache", progress=False)
    rows = res.load_results(tmp_path / "out")
    assert {r["method"] for r in rows.values() if "target_test" in r} == {"lora", "lift"}
    assert all(r["update_sparsity"]["embedding"] == 1.0 for r in rows.values())


def test_bad_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(SystemExit):
        compare.main(["--model", str(missing), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "argument --model" in err and str(missing) in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="BenchConfig.model.*no config.json"):
        BenchConfig(model=str(tmp_path / "empty"))
    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "config.json").write_text(json.dumps({"model_type": "gpt2", "auto_map": {}}))
    with pytest.raises(ValueError, match="auto_map"):
        BenchConfig(model=str(tmp_path / "remote"))


def test_the_lab_gpts_config_and_checkpoint_key_leave_the_field_out() -> None:
    """The default model adds nothing to a results folder's config or a checkpoint's key: folders and
    caches written before the field still match."""
    assert "model" not in BenchConfig().to_json()
    assert "model" not in json.loads(pt.PretrainConfig().as_json())
    assert pt.PretrainConfig().key.startswith("gpt-tiny-")
