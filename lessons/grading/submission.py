"""Reading a submission: the notebook's code cells (hidden tests, magics and the template's
check, explore and grading cells removed), which assignment it is, and the answers to the
open questions.

The grader reads the notebook as data and never executes it here; the code cells go to
the sandbox (``lessons.grading.runner``). Only a regular file is read, opened without
following a symbolic link and without blocking (a link to the instructor's solution, a
FIFO or a device named ``*.ipynb`` is refused with a note, never graded or waited on).
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from lessons.assignments.build import MARKDOWN_STUB
from lessons.assignments.spec import HIDDEN_TESTS, NOT_GRADED, Assignment, remove_region, sources
from lessons.grading.report import HandGradedResult
from lessons.grading.wire import escape_controls

MAX_NOTEBOOK_MB = 64


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_notebook(path: Path) -> dict:
    """The notebook's JSON; a ValueError if it is not a regular file or not a notebook."""
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(f"{_kind(mode)}, not a regular file: only regular files are graded")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        opened = os.fstat(f.fileno())
        if not stat.S_ISREG(opened.st_mode):  # replaced between the two looks
            raise ValueError(f"{_kind(opened.st_mode)}, not a regular file: only regular files are graded")
        if opened.st_size > MAX_NOTEBOOK_MB << 20:
            raise ValueError(f"a notebook of more than {MAX_NOTEBOOK_MB} MB")
        nb = json.loads(f.read().decode("utf-8"))
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError("not a Jupyter notebook (no 'cells' list)")
    return nb


def _text(cell: object) -> str:
    source = cell.get("source", "") if isinstance(cell, dict) else ""
    return "".join(map(str, source)) if isinstance(source, list) else str(source)


def _named_by_file(path: Path, known_names: list[str]) -> set[str]:
    """The assignments a file name names (``a1_masks_alice.ipynb``, ``a1_alice.ipynb``)."""
    return {known for known in known_names if known in path.name or path.name.startswith(known.split("_")[0] + "_")}


def identify(nb: dict, path: Path, forced: str | None, folder: Path | None = None) -> str:
    """Which assignment a notebook is: ``forced``, else its metadata, else its file name
    (among the sources in ``folder``, by default the lab's own).

    A notebook whose metadata and file name name different assignments is refused (a
    ValueError saying both), since either may be the student's mistake or a trick."""
    known_names = [p.stem for p in (sources(folder) if folder else sources())]
    if forced:
        return forced
    meta = nb.get("metadata", {}).get("subnet_lab", {})
    name = meta.get("assignment") if isinstance(meta, dict) else None
    by_file = _named_by_file(path, known_names)
    if name in known_names:
        if by_file and name not in by_file:
            raise ValueError(f"the file name names {', '.join(sorted(by_file))} but the notebook's metadata names "
                             f"{name}; pass --assignment to say which it is")
        return name
    if len(by_file) == 1:
        return by_file.pop()
    raise ValueError(f"cannot tell which assignment this is (known: {known_names}); pass --assignment")


def _without_magics(source: str) -> str:
    """IPython magics and shell escapes are not Python; the sandbox runs plain Python."""
    return "\n".join(line[: len(line) - len(line.lstrip())] + "pass  # (magic removed)"
                     if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))


def _tags(cell: object) -> set[str]:
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    tags = meta.get("tags") if isinstance(meta, dict) else None
    return {t for t in tags if isinstance(t, str)} if isinstance(tags, list) else set()


def _hidden_removed(source: str) -> str:
    try:
        return remove_region(source, HIDDEN_TESTS, None)
    except ValueError:  # an unclosed region: drop everything after its opening marker
        return source.split(HIDDEN_TESTS[0])[0]


def code_cells(nb: dict) -> list[tuple[int, str]]:
    """(index, source) of every code cell the grader runs: not the template's visible checks,
    lab experiments or case definitions (``spec.NOT_GRADED`` tags), hidden tests removed."""
    return [(i, _without_magics(_hidden_removed(_text(c)))) for i, c in enumerate(nb["cells"])
            if isinstance(c, dict) and c.get("cell_type") == "code" and not _tags(c) & NOT_GRADED]


def hand_graded_answers(nb: dict, spec: Assignment) -> list[HandGradedResult]:
    """The markdown answer cells (tagged by the build with nbgrader's ``grade_id``), by open question."""
    answers: dict[str, str] = {}
    for cell in nb["cells"]:
        meta = cell.get("metadata") if isinstance(cell, dict) else None
        grade_id = meta.get("nbgrader", {}).get("grade_id") if isinstance(meta, dict) and isinstance(
            meta.get("nbgrader"), dict) else None
        if "answer" in _tags(cell) and cell.get("cell_type") == "markdown" and isinstance(grade_id, str):
            answers.setdefault(grade_id, _text(cell).strip())
    results = []
    for hg in spec.hand_graded:
        answer = answers.get(hg.id, "")
        results.append(HandGradedResult(hg.id, hg.prompt, "" if answer == MARKDOWN_STUB else escape_controls(answer),
                                        hg.points))
    return results


def defines(source: str, function: str) -> bool:
    """Whether a cell defines (or imports) ``function``: the cells a question's answer lives in."""
    name = re.escape(function)
    return bool(re.search(rf"^\s*(def\s+{name}\b|{name}\s*=|.*\bimport\b.*\b{name}\b)", source, flags=re.MULTILINE))
