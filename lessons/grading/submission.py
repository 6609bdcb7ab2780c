"""Reading a submission: the notebook's code cells (hidden tests and magics removed), which
assignment it is, and the answers to the open questions.

The grader reads the notebook as data and never executes it here; the code cells go to
the sandbox (``lessons.grading.runner``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lessons.assignments.build import MARKDOWN_STUB, strip_hidden_tests
from lessons.assignments.checks import ASSIGNMENTS, Assignment
from lessons.grading.report import HandGradedResult


def read_notebook(path: Path) -> dict:
    """The notebook's JSON; a ValueError if it is not a notebook."""
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError("not a Jupyter notebook (no 'cells' list)")
    return nb


def _text(cell: object) -> str:
    source = cell.get("source", "") if isinstance(cell, dict) else ""
    return "".join(map(str, source)) if isinstance(source, list) else str(source)


def identify(nb: dict, path: Path, forced: str | None) -> str:
    """Which assignment a notebook is: ``forced``, else its metadata, else its file name."""
    if forced:
        return forced
    meta = nb.get("metadata", {}).get("subnet_lab", {})
    name = meta.get("assignment") if isinstance(meta, dict) else None
    if name in ASSIGNMENTS:
        return name
    for known in ASSIGNMENTS:
        if known in path.name or path.name.startswith(known.split("_")[0] + "_"):
            return known
    raise ValueError(f"cannot tell which assignment this is (known: {sorted(ASSIGNMENTS)}); pass --assignment")


def _without_magics(source: str) -> str:
    """IPython magics and shell escapes are not Python; the sandbox runs plain Python."""
    return "\n".join(line[: len(line) - len(line.lstrip())] + "pass  # (magic removed)"
                     if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))


def code_cells(nb: dict) -> list[tuple[int, str]]:
    """(index, source) of every code cell, hidden tests removed."""
    return [(i, _without_magics(strip_hidden_tests(_text(c)))) for i, c in enumerate(nb["cells"])
            if isinstance(c, dict) and c.get("cell_type") == "code"]


def hand_graded_answers(nb: dict, spec: Assignment) -> list[HandGradedResult]:
    """The markdown answer cells (tagged by the generator), in order, paired with the open questions."""
    def is_answer(cell: object) -> bool:
        meta = cell.get("metadata") if isinstance(cell, dict) else None
        tags = meta.get("tags") if isinstance(meta, dict) else None
        return isinstance(tags, list) and "answer" in tags and cell.get("cell_type") == "markdown"

    answers = [_text(c) for c in nb["cells"] if is_answer(c)]
    results = []
    for i, hg in enumerate(spec.hand_graded):
        answer = answers[i].strip() if i < len(answers) else ""
        results.append(HandGradedResult(hg.id, hg.prompt, "" if answer == MARKDOWN_STUB else answer))
    return results


def defines(source: str, function: str) -> bool:
    """Whether a cell defines (or imports) ``function``: the cells a question's answer lives in."""
    name = re.escape(function)
    return bool(re.search(rf"^\s*(def\s+{name}\b|{name}\s*=|.*\bimport\b.*\b{name}\b)", source, flags=re.MULTILINE))
