"""What "a lesson runs" means, checked the same way by both lesson tests.

A lesson is executed once per test run: in a real browser by ``tests/test_browser.py`` where
Chromium, its driver and Selenium are installed (CI installs them), else headlessly with nbclient
by ``tests/test_lessons.py``. Both append the lesson's widget-driving cell below and apply
:func:`check_executed` to the executed cells, so the assertions are the same either way.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def browser_runs_the_lessons() -> bool:
    """True where tests/test_browser.py can run (the system Chromium, its driver and Selenium), unless
    ``LAB_TEST_NBCLIENT=1`` asks for the nbclient run of tests/test_lessons.py as well."""
    if os.environ.get("LAB_TEST_NBCLIENT") == "1":
        return False
    return bool(CHROMIUM and CHROMEDRIVER and importlib.util.find_spec("selenium"))


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
    "02_modular_subnetworks.py": """
subnet_pick.value = "t1"
mode_pick.value = "mean"
scores = last_ablation["scores"]
assert set(scores) == set(report.world.targets)
assert scores["t1"] < min(v for t, v in scores.items() if t != "t1"), scores
assert last_ablation["figure"].axes[0].patches
subnet_pick.value = "none"
assert last_ablation["scores"]["t1"] > scores["t1"]
way_pick.value = "freeze A's core"
density_slider.value = 0.1
units_box.value = False
tried_before = len(tried)  # the browser test presses the main button before this cell
finetune_button.click()
assert len(tried) == tried_before + 1 and tried[-1][0].endswith("entries")
assert 0.0 <= last_finetune["target"] <= 1.0 and 0.0 <= last_finetune["retained"] <= 1.0
entries_only = last_finetune["mask"]
assert modular_isolation.trunk_share(iso.pretrained, entries_only) > modular_isolation.trunk_share(
    iso.pretrained, modular_isolation.way_mask("freeze A's core", modular_isolation.a_core(iso.pretrained, 0.1),
                                               iso.subnetwork, cfg.task_b))
""",
    "03_choosing_the_weights.py": """
criterion_menu.value = "snip"
density_slider.value = 0.01
scope_buttons.value = "per_tensor"
train_button.click()
row = last_run["row"]
assert (row.criterion, row.density, row.scope) == ("snip", 0.01, "per_tensor"), row
assert row.selected == 44 and last_run["result"].config.steps == cfg.steps
assert len(last_run["figure"].axes) == 2 and last_run["figure"].axes[0].lines
criterion_menu.value = "lift"
rank_slider.value = 2
scope_buttons.value = "global"
train_button.click()
assert last_run["row"].criterion == "lift" and last_run["row"].scope == "global"
""",
    "04_prune_and_recover.py": """
sparsity_slider.value = 0.8
method_dropdown.value = "one-shot + recovery"
run_button.click()
assert last_run["method"] == "one-shot + recovery" and abs(last_run["sparsity"] - 0.8) < 1e-9, last_run
assert last_run["accuracy"] > 0.9 * dense.accuracy, last_run
assert len(last_run["figure"].axes) == 1 and len(last_run["figure"].axes[0].lines) >= 8
method_dropdown.value = "IMP, rewind"
sparsity_slider.value = 0.9
run_button.click()
assert last_run["method"] == "IMP, rewind" and abs(last_run["sparsity"] - 0.9) < 1e-9
assert dense.world.chance < last_run["accuracy"] <= 1.0
method_dropdown.value = "2:4 + recovery"
run_button.click()
assert last_run["method"] == "2:4 + recovery" and last_run["sparsity"] == 0.5
""",
    "05_scaling_up.py": """
