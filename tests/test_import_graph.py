"""training/ imports no module that imports it back (DESIGN.md: no import circles).

grimp reads every import statement, function-level ones included, so a cycle hidden
behind an import inside a function fails this test too.
"""

from __future__ import annotations

import grimp


def training_cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """One cycle (a -> b -> ... -> a) per direct import a -> b that b imports back."""
    cycles = []
    for importer in sorted(m for m in graph.modules if m.startswith("training.")):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported.startswith("training.") and graph.chain_exists(imported, importer):
                cycles.append((importer, *graph.find_shortest_chain(imported, importer)))
    return cycles


def test_training_modules_import_each_other_without_cycles() -> None:
    graph = grimp.build_graph("training")
    assert {"training.train", "training.evaluate", "training.checkpoint"} <= graph.modules
    assert training_cycles(graph) == []
    # the check itself finds a cycle when there is one
    graph.add_import(importer="training.checkpoint", imported="training.evaluate")
    assert ("training.checkpoint", "training.evaluate", "training.checkpoint") in (
        training_cycles(graph)
    )
