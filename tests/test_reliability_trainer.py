"""``run.trainer_optimizers(args)``: Hugging Face's Trainer ignores ``TrainingArguments``' learning rate and
weight decay for an optimizer it is given, so handing the run's optimizer over warns when they differ; and it
clips ``model.parameters()``' gradients, which values-only gradients are not, so those go where it clips."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsity import SparseConfig, sparsify

transformers = pytest.importorskip("transformers")


def _run(**config: object):
    torch.manual_seed(0)
    return sparsify(nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)),
                    SparseConfig("magnitude", density=0.2, **config))


def test_a_learning_rate_or_weight_decay_trainer_would_ignore_is_a_warning(tmp_path: Path) -> None:
    run = _run(lr=1e-3, weight_decay=0.1)
    args = transformers.TrainingArguments(tmp_path / "out", learning_rate=5e-5, weight_decay=0.0, max_grad_norm=0.0,
                                          report_to=[])
    with pytest.warns(UserWarning, match=r"learning_rate=5e-05 \(the optimizer's: 0.001\), weight_decay=0.0 "
                                         r"\(the optimizer's: 0.1\).*ignores these"):
        optimizer, scheduler = run.trainer_optimizers(args)
    assert optimizer is run.optimizer and scheduler is None


def test_matching_arguments_pass_silently(tmp_path: Path) -> None:
    run = _run(lr=2e-3, weight_decay=0.1)
    args = transformers.TrainingArguments(tmp_path / "out", learning_rate=2e-3, weight_decay=0.1, max_grad_norm=0.0,
                                          report_to=[])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run.trainer_optimizers(args) == (run.optimizer, None)
    with pytest.raises(TypeError, match="args must be the transformers.TrainingArguments"):
        run.trainer_optimizers({"learning_rate": 2e-3})


def test_where_trainer_clips_the_values_only_gradients_give_way_to_dense_ones(tmp_path: Path) -> None:
    run = _run(lr=2e-3, weight_decay=0.1, storage="compact")
    assert sorted(run.optimizer.values_grads) == ["0.weight", "2.weight"]  # the default installs them
    args = transformers.TrainingArguments(tmp_path / "out", learning_rate=2e-3, weight_decay=0.1, report_to=[])
    assert args.max_grad_norm == 1.0  # Trainer's default: it clips
    with pytest.warns(UserWarning, match=r"max_grad_norm=1.0: .* 2 weights \(0.weight, ...\) get their dense"):
        run.trainer_optimizers(args)
    assert not run.optimizer.values_grads and run.model[0].weight.requires_grad
    run.model(torch.randn(4, 6)).sum().backward()
    assert run.model[0].weight.grad is not None  # what Trainer's clip now sees

    forced = _run(lr=2e-3, weight_decay=0.1, storage="compact", values_grad=True)
    with pytest.raises(ValueError, match=r"max_grad_norm=1.0 with SparseConfig\(values_grad=True\)"):
        forced.trainer_optimizers(args)
