"""The import graph of the project: layers only import downwards, and there is no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from i2dl.config import ROOT_DIR

PACKAGES = ("i2dl", "models", "datamodules")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    """Module -> project modules it imports (any import statement, at any depth)."""
    files = [p for pkg in PACKAGES for p in sorted((ROOT_DIR / pkg).rglob("*.py"))]
    names = {_module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t in names:
                    deps.add(t)
        graph[_module_name(path)] = deps - {_module_name(path)}
    return graph


def test_graph_covers_the_project() -> None:
    graph = _graph()
    assert "i2dl.stages.train" in graph and "models.base" in graph
    for pkg in ("samples", "maps", "evaluation", "training", "features", "io", "stages"):
        assert any(m.startswith(f"i2dl.{pkg}.") for m in graph), pkg
    assert "i2dl.stages.prepare" in graph["i2dl.stages.train"]


def test_no_import_cycle() -> None:
    graph = _graph()
    # a cycle through a package's __init__ re-export is a cycle too
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


#: (importer prefix, forbidden prefixes): lower layers never import higher ones. The
#: packages follow the data: io (files) < features < samples (reference, split, store) <
#: maps (window engine, products) < training (build, loops) < stages < cli; evaluation
#: (metrics, reports) reads run folders only; models know tensors, datamodules the store.
_ABOVE_SAMPLES = ("i2dl.training", "i2dl.evaluation", "i2dl.stages", "i2dl.cli", "models",
                  "datamodules")
FORBIDDEN = [
    ("i2dl.io", ("i2dl.features", "i2dl.samples", "i2dl.maps", "i2dl.builders",
                 *_ABOVE_SAMPLES)),
    ("i2dl.features", ("i2dl.samples", "i2dl.maps", "i2dl.builders", *_ABOVE_SAMPLES)),
    ("i2dl.samples", _ABOVE_SAMPLES),
    ("i2dl.maps", _ABOVE_SAMPLES),
    ("i2dl.evaluation", ("i2dl.features", "i2dl.samples", "i2dl.maps", "i2dl.training",
                         "i2dl.stages", "i2dl.cli", "models", "datamodules")),
    ("i2dl.evaluation.metrics", ("models", "datamodules", "i2dl.io", "i2dl.stages")),
    ("i2dl.training", ("i2dl.stages", "i2dl.cli", "i2dl.builders")),
    ("models", ("datamodules", "i2dl.samples", "i2dl.training", "i2dl.maps", "i2dl.stages",
                "i2dl.cli", "i2dl.io.raster", "i2dl.io.vector")),
    ("datamodules", ("models", "i2dl.training", "i2dl.maps", "i2dl.evaluation", "i2dl.stages",
                     "i2dl.cli")),
]


@pytest.mark.parametrize(("importer", "forbidden"), FORBIDDEN)
def test_layers_only_import_downwards(importer: str, forbidden: tuple[str, ...]) -> None:
    bad = [
        f"{mod} imports {dep}"
        for mod, deps in _graph().items()
        if mod == importer or mod.startswith(importer + ".")
        for dep in deps
        if any(dep == f or dep.startswith(f + ".") for f in forbidden)
    ]
    assert not bad, "\n".join(bad)


def test_only_the_cli_and_stages_import_stages() -> None:
    bad = [
        f"{mod} imports {dep}"
        for mod, deps in _graph().items()
        if not (mod == "i2dl.cli" or mod.startswith("i2dl.stages"))
        for dep in deps
        if dep.startswith("i2dl.stages")
    ]
    assert not bad, "\n".join(bad)


def test_a_stage_imports_no_other_stage_but_the_main_job() -> None:
    """Shared helpers live below the stages; only ``train`` (the main job) calls stages."""
    bad = [
        f"{mod} imports {dep}"
        for mod, deps in _graph().items()
        if mod.startswith("i2dl.stages.") and mod != "i2dl.stages.train"
        for dep in deps
        if dep.startswith("i2dl.stages.") and dep != mod
    ]
    assert not bad, "\n".join(bad)


def test_a_shadowing_models_folder_is_a_clear_error(tmp_path: Path) -> None:
    """A user's own ``models/`` in the working directory is not silently imported."""
    import subprocess
    import sys

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    proc = subprocess.run(
        [sys.executable, "-c", "import i2dl"], cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "PackageShadowedError" in proc.stderr
    assert str(tmp_path / "models" / "__init__.py") in proc.stderr
    assert str(ROOT_DIR / "models" / "__init__.py") in proc.stderr
    ok = subprocess.run([sys.executable, "-c", "import i2dl"], cwd=ROOT_DIR, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
