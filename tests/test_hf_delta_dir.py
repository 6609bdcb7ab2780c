"""Sparse delta folders on Hugging Face models: save, load, merge into a fresh from_pretrained
model bit for bit, unmerge, the command line, and refusals of a model the delta is not for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from hf_cases import finetuned, saved  # noqa: E402

from sparsity import SparseConfig, delta_dir  # noqa: E402
from sparsity.hf import FAMILIES, load_causal_lm  # noqa: E402
from sparsity.regularize import snapshot  # noqa: E402

CONFIG = SparseConfig(criterion="gradient", density=0.05, weight_decay=0.1, lr=1e-2)


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_into_fresh_model_is_bit_exact_and_unmerge_restores_base(family: str, tmp_path: Path) -> None:
    base = saved(family, tmp_path / "base")
    model, run = finetuned(base, CONFIG)
    folder = delta_dir.save_run(run, tmp_path / "delta")
    info = json.loads((folder / delta_dir.CONFIG).read_text())
    assert info["base_model"] == str(base) and info["model_type"] == model.config.model_type
    assert info["criterion"] == "gradient" and info["budget"] == "density 0.05" and info["dtype"] == "float32"
    assert info["entries"] == sum(int(m.sum()) for m in run.mask.values())

    fresh = load_causal_lm(base)
    before = snapshot(fresh)
    delta_dir.merge(fresh, folder)
    tuned = dict(model.named_parameters())
    changed = 0
    for name, p in fresh.named_parameters():
        assert (p.detach() - tuned[name].detach()).abs().max().item() == 0, name
        changed += int((p.detach() != before[name]).sum())
    assert changed > 0.5 * info["entries"], "the fine-tune moved almost nothing: the check would be empty"
    delta_dir.unmerge(fresh, folder)
    for name, p in fresh.named_parameters():
        assert torch.equal(p.detach(), before[name]), name


def test_cli_merges_into_a_saved_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = saved("gpt2", tmp_path / "base")
    model, run = finetuned(base, CONFIG)
    delta_dir.save_run(run, tmp_path / "delta")
    out = tmp_path / "merged"
    argv = ["merge", str(base), str(tmp_path / "delta"), str(out)]
    delta_dir.main(argv)
    assert "merged" in capsys.readouterr().out
    merged = dict(load_causal_lm(out).named_parameters())
    for name, p in model.named_parameters():
        assert (merged[name].detach() - p.detach()).abs().max().item() == 0, name
    with pytest.raises(SystemExit):
        delta_dir.main(argv)
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="model: .*does not exist"):
        delta_dir.main(["merge", str(tmp_path / "nowhere"), str(tmp_path / "delta"), str(tmp_path / "x")])


def test_refuses_a_model_of_other_shapes_type_dtype_or_layout(tmp_path: Path) -> None:
    base = saved("llama", tmp_path / "base")
    _, run = finetuned(base, CONFIG)
    folder = delta_dir.save_run(run, tmp_path / "delta")
    other = load_causal_lm(saved("gpt2", tmp_path / "gpt2"))
    with pytest.raises(ValueError, match="'llama' model.*this model is 'gpt2'"):
        delta_dir.merge(other, folder)
    with pytest.raises(ValueError, match="taken in float32, this model's is bfloat16"):
        delta_dir.merge(load_causal_lm(base, dtype=torch.bfloat16), folder)
    wider = tmp_path / "wider"
    from sparsity.hf import tiny_causal_lm

    tiny_causal_lm("llama", d_model=64).save_pretrained(wider)
    with pytest.raises(ValueError, match="has shape .* this model's has"):
        delta_dir.merge(load_causal_lm(wider), folder)


def test_refuses_conv1d_linear_mismatch_on_a_square_matrix(tmp_path: Path) -> None:
    """GPT-2's c_proj is square: same shape, transposed meaning. The recorded input axis catches it."""
    base = saved("gpt2", tmp_path / "base")
    model, run = finetuned(base, SparseConfig(criterion="magnitude", density=0.05, targets=("*.attn.c_proj.weight",)))
    folder = delta_dir.save_run(run, tmp_path / "delta")
    info = json.loads((folder / delta_dir.CONFIG).read_text())
    assert set(info["tensors"]) == {f"transformer.h.{i}.attn.c_proj.weight" for i in range(2)}
    for t in info["tensors"].values():
        t["input_axis"] = 1  # as if taken on an nn.Linear of the same (square) shape
    (folder / delta_dir.CONFIG).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="Conv1D .* Linear .* mismatch"):
        delta_dir.merge(load_causal_lm(base), folder)


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        delta_dir.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no sparse_delta.json"):
        delta_dir.load(tmp_path / "empty")
    base = saved("gpt2", tmp_path / "base")
    _, run = finetuned(base, CONFIG, steps=1)
    with pytest.raises(FileExistsError, match="not a delta folder"):
        delta_dir.save_run(run, base)
    folder = delta_dir.save_run(run, tmp_path / "delta")
    info = json.loads((folder / delta_dir.CONFIG).read_text())
    info["tensors"].popitem()
    (folder / delta_dir.CONFIG).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="name different tensors"):
        delta_dir.load(folder)


def test_readme_bring_your_own_model_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The README section's Python block and shell lines, on a tiny saved GPT-2 instead of path/to/model."""
    import re

    from hf_cases import token_batches

    from sparsity import inspect as inspector

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Bring your own model", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shell = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    base = saved("gpt2", tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    data = [{k: v[i] for k, v in b.items()} for b in token_batches(n=4) for i in range(4)]
    namespace = {"data": data}
    exec(code.replace("path/to/model", str(base)), namespace)  # noqa: S102 - our own README
    assert (tmp_path / "my-delta" / delta_dir.CONFIG).is_file()
    mains = {"sparsity.delta_dir": delta_dir.main, "sparsity.inspect": inspector.main}
    for line in shell.strip().splitlines():
        words = line.split("#")[0].replace("path/to/model", str(base)).split()
        assert words[:2] == ["python", "-m"], line
        mains[words[2]](words[3:])
    tuned = dict(namespace["model"].named_parameters())
    for name, p in load_causal_lm(tmp_path / "merged").named_parameters():
        assert torch.equal(p.detach(), tuned[name].detach()), name
    assert "overall update sparsity" in capsys.readouterr().out
