"""The project's import graph, read with ``ast``: no cycle between its modules, and the core stands alone.

Every ``import`` and ``from ... import`` counts, function-local ones included (a cycle closed by a
local import is still a cycle; it only moves the failure to run time). Imports under
``if TYPE_CHECKING:`` never run and are left out. ``from package import name`` is an edge to the
submodule when ``name`` is one, else to the package.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sparsity", "toys", "scaleup", "lessons", "benchmarks")
SCRIPTS = ("demo.py",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    found = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    found.update({_module_name(ROOT / s): ROOT / s for s in SCRIPTS})
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool, modules=()):
    """Every (imported module, line) of a module's syntax tree, local imports included; ``from package
    import name`` gives the submodule when ``modules`` holds it, else the package."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in modules else base), node.lineno
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {project module it imports: the first line importing it}."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(), str(path))
        for target, line in _imports(tree, name, path.name == "__init__.py", modules):
            if target in modules and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None (depth-first search, colours)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_project_has_no_import_cycle():
    graph = import_graph()
    assert "scaleup.finetune" in graph["scaleup.compare"] or "scaleup.bench_config" in graph["scaleup.compare"]
    cycle = find_cycle(graph)
    if cycle:
        steps = [f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle: " + " -> ".join(steps) + f" -> {cycle[-1]}")


def test_the_cycle_finder_finds_a_cycle_closed_by_a_function_local_import():
    tree = ast.parse("def f():\n    from b import x\n")
    edges = {t for t, _ in _imports(tree, "a", False)}
    assert "b" in edges
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import b\n")
    assert "b" not in {t for t, _ in _imports(tree, "a", False)}
    assert find_cycle({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_the_core_imports_nothing_from_the_rest_of_the_lab():
    graph = import_graph()
    outside = {(m, t) for m, edges in graph.items() if m.split(".")[0] == "sparsity"
               for t in edges if t.split(".")[0] != "sparsity"}
    assert not outside, f"sparsity/ imports from the rest of the lab: {sorted(outside)}"


ENTRY_POINTS = ("main", "parse_args")
"""Functions that may read ``LAB_FAST`` (``sparsity.fastmode.fast_mode``): the command lines."""


def _fast_mode_reads(tree: ast.AST):
    """(line, enclosing function name or None) of every ``fast_mode()`` call in a module."""
    def walk(node, func):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call) and getattr(child.func, "id", getattr(child.func, "attr", None)) == "fast_mode":
                yield child.lineno, func
            yield from walk(child, inner)
    yield from walk(tree, None)


def test_only_entry_points_read_fast_mode():
    """Libraries take ``fast`` as an argument; a command line's main (or a lesson, a notebook's top level)
    reads ``LAB_FAST`` once and passes it down."""
    readers = []
    for name, path in _modules().items():
        if name == "sparsity.fastmode" or (name.startswith("lessons.") and name.split(".")[1][:1].isdigit()):
            continue
        readers += [f"{name}:{line} (in {func or 'module level'})"
                    for line, func in _fast_mode_reads(ast.parse(path.read_text())) if func not in ENTRY_POINTS]
    assert not readers, f"fast_mode() read outside an entry point: {readers}"


def test_library_defaults_follow_their_argument_not_the_environment(monkeypatch):
    from scaleup import bench_config, pretrain
    from toys import modular_world, teacher_student_criteria

    monkeypatch.setenv("LAB_FAST", "1")
    assert modular_world.default_config() == modular_world.Config()
    assert modular_world.default_config(fast=True) != modular_world.Config()
    assert pretrain.default_config().steps == 2000 and pretrain.default_config(fast=True).steps == 300
    assert bench_config.default_config().steps == bench_config.BenchConfig().steps
    assert teacher_student_criteria.default_config(fast=True).steps < teacher_student_criteria.default_config().steps
