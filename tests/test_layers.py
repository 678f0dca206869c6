"""The package's import map, read from the source with ``ast``: each sub-package imports only
lower layers (so the two drivers, megatron-core's loop in ``training/`` and the Megatron-LM
adapter in ``megatron_lm/``, never import each other), and no module-level import cycle.
"""

import ast
import os
from typing import Dict, List, Set, Tuple

PACKAGE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "megatron_velocitune"
)

#: Each sub-package's (or top-level module's) layer: pure facts at the bottom, the drivers
#: above the run's control, the tools on top. A new sub-package gets its place here.
LAYERS: Dict[str, int] = {
    "core": 0,
    "device": 0,
    "data": 1,
    "laws": 1,
    "control": 2,
    "training": 3,
    "megatron_lm": 3,
    "comparison": 3,
    "conversion": 4,
    "cli": 5,
    "launch": 5,
}


def _modules() -> Dict[str, ast.Module]:
    """Every module of the package by dotted name, parsed."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                rel = rel[: -len(".__init__")] if rel.endswith(".__init__") else rel
                with open(path, encoding="utf-8") as f:
                    found[rel] = ast.parse(f.read(), path)
    return found


def _imports(module: str, tree: ast.Module, top_level_only: bool) -> Set[str]:
    """The ``megatron_velocitune`` modules ``module`` imports (absolute and relative)."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    is_package = module.count(".") == 0 or os.path.isdir(
        os.path.join(os.path.dirname(PACKAGE), *module.split("."))
    )
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out |= {f"{name}.{a.name}" for a in node.names}
    return {n for n in out if n.startswith("megatron_velocitune.")}


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_part_has_a_layer_and_imports_only_lower_ones():
    modules = _modules()
    unplaced = sorted({_part(m) for m in modules if _part(m) and _part(m) not in LAYERS})
    assert not unplaced, f"give these a layer in LAYERS: {unplaced}"
    wrong: List[Tuple[str, str]] = []
    for module, tree in modules.items():
        mine = _part(module)
        for imported in _imports(module, tree, top_level_only=False):
            theirs = _part(imported)
            if mine and theirs and theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                wrong.append((module, imported))
    assert wrong == [], f"imports of a same or higher layer: {wrong}"


def test_the_two_drivers_never_import_each_other():
    for module, tree in _modules().items():
        parts = {_part(n) for n in _imports(module, tree, top_level_only=False)}
        if _part(module) == "training":
            assert "megatron_lm" not in parts, module
        if _part(module) == "megatron_lm":
            assert "training" not in parts, module


def test_no_module_level_import_cycle():
    modules = _modules()
    graph = {
        m: {n for n in _imports(m, t, top_level_only=True) if n in modules and n != m}
        for m, t in modules.items()
    }
    state: Dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(node: str, path: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # A package's __init__ re-exporting its own modules is not a cycle through them.
    real = [
        c
        for c in cycles
        if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))
    ]
    assert real == [], f"module-level import cycles: {real}"
