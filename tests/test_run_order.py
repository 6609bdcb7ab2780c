"""The suite's start order (tests/run_order.py): the longest modules first, everything else in place."""

from dataclasses import dataclass
from pathlib import Path

from run_order import LONGEST_MODULES, longest_first

HERE = Path(__file__).resolve().parent


@dataclass
class FakeItem:
    path: Path
    name: str


def test_the_longest_modules_start_first_in_their_order_and_the_rest_keep_theirs() -> None:
    items = [FakeItem(HERE / "test_a.py", "a1"), FakeItem(HERE / LONGEST_MODULES[1], "slow2"),
             FakeItem(HERE / "test_b.py", "b1"), FakeItem(HERE / LONGEST_MODULES[0], "slow1-x"),
             FakeItem(HERE / "test_a.py", "a2"), FakeItem(HERE / LONGEST_MODULES[0], "slow1-y")]
    assert [i.name for i in longest_first(items)] == ["slow1-x", "slow1-y", "slow2", "a1", "b1", "a2"]


def test_every_module_named_as_long_exists() -> None:
    """A renamed or deleted module would silently fall back to its collected place."""
    assert [name for name in LONGEST_MODULES if not (HERE / name).is_file()] == []
    assert len(set(LONGEST_MODULES)) == len(LONGEST_MODULES)


def test_this_run_collected_the_long_modules_first(request) -> None:
    """The hook in tests/conftest.py applies the order to the session's own collection."""
    names = [item.path.name for item in request.session.items]
    long_positions = [i for i, n in enumerate(names) if n in LONGEST_MODULES]
    assert long_positions == list(range(len(long_positions)))
