"""Build the assignment notebooks from their sources: ``make assignments``.

Each source (``lessons/assignments/a*_*.py``, jupytext percent format) is the instructor's
version: reference solutions between ``### BEGIN SOLUTION`` / ``### END SOLUTION`` and hidden
tests between ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` (nbgrader's markers).
This writes, under the output folder (default ``build/assignments``):

* ``<name>.ipynb``: the student notebook: each solution replaced by a
  ``raise NotImplementedError()`` stub (``YOUR ANSWER HERE`` in markdown), hidden tests removed;
* ``solutions/<name>.ipynb``: the instructor notebook, complete.

Answer cells carry nbgrader-style metadata and the notebook names its assignment
(``metadata.subnet_lab.assignment``), which is how ``python -m lessons.grade`` recognises it.

    python -m lessons.assignments.build [--out build/assignments]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOLUTION = ("### BEGIN SOLUTION", "### END SOLUTION")
HIDDEN_TESTS = ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
MARKDOWN_STUB = "YOUR ANSWER HERE"


def sources() -> list[Path]:
    """The assignment sources, in order."""
    return sorted(HERE.glob("a[0-9]_*.py"))


def _replace_regions(source: str, markers: tuple[str, str], replacement: str | None) -> str:
    """Replace every marked region (markers included) by ``replacement`` at the marker's indentation.

    ``None`` removes the region. A region left open runs to the end of the cell.
    """
    begin, end = markers
    out: list[str] = []
    inside = False
    for line in source.split("\n"):
        stripped = line.strip()
        if not inside and stripped == begin:
            inside = True
            if replacement is not None:
                indent = line[: len(line) - len(line.lstrip())]
                out.extend(indent + r for r in replacement.split("\n"))
        elif inside and stripped == end:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def strip_hidden_tests(source: str) -> str:
    """A cell's source without its hidden-test regions (what the student and the sandbox see)."""
    return _replace_regions(source, HIDDEN_TESTS, None)


def has_solution(source: str) -> bool:
    return any(line.strip() == SOLUTION[0] for line in source.split("\n"))


def _defined_functions(source: str) -> list[str]:
    return re.findall(r"^def\s+(\w+)", source, flags=re.MULTILINE)


def make_notebooks(path: Path) -> tuple[object, object]:
    """(student notebook, solution notebook) built from one source file."""
    import jupytext
    import nbformat

    name = path.stem
    source_nb = jupytext.read(path)
    student, solution = nbformat.v4.new_notebook(), nbformat.v4.new_notebook()
    for nb, version in ((student, "student"), (solution, "solution")):
        nb.metadata = dict(source_nb.metadata)
        nb.metadata.pop("jupytext", None)
        nb.metadata["subnet_lab"] = {"assignment": name, "version": version}
    for index, cell in enumerate(source_nb.cells):
        text = cell.source
        is_hidden = any(line.strip() == HIDDEN_TESTS[0] for line in text.split("\n"))
        is_answer = has_solution(text)
        grade_id = "_".join(_defined_functions(text)) or f"cell{index}"
        meta = {}
        if is_answer:
            meta = {"tags": ["answer"], "nbgrader": {"grade": False, "grade_id": grade_id, "locked": False,
                                                     "schema_version": 3, "solution": True}}
        elif is_hidden:
            meta = {"tags": ["hidden_tests"], "nbgrader": {"grade": True, "grade_id": f"tests_{index}", "locked": True,
                                                           "points": 0, "schema_version": 3, "solution": False}}
        make = nbformat.v4.new_code_cell if cell.cell_type == "code" else nbformat.v4.new_markdown_cell
        solution.cells.append(make(text, metadata=meta))  # the instructor's version keeps everything
        student_text = strip_hidden_tests(text)
        stub = CODE_STUB if cell.cell_type == "code" else MARKDOWN_STUB
        student_text = _replace_regions(student_text, SOLUTION, stub).strip("\n")
        if student_text.strip():
            student.cells.append(make(student_text, metadata=meta if is_answer else {}))
    return student, solution


def build(out: Path) -> list[Path]:
    """Write every student and solution notebook under ``out``; return the student notebooks' paths."""
    import nbformat

    (out / "solutions").mkdir(parents=True, exist_ok=True)
    written = []
    for path in sources():
        student, solution = make_notebooks(path)
        nbformat.write(student, out / f"{path.stem}.ipynb")
        nbformat.write(solution, out / "solutions" / f"{path.stem}.ipynb")
        written.append(out / f"{path.stem}.ipynb")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessons.assignments.build", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/assignments"), help="output folder (default %(default)s)")
    args = parser.parse_args(argv)
    for path in build(args.out):
        print(f"wrote {path} (solutions in {args.out / 'solutions'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
