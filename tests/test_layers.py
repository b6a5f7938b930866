"""The layers of docs/ARCHITECTURE.md hold: core at the bottom, training and serving peers,
no import cycles between any two modules, and a serving process that never loads torch.

``make lint`` checks the same contracts with import-linter (pyproject.toml); these tests
keep them in the suite too, with messages that name the offending imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "training", "serving", "benchmarks")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """Every import of the project's packages, function-level imports included."""
    return grimp.build_graph(*PACKAGES)


def _imports_between(graph: grimp.ImportGraph, importer: str, imported: str) -> list[str]:
    found = graph.find_matching_direct_imports(import_expression=f"{importer}.** -> {imported}.**")
    found += graph.find_matching_direct_imports(import_expression=f"{importer}.** -> {imported}")
    return sorted(f"{i['importer']} -> {i['imported']}" for i in found)


@pytest.mark.parametrize(
    ("importer", "imported"),
    [("core", "training"), ("core", "serving"), ("training", "serving"), ("serving", "training")],
)
def test_layer_is_not_crossed(graph: grimp.ImportGraph, importer: str, imported: str) -> None:
    assert _imports_between(graph, importer, imported) == []


def find_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Depth-first search over the module graph; every back edge closes a cycle."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for child in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(child) == 1:
                cycles.append(path[path.index(child) :] + [child])
            elif child not in state:
                visit(child, [*path, child])
        state[module] = 2

    for module in sorted(graph.modules):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_import_cycle_anywhere(graph: grimp.ImportGraph) -> None:
    cycles = find_cycles(graph)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_search_finds_a_planted_cycle() -> None:
    planted = grimp.ImportGraph()
    for importer, imported in [("a.x", "a.y"), ("a.y", "a.z"), ("a.z", "a.x"), ("a.z", "b")]:
        planted.add_import(importer=importer, imported=imported)
    assert find_cycles(planted) == [["a.x", "a.y", "a.z", "a.x"]]


def top_level_packages_loaded(imports: str, heavy: set[str]) -> list[str]:
    """Which of ``heavy`` a fresh interpreter has loaded after ``imports``."""
    code = (
        f"import json, sys; {imports}; print(json.dumps(sorted("
        f"{{m.split('.')[0] for m in sys.modules}} & set({sorted(heavy)!r}))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_serving_server_loads_no_torch() -> None:
    """A serving process imports neither torch nor the sentence encoder (serving-only
    installs have neither), nor any training module."""
    imports = "import serving.server, serving.__main__, serving.supervisor, serving.client"
    heavy = {"torch", "sentence_transformers", "training", "onnx"}
    assert top_level_packages_loaded(imports, heavy) == []


def test_core_loads_no_heavy_dependency() -> None:
    imports = "import core.contract, core.rerank, core.schema, core.ids, core.files, core.cli"
    heavy = {"torch", "feast", "grpc", "onnxruntime", "sqlalchemy", "training", "serving"}
    assert top_level_packages_loaded(imports, heavy) == []


def test_the_probe_sees_a_loaded_package() -> None:
    assert top_level_packages_loaded("import sqlalchemy", {"sqlalchemy", "torch"}) == ["sqlalchemy"]