method_menu.value = "magnitude"
density_slider.value = "d0.01"
target_menu.value = "facts_b"
run_button.click()
row = last_run["row"]
assert (row["method"], row["budget"], last_run["target"]) == ("magnitude", "d0.01", "facts_b"), last_run
assert row["trainable"] == finetune.budget_count(setups["facts_b"], "d0.01")
assert 0.0 <= row["target_test"] <= 1.0 and 0.0 <= row["retention"] <= 1.0
assert len(last_run["figure"].axes) == 1 and last_run["figure"].axes[0].collections
method_menu.value = "lora"
target_menu.value = cfg.target
run_button.click()
assert last_run["row"]["budget"] == "lora_equal" and last_run["row"]["trainable"] == rows["lora"]["trainable"]
assert set(rows) == set(SHOWN) and study.runs[0.0].loss[-1] < study.runs[0.0].loss[0]
assert "tiny GPT, facts_b (far: new facts)" in traced  # the committed frontier benchmark is shown
scale_menu.value = "tiny GPT, add2 (near: a variant of increment)"
methods_box.value = ("full", "lora")
frontier_button.click()
assert last_frontier["scale"].startswith("tiny GPT, add2") and set(last_frontier["methods"]) == {"full", "lora"}
assert budget_menu.value == "lora_equal" and len(last_frontier["figure"].axes[0].lines) == 2  # one frontier per method
assert {s.folder.name for s in across} >= {"frontier_tiny_add2", "frontier_tiny_facts_b"}  # the cross-scale cell
assert "LIFT's frontier dominance on `add2`" in across_verdict and "Not measured" not in across_verdict.split("\\n")[0]
""",
    "06_rl_subnetworks.py": """
algorithm_menu.value = "sft"
dtype_buttons.value = "float32"
lr_slider.value = 1e-6
steps_slider.value = 4
run_button.click()
assert (last_run["algorithm"], last_run["weights"], last_run["lr"], last_run["steps"]) == ("sft", "float32", 1e-6, 4)
assert 0.0 <= last_run["row"]["update_sparsity"] <= 1.0 and last_run["figure"].axes[0].patches
assert set(study["runs"]) == {f"{a}/{w}" for a in cfg.algorithms for w in cfg.weights}
assert len(study["verdicts"]) >= 6
""",
    "07_principal_weights.py": """
rank_slider.value = 3
density_slider.value = 0.1
train_button.click()
run = last_run["study"]
assert run.density == 0.1 and [r.name for r in run.rows] == ["full FT", "magnitude", "LIFT r=3"], run.rows
assert len(last_run["figure"].axes) == 2
""",
    "08_two_four.py": """
layer_pick.value = ("fc2", "fc3")
score_pick.value = "magnitude"
run_button.click()
run = last_run["study"]
assert last_run["modules"] == ("fc2", "fc3") and run.layers == ["fc2", "fc3"], last_run
assert run.mean("2:4 one-shot") > result.mean("2:4 one-shot")  # leaving the 16-input layer dense costs less
assert run.mean("2:4 + fine-tuning") > run.mean("2:4 one-shot") > world.chance
assert len(last_run["figure"].axes) == 1
layer_pick.value = tuple(names)
score_pick.value = "random"
run_button.click()
assert last_run["criterion"] == "random" and last_run["study"].layers == names
assert last_run["study"].mean("2:4 one-shot") < result.mean("2:4 one-shot")  # magnitude beats random
""",
}


def check_executed(name: str, cells: Sequence[Mapping[str, Any]]) -> None:
    """The executed lesson ``name`` (its cells as nbformat dicts with ``outputs`` and the tags under
    ``tags`` or ``metadata.tags``): no error in an ordinary cell (the widget-driving cell included);
    at least two checked exercises, whose check cells fail on the untouched stubs with the check's own
    "not implemented yet" message only; at least three figures."""
    def tags(cell: Mapping[str, Any]) -> list[str]:
        return cell.get("tags") or cell.get("metadata", {}).get("tags", [])

    def errors(checks: bool) -> list[Mapping[str, Any]]:
        return [o for c in cells if ("raises-exception" in tags(c)) == checks
                for o in c.get("outputs", []) if o.get("output_type") == "error"]

    shown = [f"{o.get('ename')}: {o.get('evalue')}" for o in errors(checks=False)]
    assert not shown, f"{name}: error output: {shown}"
    stubs = errors(checks=True)
    assert len(stubs) >= 2, f"{name}: every lesson has at least two checked exercises, found {len(stubs)} failing checks"
    assert all(o["ename"] == "AssertionError" and "not implemented yet" in o["evalue"] for o in stubs), (
        f"{name}: a check failed with more than the stub's message: {stubs}")
    images = sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))
    assert images >= 3, f"{name}: the lesson should show its plots, it shows {images}"
