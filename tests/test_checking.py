"""The shared checking machinery (lessons/checking.py): its messages, comparisons and verdicts."""

import re

import pytest
import torch

from lessons.checking import TRIVIAL_ANSWERS, Case, check, same, top_k_of


def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


DOUBLE_CASES = [
    Case("ones", (torch.ones(3),), expected=torch.full((3,), 2.0)),
    Case("range", (torch.arange(4.0),), expected=torch.arange(4.0) * 2),
]


def test_check_prints_one_line_on_success(capsys):
    check(double, DOUBLE_CASES, name="double")
    assert capsys.readouterr().out == "double: all 2 cases passed\n"
    check(double, DOUBLE_CASES, name="double", quiet=True)
    assert capsys.readouterr().out == ""


def test_check_names_the_failing_case_and_the_difference():
    with pytest.raises(AssertionError) as info:
        check(lambda x: x * 2 if x.numel() == 3 else x * 3, DOUBLE_CASES, name="double")
    message = str(info.value)
    assert message.startswith("double: case range failed: expected ")
    assert "3 of 4 entries differ" in message and "index (1,)" in message and "expected 2, got 3" in message


def test_not_implemented_and_other_exceptions():
    with pytest.raises(AssertionError, match=r"^double: not implemented yet"):
        check(TRIVIAL_ANSWERS["raises NotImplementedError"], DOUBLE_CASES, name="double")

    def broken(x):
        raise KeyError("fc9")

    with pytest.raises(AssertionError, match=r"^double: case ones raised KeyError: 'fc9'"):
        check(broken, DOUBLE_CASES, name="double")


def test_inputs_are_deep_copied_so_a_mutating_answer_cannot_change_the_next_case():
    data = torch.ones(3)
    cases = [Case("a", (data,), expected=torch.zeros(3)), Case("b", (data,), expected=torch.zeros(3))]
    check(lambda x: x.zero_(), cases, name="zero")
    assert torch.equal(data, torch.ones(3))


def test_check_refuses_no_cases():
    with pytest.raises(ValueError, match="no cases"):
        check(double, [], name="double")


@pytest.mark.parametrize("trivial", sorted(TRIVIAL_ANSWERS))
def test_trivial_answers_are_rejected(trivial):
    with pytest.raises(AssertionError, match=r"^double: "):
        check(TRIVIAL_ANSWERS[trivial], DOUBLE_CASES, name="double")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_float_tensors_of_each_dtype(dtype):
    x = torch.tensor([1.0, 2.0, 3.0], dtype=dtype)
    assert same(x, x.clone()) is None
    assert "expected dtype" in same(x, x.float() if dtype != torch.float32 else x.double())
    worse = x.clone()
    worse[2] = 4.0
    assert re.search(r"1 of 3 entries differ .* index \(2,\)", same(x, worse))


def test_bf16_compared_at_the_callers_tolerance():
    exact = torch.tensor([1.0], dtype=torch.float32)
    rounded = torch.tensor([1.0 + 2**-7], dtype=torch.bfloat16).float()  # one bf16 step above 1
    assert same(exact, rounded) is not None
    assert same(exact, rounded, rtol=2**-7) is None and same(exact, rounded, rtol=2**-8) is not None


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int8, torch.bool])
def test_integer_and_bool_tensors_count_differences(dtype):
    expected = torch.tensor([[1, 0], [1, 1]], dtype=dtype)
    got = expected.clone()
    got[1, 0] = 0
    got[1, 1] = 0
    message = same(expected, got)
    assert "2 of 4 entries differ" in message and "the first at index (1, 0)" in message


def test_tensor_type_and_shape_messages():
    assert same(torch.zeros(2), [0.0, 0.0]).startswith("expected a tensor, got list")
    assert same(torch.zeros(2, 3), torch.zeros(3, 2)) == "expected shape (2, 3), got shape (3, 2)"
    nan = torch.tensor([float("nan"), 1.0])
    assert same(nan, nan.clone()) is None
    assert "NaN" in same(nan, torch.tensor([0.0, 1.0]))


def test_dict_key_errors_come_before_values():
    expected = {"fc1": torch.ones(2), "fc2": torch.zeros(2)}
    assert "missing ['fc2']" in same(expected, {"fc1": torch.ones(2)})
    assert "extra keys ['fc3']" in same(expected, {**expected, "fc3": torch.ones(1)})
    assert same(expected, {"fc1": torch.ones(2), "fc2": torch.ones(2)}).startswith("['fc2']: ")
    assert same(expected, [1, 2]).startswith("expected a dict")


def test_sequences_numbers_and_none():
    assert same((1, 2.0), (1, 2.0)) is None
    assert same((1, 2), [1, 2]).startswith("expected a tuple")
    assert same([1, 2], [1]) == "expected 2 items, got 1"
    assert same([1, 2], [1, 3]) == "[1]: expected 2, got 3"
    assert same(3, 3.0).startswith("expected the int 3")
    assert same(0.1 + 0.2, 0.3) is None and same(0.3, 0.31) == "expected 0.3, got 0.31"
    assert same(True, 1) == "expected True, got 1" and same(1, True) is not None
    assert same(None, None) is None and same(None, 0) == "expected None, got 0"
    assert same(float("nan"), float("nan")) is None
    assert same("bf16", "fp32") == "expected 'bf16', got 'fp32'"


def test_ties_any_tie_break_is_accepted_but_not_a_mask_that_ignores_scores():
    scores = torch.tensor([3.0, 1.0, 1.0, 0.5, 2.0])
    reference = torch.tensor([True, True, False, False, True])
    compare = top_k_of(scores)
    other_tie_break = torch.tensor([True, False, True, False, True])
    assert same(reference, other_tie_break) is not None  # exact comparison rejects it ...
    assert compare(reference, other_tie_break) is None  # ... the tie-aware one accepts it
    assert compare(reference, torch.tensor([True, True, True, False, False])).startswith("expected the 3 highest")
    assert compare(reference, torch.tensor([True, True, False, False, False])) == "expected 3 selected entries, got 2"
    assert compare(reference, reference.float()).startswith("expected a bool mask")
    cases = [Case("tie", (scores,), expected=reference, compare=compare)]
    check(lambda s: s >= 1.0 + (s == 1.0) * torch.tensor([0, 0, 1, 0, 0]), cases, name="top3", quiet=True)
    for trivial in TRIVIAL_ANSWERS.values():
        with pytest.raises(AssertionError):
            check(trivial, cases, name="top3")
