"""The stage contract's names are spelled in pipeline/tracking/keys.py only."""

from __future__ import annotations

import ast
import json

import pytest

from pipeline.tracking import keys
from tests.conftest import PROJECT_ROOT

# Namespaced tag keys and artifact paths: distinctive enough that any equal literal is a second spelling.
# (Plain words such as "champion" or "model" also name other things, so they are not searched for.)
CONTRACT = {
    value: name
    for name, value in vars(keys).items()
    if name.isupper() and isinstance(value, str) and ("." in value or "/" in value)
}


def python_sources():
    """Production code, benchmarks, scripts and the test helpers (test modules may spell values out)."""
    for folder in ("pipeline", "bench", "scripts"):
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            if path != PROJECT_ROOT / "pipeline" / "tracking" / "keys.py":
                yield path, path.read_text(encoding="utf-8")
    for path in sorted((PROJECT_ROOT / "tests").rglob("*.py")):
        if not path.name.startswith("test_"):
            yield path, path.read_text(encoding="utf-8")
    notebook = json.loads((PROJECT_ROOT / "notebooks" / "results.ipynb").read_text(encoding="utf-8"))
    cells = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    code = "\n".join(line for cell in cells for line in cell.splitlines() if not line.startswith("%"))
    yield PROJECT_ROOT / "notebooks" / "results.ipynb", code


def contract_literals(source: str) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return sorted(
        (node.lineno, node.col_offset, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in CONTRACT
        and id(node) not in docstrings
    )


def test_the_contract_has_distinct_names():
    assert len(CONTRACT) > 40
    values = [value for name, value in vars(keys).items() if name.isupper() and isinstance(value, str)]
    duplicates = {value for value in values if values.count(value) > 1}
    # Deliberate aliases: version tags and model metadata named after the metric or value they hold,
    # and the families artifact beside the families metadata key.
    aliases = {
        keys.METRIC_TEST_ROC_AUC,
        keys.METRIC_TEST_EXPECTED_COST,
        keys.VTAG_THRESHOLD,
        keys.VTAG_RESEARCH_RUN,
        keys.META_FAMILIES,
    }
    assert duplicates <= aliases, duplicates - aliases


@pytest.mark.parametrize("path_and_source", list(python_sources()), ids=lambda item: str(item[0].name))
def test_no_contract_literal_outside_keys(path_and_source):
    path, source = path_and_source
    found = contract_literals(source)
    spelled = [f"line {line}: {value!r} (use keys.{CONTRACT[value]})" for line, _, value in found]
    assert not spelled, f"{path.relative_to(PROJECT_ROOT)} spells the stage contract itself: {spelled}"


def test_the_check_finds_a_second_spelling():
    source = 'tags = {"pipeline.stage": "research"}\nartifact = "evaluation/test_scores.csv"\n'
    assert [value for _, _, value in contract_literals(source)] == [keys.TAG_STAGE, keys.ARTIFACT_TEST_SCORES]
