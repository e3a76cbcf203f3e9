"""The package's import graph, read from its `import` statements: no circle, nothing upward.

Every ``import``/``from … import`` counts, at module level, inside functions (the lazy imports
that keep ``--help`` fast) and under ``TYPE_CHECKING``. A *unit* is a top-level module or
subpackage (``karst_deploy.bench``, ``karst_deploy.backends``); `LAYERS` puts each unit in a
layer, lowest first, and is the README's module map. A unit may import units of its own or a
lower layer, never a higher one, and the units must not import each other in a circle (within
a layer either). A new module must be placed in the table: the test names it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "karst_deploy"

#: Layers, lowest first: unit names relative to ``karst_deploy`` ("" is the package itself,
#: which holds only ``__version__`` and lazy names). The README's module map mirrors this.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "leaf utilities",
        ("", "errors", "interrupts", "jsonfile", "records", "files", "provenance", "progress",
         "graph_precision", "compare", "data", "doctor", "onnx_file", "threads"),
    ),
    ("timm backbones", ("models",)),
    ("adapters", ("adapters",)),
    ("artifacts and runtimes", ("precision", "backends", "export")),
    ("verification and training", ("parity", "bench", "placement", "train")),
    ("presentation", ("report",)),
    ("demo", ("pipeline", "demo")),
    ("command line", ("cli", "__main__")),
]  # fmt: skip
LAYER_OF = {unit: index for index, (_, units) in enumerate(LAYERS) for unit in units}


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of the package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported(module: str, path: Path) -> set[str]:
    """Every karst_deploy name `module` imports, anywhere in its body (absolute or relative)."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name == "karst_deploy" or name.startswith("karst_deploy.")}


def unit_of(name: str) -> str:
    """``karst_deploy.backends.tensorrt.loader`` → ``backends``; the package itself → ``""``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def unit_graph() -> dict[str, set[str]]:
    """Unit → the other units it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {unit_of(m): set() for m in modules}
    for module, path in modules.items():
        for name in _imported(module, path):
            while name not in modules:  # `from pkg.mod import function` names a module's member
                name = name.rpartition(".")[0]
            if unit_of(name) != unit_of(module):
                graph[unit_of(module)].add(unit_of(name))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, or None (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(unit: str) -> list[str] | None:
        state[unit] = "open"
        stack.append(unit)
        for target in sorted(graph.get(unit, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[unit] = "done"
        stack.pop()
        return None

    for unit in sorted(graph):
        if unit not in state and (found := visit(unit)):
            return found
    return None


def test_every_unit_has_a_layer():
    unplaced = sorted(set(unit_graph()) - set(LAYER_OF))
    assert not unplaced, f"add these to LAYERS (and the README's module map): {unplaced}"


def test_no_unit_imports_a_higher_layer():
    upward = [
        f"{unit or 'karst_deploy'} ({LAYERS[LAYER_OF[unit]][0]}) imports {target} "
        f"({LAYERS[LAYER_OF[target]][0]})"
        for unit, targets in sorted(unit_graph().items())
        for target in sorted(targets)
        if LAYER_OF.get(target, -1) > LAYER_OF.get(unit, len(LAYERS))
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    cycle = _cycle(unit_graph())
    assert cycle is None, " → ".join(cycle or [])


def test_the_command_line_is_alone_on_top():
    """Nothing but ``python -m karst_deploy`` imports the CLI: the library never calls it."""
    assert LAYERS[-1][1] == ("cli", "__main__")
    assert [u for u, targets in unit_graph().items() if "cli" in targets] == ["__main__"]


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"b"}}, ["b", "b"]),
    ],
)
def test_the_cycle_finder_finds_circles(graph, expected):
    assert _cycle(graph) == expected


def test_the_reader_sees_lazy_and_relative_imports(tmp_path):
    module = tmp_path / "mod.py"
    module.write_text(
        "from . import sibling\n"
        "def f():\n"
        "    from karst_deploy.bench import bench\n"
        "    import karst_deploy.report\n"
    )
    assert _imported("karst_deploy.pkg.mod", module) == {
        "karst_deploy.pkg",
        "karst_deploy.pkg.sibling",
        "karst_deploy.bench",
        "karst_deploy.bench.bench",
        "karst_deploy.report",
    }
