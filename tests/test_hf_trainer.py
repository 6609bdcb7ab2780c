"""The lab's masked optimizers in transformers.Trainer: masked entries bit-identical through 50
steps with weight decay, and a run resumed from a Trainer checkpoint bit-exact (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from hf_cases import saved, token_batches  # noqa: E402

from sparsity import SparseConfig, sparsify  # noqa: E402
from sparsity.hf import load_causal_lm, load_checkpoint_weights  # noqa: E402
from sparsity.regularize import snapshot  # noqa: E402

STEPS = 50
CONFIG = {"criterion": "lift", "density": 0.1, "options": {"rank": 4}, "weight_decay": 0.1, "lr": 1e-2}


def _trainer(model, optimizer, out: Path):
    """A Trainer for ``STEPS`` steps with a checkpoint every 25. Imported here, not at collection:
    importing transformers.Trainer imports triton, which must come after the 2:4 tests set
    TRITON_INTERPRET=1 (tests/test_semistructured.py) or their CPU kernels cannot run."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4, save_steps=25,
                             save_strategy="steps", logging_strategy="no", report_to=[], use_cpu=True, seed=0,
                             disable_tqdm=True, dataloader_num_workers=0)
    data = [{k: v[i] for k, v in b.items()} for b in token_batches(n=8) for i in range(4)]
    return Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None))


@pytest.mark.parametrize(("family", "storage"), [("gpt2", "compact"), ("llama", "dense")])
def test_trainer_keeps_masked_entries_and_resumes_bit_exact(family: str, storage: str, tmp_path: Path) -> None:
    base = saved(family, tmp_path / "base")
    config = SparseConfig(storage=storage, **CONFIG)
    model = load_causal_lm(base)
    start = snapshot(model)
    run = sparsify(model, config)
    _trainer(model, run.optimizer, tmp_path / "out").train()

    selected = moved = 0
    for name, p in model.named_parameters():
        m = run.mask[name]
        assert torch.equal(p.detach()[~m], start[name][~m]), f"{name}: a masked entry moved"
        selected += int(m.sum())
        moved += int((p.detach() != start[name]).sum())
    assert moved > 0.9 * selected, f"only {moved} of {selected} selected entries moved: the check would be empty"
    final = snapshot(model)

    checkpoint = tmp_path / "out" / "checkpoint-25"
    at_25 = load_causal_lm(checkpoint)
    assert any(not torch.equal(p.detach(), final[n]) for n, p in at_25.named_parameters()), "nothing after step 25"

    again = load_causal_lm(base)
    resumed = sparsify(again, config)
    _trainer(again, resumed.optimizer, tmp_path / "out").train(resume_from_checkpoint=str(checkpoint))
    for name, p in again.named_parameters():
        assert torch.equal(p.detach(), final[name]), f"{name} differs after resume"
    for name, m in resumed.optimizer.mask.items():
        assert torch.equal(m, run.optimizer.mask[name]), name


def test_resume_with_a_trained_head_through_load_checkpoint_weights(tmp_path: Path) -> None:
    """GPT-NeoX saves its head as embed_out: Trainer's raw reload misses it, load_checkpoint_weights does not."""
    base = saved("gpt_neox", tmp_path / "base")
    config = SparseConfig(storage="compact", include=("weight", "embedding"), **CONFIG)
    model = load_causal_lm(base)
    run = sparsify(model, config)
    assert run.mask["lm_head.weight"].any()
    # the default values-only gradients are on: Trainer's model.zero_grad() never reaches their anchors
    assert "lm_head.weight" in run.optimizer.values_grads
    _trainer(model, run.optimizer, tmp_path / "out").train()
    again = load_causal_lm(base)
    resumed = sparsify(again, config)
    checkpoint = tmp_path / "out" / "checkpoint-25"
    load_checkpoint_weights(again, checkpoint)
    _trainer(again, resumed.optimizer, tmp_path / "out").train(resume_from_checkpoint=str(checkpoint))
    final = dict(model.named_parameters())
    for name, p in again.named_parameters():
        assert torch.equal(p.detach(), final[name].detach()), f"{name} differs after resume"
    with pytest.raises(ValueError, match="other parameters than the model"):
        load_checkpoint_weights(load_causal_lm(saved("llama", tmp_path / "llama")), checkpoint)


def test_trl_sft_trainer_takes_the_masked_optimizer(tmp_path: Path) -> None:
    trl = pytest.importorskip("trl", reason="TRL is not installed (pip install trl): its trainer is checked only then")
    datasets = pytest.importorskip("datasets")
    model = load_causal_lm(saved("gpt2", tmp_path / "base"))
    start = snapshot(model)
    run = sparsify(model, SparseConfig(storage="compact", **CONFIG))
    ids = [b["input_ids"][i].tolist() for b in token_batches(n=4) for i in range(4)]
    data = datasets.Dataset.from_dict({"input_ids": ids})
    args = trl.SFTConfig(output_dir=str(tmp_path / "out"), max_steps=10, per_device_train_batch_size=4,
                         report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True)
    trl.SFTTrainer(model=model, args=args, train_dataset=data, optimizers=(run.optimizer, None)).train()
    moved = 0
    for name, p in model.named_parameters():
        assert torch.equal(p.detach()[~run.mask[name]], start[name][~run.mask[name]]), name
        moved += int((p.detach() != start[name]).sum())
    assert moved > 0
