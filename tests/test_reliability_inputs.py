"""Inputs that used to be ignored or crash raw: unknown criterion options, gradient criteria on a model
with frozen tensors, a seed too big for any generator, ``auto_map`` nested in a sub-config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsity import SparseConfig, registry, sparsify
from sparsity.cli_args import SEED_MAX, random_seed


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.mse_loss(model(batch[0]), batch[1])


BATCHES = [(torch.randn(8, 6, generator=torch.Generator().manual_seed(1)), torch.zeros(8, 3))]


@pytest.mark.parametrize(("criterion", "options", "match"), [
    ("lift", {"rank": 2, "mehtod": "lowrank"}, r"'lift' takes the options \['method', 'rank'\]; got unknown .*'mehtod'"),
    ("magnitude", {"rank": 2}, r"'magnitude' takes no options; got unknown option\(s\) \['rank'\]"),
    ("layers", {"layers": ["0.weight"], "lam": 1.0}, r"'layers' takes the options \['layers'\]"),
])
def test_options_a_criterion_does_not_read_are_refused(criterion: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sparsify(_model(), SparseConfig(criterion, density=0.2, options=options))


def test_options_a_criterion_reads_pass_and_undeclared_ones_are_unchecked() -> None:
    sparsify(_model(), SparseConfig("lift", density=0.2, options={"rank": 2, "method": "lowrank"}))

    def mine(model, inputs):
        return {n: p.detach().abs() for n, p in model.named_parameters() if n in inputs.names(model)}

    registry.register_criterion("test_undeclared_options", mine)
    try:
        sparsify(_model(), SparseConfig("test_undeclared_options", density=0.2, options={"anything": 1}))
    finally:
        registry.unregister_criterion("test_undeclared_options")


@pytest.mark.parametrize("criterion", ["gradient", "fisher", "snip", "movement"])
def test_gradient_criteria_score_the_trainable_tensors_of_a_partly_frozen_model(criterion: str) -> None:
    model = _model()
    model[0].weight.requires_grad_(False)
    run = sparsify(model, SparseConfig(criterion, density=0.2, values_grad=False), loss_fn=_loss, batches=BATCHES)
    assert not run.mask["0.weight"].any() and run.mask["2.weight"].any()
    # a second sparsify, the first unmerged: it starts from the user's model (0.weight frozen by the user, the
    # rest trainable), not from the first run's frozen tensors or its values-only layers (on by default)
    for values_grad in (False, None):
        with pytest.warns(UserWarning, match="earlier sparsify and not merged"):
            again = sparsify(model, SparseConfig(criterion, density=0.5, values_grad=values_grad), loss_fn=_loss,
                             batches=BATCHES)
        assert not again.mask["0.weight"].any() and again.mask["2.weight"].any()


def test_gradient_criteria_refuse_a_model_with_every_eligible_tensor_frozen() -> None:
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="every eligible one is frozen \\(e.g. '0.weight' has requires_grad=False\\)"):
        sparsify(model, SparseConfig("gradient", density=0.2), loss_fn=_loss, batches=BATCHES)


def test_a_seed_beyond_every_generator_is_a_flag_error() -> None:
    assert random_seed(str(SEED_MAX)) == SEED_MAX
    torch.Generator().manual_seed(SEED_MAX * 1_000_003 + 10**6)  # the RL study's batch seed at the largest seed
    with pytest.raises(argparse.ArgumentTypeError, match="must be a seed in"):
        random_seed(str(10**20))
    from scaleup import rl_study

    with pytest.raises(SystemExit):
        rl_study.main(["--seed", str(10**20)])


def test_auto_map_nested_in_a_sub_config_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from sparsity.hf import load_causal_lm

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llava", "text_config": {"model_type": "llama", "auto_map": {"AutoModelForCausalLM": "x.Y"}}}))
    with pytest.raises(ValueError, match=r"config.json has text_config.auto_map\) and would run on load"):
        load_causal_lm(tmp_path)
