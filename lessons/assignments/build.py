"""Build an assignment's notebooks from its source (``lessons.assignments.spec`` says the format).

* ``build(out)``: the instructor's folder (``make assignments``): ``<name>.ipynb`` (the student
  version), ``solutions/<name>.ipynb`` (complete) and ``<name>_cases.pt`` in both, for trying
  things out. Never hand this folder out: it holds the solutions.
* ``handout(out)``: what students get (``make handout``): the student notebooks, the visible
  cases with their expected outputs (``<name>_cases.pt``, plain tensors read with
  ``weights_only=True``), ``checking.py`` (torch and the standard library only) and a README;
  plus ``<out>.zip``. No line of a reference solution or hidden test is in it (tests scan it).

The student version of a cell: a solution region becomes ``raise NotImplementedError()``
(code) or ``YOUR ANSWER HERE`` (markdown), tagged ``answer`` with nbgrader's metadata; the
``grading`` cells (case definitions, hidden tests) are left out; points are filled in.

    python -m lessons.assignments.build [--out build/assignments] [--handout handout] [--hidden DIR]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from lessons.assignments.spec import (
    HERE,
    SOLUTION,
    Assignment,
    load,
    read,
    remove_region,
    render_points,
    sources,
    tags,
)
from lessons.checking import save_cases

CHECKING = HERE.parent / "checking.py"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
MARKDOWN_STUB = "YOUR ANSWER HERE"
HANDOUT_README = """# Assignments

Open each notebook in Jupyter (`pip install torch jupyterlab`, then `jupyter lab` in this folder).
Write your code where it says `raise NotImplementedError()`, your answers where it says
`YOUR ANSWER HERE`, and run the check cells: they compare your functions with the expected
outputs in `<assignment>_cases.pt` (`checking.py` does the comparing). Hidden cases are graded
later, so make your functions right, not just the visible cases. Cells marked *explore*
use the Subnet Lab package (`pip install -e .` in the lab's repository); graded functions may
use torch only.

{table}
"""


def notebooks(spec: Assignment) -> tuple[object, object]:
    """(student notebook, instructor notebook) of one assignment."""
    import nbformat

    source = read(spec.source)
    student, solution = nbformat.v4.new_notebook(), nbformat.v4.new_notebook()
    for nb, version in ((student, "student"), (solution, "solution")):
        nb.metadata = {k: v for k, v in source.metadata.items() if k != "jupytext"}
        nb.metadata["subnet_lab"] = {"assignment": spec.name, "version": version}
    answer_to = None  # the open question the next markdown solution answers
    for cell in source.cells:
        text = render_points(cell.source, spec) if cell.cell_type == "markdown" else cell.source
        make = nbformat.v4.new_code_cell if cell.cell_type == "code" else nbformat.v4.new_markdown_cell
        meta = {"tags": sorted(tags(cell))} if tags(cell) else {}
        is_answer = SOLUTION[0] in text
        if is_answer:
            grade_id = cell.metadata.get("question") or answer_to or "answer"
            meta = {"tags": ["answer"], "nbgrader": {"grade": False, "grade_id": grade_id, "locked": False,
                                                     "schema_version": 3, "solution": True}}
        answer_to = cell.metadata.get("hand_graded", None if is_answer else answer_to)
        solution.cells.append(make(text, metadata=meta))
        if "grading" in tags(cell):
            continue
        stub = CODE_STUB if cell.cell_type == "code" else MARKDOWN_STUB
        student.cells.append(make(remove_region(text, SOLUTION, stub).strip("\n"), metadata=meta))
    return student, solution


def write_cases(spec: Assignment, path: Path) -> None:
    """The visible cases with their expected outputs, as shipped data."""
    save_cases(path, {q.function: [g.case for g in q.cases if not g.hidden] for q in spec.questions})


def build(out: Path, hidden: Path | None = None, folder: Path = HERE) -> list[Path]:
    """The instructor's folder: student and solution notebooks and the cases; returns the student notebooks."""
    import nbformat

    (out / "solutions").mkdir(parents=True, exist_ok=True)
    written = []
    for path in sources(folder):
        spec = load(path, hidden)
        student, solution = notebooks(spec)
        nbformat.write(student, out / f"{spec.name}.ipynb")
        nbformat.write(solution, out / "solutions" / f"{spec.name}.ipynb")
        for where in (out, out / "solutions"):
            write_cases(spec, where / f"{spec.name}_cases.pt")
        written.append(out / f"{spec.name}.ipynb")
    return written


def handout(out: Path, hidden: Path | None = None, folder: Path = HERE) -> Path:
    """The students' folder and its zip (``<out>.zip``); returns the zip's path."""
    import nbformat

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rows = ["| notebook | lesson | points | about |", "| --- | --- | --- | --- |"]
    for path in sources(folder):
        spec = load(path, hidden)
        student, _ = notebooks(spec)
        nbformat.write(student, out / f"{spec.name}.ipynb")
        write_cases(spec, out / f"{spec.name}_cases.pt")
        worth = f"{spec.points} auto + {spec.hand_points} by hand"
        rows.append(f"| {spec.name}.ipynb | {spec.lesson} | {worth} | {spec.title} (~{spec.minutes} min) |")
    shutil.copy(CHECKING, out / "checking.py")
    (out / "README.md").write_text(HANDOUT_README.format(table="\n".join(rows)))
    return Path(shutil.make_archive(str(out), "zip", root_dir=out.parent, base_dir=out.name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessons.assignments.build", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="the instructor's folder (solutions included)")
    parser.add_argument("--handout", type=Path, help="the students' folder (and a zip beside it)")
    parser.add_argument("--hidden", type=Path, help="a folder of private hidden tests, <assignment>.py each")
    parser.add_argument("--assignments", type=Path, default=HERE, help="the folder of sources (default %(default)s)")
    args = parser.parse_args(argv)
    if args.out is None and args.handout is None:
        parser.error("say --out DIR (instructor's build) and/or --handout DIR (students' folder)")
    if args.hidden is not None and not args.hidden.is_dir():
        parser.error(f"--hidden {args.hidden}: not a folder")
    if args.out is not None:
        for path in build(args.out, args.hidden, args.assignments):
            print(f"wrote {path} (solutions in {args.out / 'solutions'}: keep them)")
    if args.handout is not None:
        print(f"wrote {args.handout}/ and {handout(args.handout, args.hidden, args.assignments)} for the students")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
