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
    exercises are the masked step itself, the optimizer benchmark's timed step and the memory tracker's one
    measured step aside)."""
    step_call = re.compile(r"^[^#\n]*\b(opt|optimizer|optim)\.step\(\)", re.MULTILINE)
    allowed = {"sparsity/train.py", "benchmarks/optimizer_step.py", "sparsity/memory.py"}
    callers = sorted(str(p.relative_to(ROOT)) for p in _sources() if step_call.search(p.read_text()))
    assert [c for c in callers if c not in allowed] == [], "train through sparsity.train.fit"
    assert "sparsity/train.py" in callers


def test_the_readme_names_the_extras_the_makefile_installs() -> None:
    extras = re.search(r"^EXTRAS := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert extras, "the Makefile names its extras once, in EXTRAS"
    assert f'pip install -e ".[{extras.group(1)}]"' in (ROOT / "README.md").read_text()
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert set(extras.group(1).split(",")) == declared  # make installs every extra, so make test runs every test


def test_torch_comes_from_the_index_the_makefile_is_told() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^TORCH_INDEX \?=\s*$", makefile, re.MULTILINE)
    assert "pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))" in makefile
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in (ROOT / "README.md").read_text()


def test_make_test_runs_on_every_core_with_xdist_declared() -> None:
    makefile = (ROOT / "Makefile").read_text()
    test_recipe = re.search(r"^test: .*\n\t(.+)$", makefile, re.MULTILINE)
    assert test_recipe and "-m pytest" in test_recipe.group(1) and "-n $(TEST_WORKERS)" in test_recipe.group(1)
    assert re.search(r"^TEST_WORKERS \?= auto$", makefile, re.MULTILINE)  # one worker per core unless told
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert any(req.startswith("pytest-xdist") for req in dev)


def test_the_license_is_mit_and_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_every_console_entry_point_is_a_main_that_takes_argv() -> None:
    import importlib
    import inspect

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = config["project"]["scripts"]
    assert {"subnet-lab-demo", "subnet-lab-compare", "subnet-lab-grade"} <= set(scripts)
    assert config["tool"]["setuptools"]["py-modules"] == ["demo"]  # demo.py sits at the top, outside the packages
    readme = (ROOT / "README.md").read_text()
    for name, target in scripts.items():
        module_name, function = target.split(":")
        main = getattr(importlib.import_module(module_name), function)
        assert list(inspect.signature(main).parameters) == ["argv"], f"{name}: {target} must be main(argv=None)"
        assert inspect.signature(main).parameters["argv"].default is None
        assert f"`{name}`" in readme, f"README.md does not name the command {name}"
