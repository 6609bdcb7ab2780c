"""The suite's start order (tests/run_order.py): the longest modules first, dealt over the xdist workers' shares."""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from run_order import LONGEST_MODULES, WHOLE_MODULES, spread

HERE = Path(__file__).resolve().parent


@dataclass
class FakeItem:
    path: Path
    name: str


def _items() -> list[FakeItem]:
    return [FakeItem(HERE / "test_a.py", "a1"), FakeItem(HERE / LONGEST_MODULES[1], "slow2"),
            FakeItem(HERE / "test_b.py", "b1"), FakeItem(HERE / LONGEST_MODULES[0], "slow1-x"),
            FakeItem(HERE / "test_a.py", "a2"), FakeItem(HERE / LONGEST_MODULES[0], "slow1-y"),
            FakeItem(HERE / "test_b.py", "b2"), FakeItem(HERE / "test_c.py", "c1"), FakeItem(HERE / "test_c.py", "c2")]


def test_one_worker_gets_the_longest_modules_first_in_their_order_and_the_rest_in_theirs() -> None:
    assert [i.name for i in spread(_items())] == ["slow1-x", "slow1-y", "slow2", "a1", "b1", "a2", "b2", "c1", "c2"]


def test_two_workers_each_start_their_share_with_long_tests() -> None:
    """xdist's worksteal gives the first worker the first 9 // 2 = 4 items, the second the other 5."""
    order = [i.name for i in spread(_items(), 2)]
    assert order[:4] == ["slow1-x", "slow2", "a1", "b1"]
    assert order[4:] == ["slow1-y", "a2", "b2", "c1", "c2"]
    assert [i.name for i in spread(_items(), 3)] == ["slow1-x", "a1", "b1", "slow1-y", "a2", "b2", "slow2", "c1", "c2"]
    assert sorted(order) == sorted(i.name for i in _items())
    with pytest.raises(ValueError, match="workers must be a positive int, got 0"):
        spread(_items(), 0)


def test_a_module_sharing_a_fixture_goes_whole_to_one_share() -> None:
    """Its tests are not dealt one by one: each worker that ran one would build the module's fixture again."""
    whole = HERE / WHOLE_MODULES[0]
    items = [FakeItem(HERE / "test_a.py", "a1"), FakeItem(whole, "w1"), FakeItem(whole, "w2"), FakeItem(whole, "w3"),
             FakeItem(HERE / "test_a.py", "a2"), FakeItem(HERE / "test_b.py", "b1")]
    order = [i.name for i in spread(items, 2)]
    assert order[:3] == ["w1", "w2", "w3"] and sorted(order[3:]) == ["a1", "a2", "b1"]
    dealt = [i.name for i in spread(items + [FakeItem(HERE / LONGEST_MODULES[0], "slow1-x"),
                                             FakeItem(HERE / LONGEST_MODULES[0], "slow1-y")], 2)]
    assert dealt == ["slow1-x", "w1", "w2", "w3", "slow1-y", "a1", "a2", "b1"]  # units: slow1-x | slow1-y | w1-w3


def test_every_module_named_as_long_exists() -> None:
    """A renamed or deleted module would silently fall back to its collected place."""
    assert [name for name in LONGEST_MODULES if not (HERE / name).is_file()] == []
    assert len(set(LONGEST_MODULES)) == len(LONGEST_MODULES)
    assert set(WHOLE_MODULES) <= set(LONGEST_MODULES)


def test_this_run_starts_every_workers_share_with_a_long_test(request) -> None:
    """The hook in tests/conftest.py applies the order to the session's own collection."""
    names = [item.path.name for item in request.session.items]
    workers, left = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), len(names)
    start = 0
    for k in range(workers):
        assert names[start] in LONGEST_MODULES or not any(n in LONGEST_MODULES for n in names), (k, names[start])
        size = left // (workers - k)
        start, left = start + size, left - size
