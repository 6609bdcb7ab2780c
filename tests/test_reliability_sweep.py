"""``SweepStore``: float keys keep every digit, a cell is stored once, and every bad line or
config names its file (and line); the committed benchmark stores load with the new keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsity.sweep import RESULTS, SweepStore, cell_key

FIELDS = ("method", "lr", "seed")
COMMITTED = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "results").glob(f"*/{RESULTS}"))


def test_close_learning_rates_are_two_cells_and_load_as_two(tmp_path: Path) -> None:
    store = SweepStore(tmp_path, FIELDS)
    cells = [{"method": "m", "lr": lr, "seed": 0} for lr in (0.1, 0.1000001)]
    rows = store.run(cells, lambda c: {**c, "score": c["lr"]})
    assert len(rows) == 2 and len(store.load()) == 2
    assert {r["score"] for r in store.load().values()} == {0.1, 0.1000001}
    assert cell_key({"lr": 3e-4}, ("lr",)) == "0.0003"


def test_a_cell_is_stored_once(tmp_path: Path) -> None:
    store = SweepStore(tmp_path, FIELDS)
    row = {"method": "m", "lr": 0.1, "seed": 0, "score": 1.0}
    store.append(row)
    with pytest.raises(ValueError, match=r"cell m\|0.1\|0 is already stored in .*results.jsonl \(line 1\)"):
        store.append({**row, "score": 2.0})
    store.path.write_text(store.path.read_text() + json.dumps({**row, "score": 2.0}) + "\n")
    with pytest.raises(ValueError, match=r"results.jsonl line 2 stores cell m\|0.1\|0 again \(first on line 1\)"):
        store.load()


@pytest.mark.parametrize(("line", "match"), [
    (b"null", "line 2 is a JSON NoneType, not a cell"),
    (b"[1, 2]", "line 2 is a JSON list, not a cell"),
    (b"not json", "line 2 is not JSON"),
    (b"\xff\xfe\x00binary", "line 2 is not JSON"),
    (b'{"method": "m"}', "line 2: .*needs the key fields \\['lr', 'seed'\\]"),
])
def test_a_bad_line_names_the_file_and_line(tmp_path: Path, line: bytes, match: str) -> None:
    store = SweepStore(tmp_path, FIELDS)
    store.append({"method": "m", "lr": 0.1, "seed": 0})
    store.path.write_bytes(store.path.read_bytes() + line + b"\n" + b'{"method": "m", "lr": 0.2, "seed": 0}\n')
    with pytest.raises(ValueError, match=f"{store.path}.*{match}"):
        store.load()
    with pytest.raises(ValueError, match=match):
        store.append({"method": "m", "lr": 0.3, "seed": 0})


@pytest.mark.parametrize(("text", "match"), [("{not json", "is not valid JSON"), ("[1, 2]", "must hold a JSON object")])
def test_a_bad_config_names_the_file(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=f"config.json {match}"):
        SweepStore(tmp_path, FIELDS, config={"steps": 1})
    with pytest.raises(ValueError, match=f"config.json {match}"):
        SweepStore(tmp_path, FIELDS).config()


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_every_committed_store_loads_every_row(path: Path) -> None:
    """Each store under its own key: the benchmark's cells, or the RL scale study's (preset, weights, lr, seed)."""
    from scaleup import rl_scale
    from scaleup.results import KEY_FIELDS

    key = rl_scale.KEY if path.parent.name == "rl_scale" else KEY_FIELDS
    lines = path.read_text().splitlines()
    rows = SweepStore(path.parent, key).load()
    assert len(rows) == len(lines) > 0
    assert isinstance(SweepStore(path.parent, key).config(), dict)


def test_the_committed_stores_are_all_checked() -> None:
    assert len(COMMITTED) >= 7
