"""docs/code-map.md names every module, and the import graph keeps its layers (no cycle, no upward import)."""

from __future__ import annotations

import ast
import re

import pytest

from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "pipeline"
CODE_MAP = PROJECT_ROOT / "docs" / "code-map.md"
COMMANDS = "pipeline.stages."
ENTRY_POINTS = {"pipeline.__main__", "pipeline.cli"}


def module_name(path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def project_imports(name: str) -> set[str]:
    """Project modules ``name`` imports anywhere in its body (lazy imports count: they are still uses)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], base]).strip(".")
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            if target in MODULES and target != name:
                found.add(target)
    # Importing a submodule runs its package's __init__, which imports nothing: not an edge worth drawing.
    return {target for target in found if MODULES[target].name != "__init__.py"}


GRAPH = {name: project_imports(name) for name in MODULES}


def test_every_module_is_in_the_code_map_and_every_entry_exists():
    text = CODE_MAP.read_text(encoding="utf-8")
    listed = set(re.findall(r"`(pipeline/[\w/]+\.py)`", text))
    modules = {path.relative_to(PROJECT_ROOT).as_posix() for path in MODULES.values()}
    assert modules - listed == set(), "modules missing from docs/code-map.md"
    assert listed - modules == set(), "docs/code-map.md lists modules that do not exist"


def test_import_graph_has_no_cycle():
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                cycle = [*path[path.index(target) :], target] if target in path else [name, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_libraries_never_import_commands_and_commands_never_import_each_other(name):
    commands = {target for target in GRAPH[name] if target.startswith(COMMANDS)}
    entry_points = GRAPH[name] & ENTRY_POINTS
    if name in ENTRY_POINTS:
        return
    assert not entry_points, f"{name} imports the command line"
    assert not commands, f"{name} imports command module(s) {sorted(commands)}"


def test_the_stage_contract_module_imports_nothing():
    tree = ast.parse(MODULES["pipeline.tracking.keys"].read_text(encoding="utf-8"))
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_every_test_folder_is_a_package():
    # Without __init__.py, two test files of one name (unit and integration) collide at collection.
    tests_root = PROJECT_ROOT / "tests"
    folders = {path.parent for path in tests_root.rglob("test_*.py")}
    missing = sorted(
        str(folder.relative_to(PROJECT_ROOT)) for folder in folders if not (folder / "__init__.py").exists()
    )
    assert missing == []
