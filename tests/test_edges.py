"""Bad input at the edges of the public API: a clear error naming the argument, never a raw crash."""

import importlib

import pytest
import torch
from torch import nn

from scaleup import gpt, lora
from scaleup import tasks as tk
from sparsity import criteria
from sparsity.two_four_linear import SemiStructuredLinear


def _gpt() -> gpt.GPT:
    return gpt.build("micro", vocab_size=10, block_size=8)


@pytest.mark.parametrize("bad", [10, -1])
def test_token_ids_outside_the_vocabulary_are_a_clear_error(bad: int) -> None:
    idx = torch.tensor([[1, 2, bad]])
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 10\)"):
        _gpt()(idx)


def test_dropout_must_be_a_number() -> None:
    with pytest.raises(TypeError, match="GPTConfig.dropout must be a number in \\[0, 1\\), got str '0.1'"):
        gpt.GPTConfig(dropout="0.1")


def test_sample_needs_a_positive_count_and_exact_match_a_nonempty_batch() -> None:
    world = tk.World(tk.WorldConfig(n_symbols=5, length=3, n_facts=6, n_eval=16))
    with pytest.raises(ValueError, match="n must be a positive int, got -3"):
        world.sample("add2", "test", -3, torch.Generator().manual_seed(0))
    batch = world.eval_set("add2", "test")
    empty = tk.Batch(batch.idx[:0], batch.targets[:0])
    model = gpt.build("micro", world.vocab_size, world.block_size)
    with pytest.raises(ValueError, match="exact_match needs a batch of at least one example"):
        tk.exact_match(model, empty)


def test_lift_on_a_nonfinite_weight_names_the_tensor() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="lift cannot score '1.weight': .*holds NaN or inf"):
        criteria.lift(model, rank=1)


def test_lift_keeps_float32_scores_for_bf16_weights() -> None:
    torch.manual_seed(0)
    model = nn.Linear(64, 64).to(torch.bfloat16)
    scores = criteria.lift(model, rank=4)
    assert scores["weight"].dtype == torch.float32
    # in bf16 the scores would tie by the dozen; in float32 almost none tie
    flat = scores["weight"].flatten()
    assert flat.unique().numel() > 0.99 * flat.numel()
    assert flat.to(torch.bfloat16).unique().numel() < 0.5 * flat.numel()


def test_semistructured_linear_refuses_an_integer_dtype() -> None:
    with pytest.raises(TypeError, match="needs a floating dtype"):
        SemiStructuredLinear(8, 4, dtype=torch.int32)


def test_merge_lora_gives_back_the_requires_grad_the_user_set() -> None:
    model = _gpt()
    model.tok_emb.weight.requires_grad_(False)  # frozen by the user
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    lora.add_lora(model, lora.LoraConfig(r=2))
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora" not in n)
    lora.merge_lora(model)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("toys.modular", ["--steps", "0"], "argument --steps: must be a positive int, got 0"),
        ("toys.modular", ["--seed", "-2"], "argument --seed: must be a non-negative int, got -2"),
        ("toys.two_four_study", ["--gpt-steps", "x"], "argument --gpt-steps: must be a positive int, got 'x'"),
        ("benchmarks.optimizer_step", ["--threads", "0"], "argument --threads: must be a positive int, got 0"),
        ("benchmarks.optimizer_step", ["--out", "/no/such/dir/r.md"], "argument --out: the folder /no/such/dir does not exist"),
        ("benchmarks.criteria_cost", ["--rank", "-1"], "argument --rank: must be a positive int, got -1"),
        ("benchmarks.semistructured", ["--reps", "0"], "argument --reps: must be a positive int, got 0"),
        ("benchmarks.scaleup_memory", ["--batch", "1.5"], "argument --batch: must be a positive int, got '1.5'"),
        ("benchmarks.values_grad_breakdown", ["--steps", "0"], "argument --steps: must be a positive int, got 0"),
        ("benchmarks.values_grad_breakdown", ["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
        ("scaleup.teacher_student", ["--lam", "inf"], "argument --lam: must be a finite number >= 0, got 'inf'"),
        ("scaleup.teacher_student", ["--plot", "/no/such/dir/p.png"], "argument --plot: the folder /no/such/dir"),
    ],
)
def test_every_command_line_refuses_bad_flags_before_any_work(module, argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
