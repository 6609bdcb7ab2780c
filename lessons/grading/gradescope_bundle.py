"""Gradescope's autograder bundle for one assignment: ``make gradescope ASSIGNMENT=a1_masks``.

Gradescope runs ``setup.sh`` once when it builds the autograder image and ``run_autograder``
for every submission, with the submission under ``/autograder/submission/`` and the results
expected in ``/autograder/results/results.json`` (Gradescope's "autograder specifications").
The bundle holds the lab's source (the grader needs the reference solutions and the hidden
tests, which stay on Gradescope's side), the hidden-test folder if one is given, and the two
scripts. Grading inside Gradescope's container uses bubblewrap like everywhere else; where
the container cannot build a sandbox, run_autograder says so in the results instead of
grading untrusted code unisolated.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from lessons.assignments.spec import HERE, find, load

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("lessons", "sparsity", "toys", "scaleup")

SETUP = """#!/usr/bin/env bash
# Gradescope runs this once, as root, in its Ubuntu image.
set -euo pipefail
apt-get update && apt-get install -y bubblewrap python3-venv
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install -q --index-url https://download.pytorch.org/whl/cpu torch
/autograder/venv/bin/pip install -q jupytext nbformat
/autograder/venv/bin/pip install -q -e /autograder/source/lab
"""

RUN = """#!/usr/bin/env bash
# Gradescope runs this for every submission.
set -uo pipefail
cd /autograder/source/lab
notebook=$(find /autograder/submission -maxdepth 2 -name '*.ipynb' -type f | head -n 1)
if [ -z "$notebook" ]; then
  echo '{{"score": 0, "output": "no .ipynb file in the submission"}}' > /autograder/results/results.json
  exit 0
fi
/autograder/venv/bin/python -m lessons.grade "$notebook" --assignment {name} {hidden} \\
  --gradescope /autograder/results/results.json \\
  || echo '{{"score": 0, "output": "the grader could not run; see the autograder log"}}' > /autograder/results/results.json
"""


def bundle(name: str, out: Path, hidden: Path | None = None) -> Path:
    """Write ``<out>/<name>_gradescope.zip``; returns its path."""
    load(find(name), hidden)  # refuse a broken assignment before writing anything
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lab = root / "lab"
        for package in PACKAGES:
            shutil.copytree(REPO / package, lab / package, ignore=shutil.ignore_patterns("__pycache__", "*.ipynb"))
        shutil.copy(REPO / "pyproject.toml", lab / "pyproject.toml")
        shutil.copy(REPO / "README.md", lab / "README.md")
        flag = ""
        if hidden is not None:
            (root / "hidden").mkdir()
            shutil.copy(hidden / f"{name}.py", root / "hidden" / f"{name}.py")
            flag = "--hidden /autograder/source/hidden"
        (root / "setup.sh").write_text(SETUP)
        (root / "run_autograder").write_text(RUN.format(name=name, hidden=flag))
        for script in ("setup.sh", "run_autograder"):
            (root / script).chmod(0o755)
        out.mkdir(parents=True, exist_ok=True)
        return Path(shutil.make_archive(str(out / f"{name}_gradescope"), "zip", root_dir=root))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessons.grading.gradescope_bundle", description=__doc__.split("\n")[0])
    parser.add_argument("assignment", help="e.g. a1_masks")
    parser.add_argument("--out", type=Path, default=Path("build/gradescope"),
                        help="the folder the bundle's zip is written to (default: %(default)s)")
    parser.add_argument("--hidden", type=Path, help="a folder of private hidden tests, <assignment>.py each")
    args = parser.parse_args(argv)
    try:
        path = bundle(args.assignment, args.out, args.hidden)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {path}: upload it as the autograder of {args.assignment} (sources from {HERE})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
