"""Set-up stays true: environment.yml lists what pyproject.toml lists; CI calls README's test command."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs |= set(extra)
    return reqs


def _conda_pip_requirements() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip section"
    return set(pip_sections[0])


def test_environment_yml_matches_pyproject() -> None:
    assert _conda_pip_requirements() == _pyproject_requirements()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_packages_are_declared() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # lessons is installed too, so a notebook opened anywhere can import the assignment checks.
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == ["sparsity*", "toys*", "scaleup*", "lessons*"]
    for package in ("sparsity", "toys", "scaleup", "lessons"):
        assert (ROOT / package / "__init__.py").exists()


def test_core_imports_nothing_from_the_other_packages() -> None:
    """sparsity/ is the bottom layer (DESIGN.md): it may not import toys, scaleup or lessons."""
    imports_other = re.compile(r"^\s*(from|import)\s+(toys|scaleup|lessons)\b", re.MULTILINE)
    for path in (ROOT / "sparsity").glob("*.py"):
        assert not imports_other.search(path.read_text()), f"{path.name} imports a package above the core"


SOURCE_FOLDERS = ("sparsity", "toys", "scaleup", "lessons", "benchmarks")


def _sources() -> list[Path]:
    files = [ROOT / "demo.py"]
    for folder in SOURCE_FOLDERS:
        files += [p for p in (ROOT / folder).rglob("*.py") if "assignments" not in p.parts]
    return files


def test_no_source_module_is_over_500_lines() -> None:
    """One concept per module (DESIGN.md): a module that grows past 500 lines is doing several jobs."""
    long = {str(p.relative_to(ROOT)): n for p in _sources() if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"split these modules: {long}"


def test_one_training_loop() -> None:
    """``optimizer.step()`` is called in one training loop, sparsity.train.fit (the assignments, whose
    exercises are the masked step itself, and the optimizer benchmark's timed step aside)."""
    step_call = re.compile(r"^[^#\n]*\b(opt|optimizer|optim)\.step\(\)", re.MULTILINE)
    allowed = {"sparsity/train.py", "benchmarks/optimizer_step.py"}
    callers = sorted(str(p.relative_to(ROOT)) for p in _sources() if step_call.search(p.read_text()))
    assert [c for c in callers if c not in allowed] == [], "train through sparsity.train.fit"
    assert "sparsity/train.py" in callers
