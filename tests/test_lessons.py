"""Every lesson executes top to bottom in fast mode, and its widgets respond headlessly.

The lessons are kept as jupytext percent-format sources; here they are converted to
notebooks and run in a real Jupyter kernel with nbclient, exactly as a student would.
"""

from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))

# Cells appended to a lesson to drive its widgets as a student would: set values, press the button.
WIDGET_CHECKS = {
    "01_teacher_student.py": """
lam_slider.value = 1e-2
optimizer_buttons.value = "sgd"
steps_slider.value = 200
train_button.click()
run = last_run["result"]
assert (run.config.lam, run.config.optimizer, run.config.steps) == (1e-2, "sgd", 200), run.config
assert len(run.history.loss) == 200
assert len(last_run["figure"].axes) == 3 and last_run["figure"].axes[1].lines
zero_box.value = True
train_button.click()
assert last_run["result"].config.lam == 0.0
""",
}


def test_every_lesson_has_a_widget_check() -> None:
    assert LESSONS, "no lesson sources found"
    assert {p.name for p in LESSONS} == set(WIDGET_CHECKS)


@pytest.mark.parametrize("source", LESSONS, ids=lambda p: p.stem)
def test_lesson_executes_in_fast_mode(source: Path) -> None:
    nb = jupytext.read(source)
    nb.cells.append(nbformat.v4.new_code_cell(WIDGET_CHECKS[source.name]))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for cell in nb.cells for o in cell.get("outputs", []))
    assert images >= 3, "the lesson should show its plots"
