"""The science does not move: the refactor onto the spine (issue 12) keeps every number bit for bit.

The fixtures are the pre-refactor tree's outputs for a few fixed commands on one CPU thread
(tests/invariant_fixtures.py: which commands, and how a set is recorded). Rounding depends on the
torch build, the instruction set and the CPU model, so each set holds on the machine kind that
recorded it (its machine.json); where no set was recorded for this kind, these checks skip, naming it.
"""

from __future__ import annotations

import json

import pytest

from invariant_fixtures import (CELLS, CELLS_FILE, COMMANDS, DATA, ROOT, VOLATILE, cell_rows, kind_folder,
                                machine_kind, run)

KIND = machine_kind()
FIXTURES = kind_folder(KIND)
RECORDED = sorted(p.name for p in DATA.iterdir() if p.is_dir())

pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir(),
    reason=f"no invariant fixtures for this machine kind ({FIXTURES.name}); recorded for: {', '.join(RECORDED)} "
           "(tests/invariant_fixtures.py records a set)")


def test_the_fixtures_name_the_machine_kind_they_hold_on() -> None:
    recorded = json.loads((FIXTURES / "machine.json").read_text())
    assert {k: recorded[k] for k in KIND} == KIND
    assert sorted(p.name for p in FIXTURES.glob("*.json")) == sorted([*COMMANDS, CELLS_FILE, "machine.json"])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_toy_cli_output_is_unchanged(name: str) -> None:
    args, fast = COMMANDS[name]
    assert run(ROOT, args, fast) == (FIXTURES / name).read_text()


def test_tiny_gpt_cells_are_unchanged() -> None:
    """Full, LoRA, LIFT, magnitude, L1-discovered and 2:4 fine-tuning of the tiny GPT at seed 0, every metric
    the pre-refactor rows had (rows have gained keys since)."""
    want = json.loads((FIXTURES / CELLS_FILE).read_text())
    got = cell_rows(ROOT)
    assert [(r["method"], r["budget"], r["lr"]) for r in want] == [tuple(c) for c in CELLS]
    for old, new in zip(want, got, strict=True):
        for key, value in old.items():
            if key not in VOLATILE:
                assert new[key] == value, f"{old['method']} {old['budget']}: {key} changed from {value} to {new[key]}"
