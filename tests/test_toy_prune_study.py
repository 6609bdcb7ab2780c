"""The prune-and-recover study (lesson 4) at a tiny size: every method on the ladder, its table and verdict."""

import pytest

from toys import classification as tc
from toys import prune_study as ps


@pytest.fixture(scope="module")
def tiny() -> tuple[ps.StudyConfig, ps.Dense, ps.Study]:
    study = ps.StudyConfig(world=tc.Config(hidden=(16, 16), n_train=512, n_test=128, steps=30, batch=32), rounds=2,
                           rewind_step=5, recovery_steps=10)
    dense = ps.train_dense(study, progress=False)
    return study, dense, ps.run_study(study, dense, progress=False)


def test_every_method_has_a_number_at_every_rung(tiny) -> None:
    study, dense, result = tiny
    for method in ps.METHODS[:4]:
        assert set(result.accuracy[method]) == set(study.sparsities)
    assert set(result.accuracy["2:4 + recovery"]) == {0.5}
    assert all(0.0 <= a <= 1.0 for acc in result.accuracy.values() for a in acc.values())
    assert result.dense == dense.accuracy
    assert result.ratio("one-shot", 0.5) == result.accuracy["one-shot"][0.5] / dense.accuracy


def test_table_is_markdown_with_the_budgets_and_the_verdict_names_every_method(tiny) -> None:
    study, _, result = tiny
    lines = ps.format_table(result).splitlines()
    assert lines[0] == "| sparsity | " + " | ".join(ps.METHODS) + " |"
    assert lines[1] == "| " + " | ".join(["---:"] * (len(ps.METHODS) + 1)) + " |"
    assert len(lines) == 2 + len(study.sparsities) + 1 and lines[-1].startswith("| training steps |")
    text = ps.verdict(result)
    assert all(m in text for m in ps.METHODS[:4]) and "2:4" in text


def test_bad_settings_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="rounds must be a positive int"):
        ps.StudyConfig(rounds=0)
    with pytest.raises(ValueError, match="rewind_step"):
        ps.StudyConfig(rewind_step=-1)
    with pytest.raises(ValueError, match="rate"):
        ps.StudyConfig(rate=1.0)
