"""The package's structure: no import cycle (function-level imports counted), every module says
its one job in a docstring, and no module imports another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"unet_deploy": ROOT / "unet_deploy", "unet_deploy.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if pkg == "unet_deploy" and parts[:1] == ["kernels"]:
                continue
            mods[name] = path
    return mods


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if _is_package(module) else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(name: str, tree: ast.AST):
    """(imported module, imported names) of every import statement, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, node)
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            yield target, [n for n in names if f"{target}.{n}" not in MODULES]
            for sub in submodules:
                yield sub, []


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        edges = set()
        for target, _ in _targets(name, ast.parse(path.read_text())):
            # importing a.b.c runs a.b's __init__ too -- except for a module inside a.b,
            # whose own package is always initialised before it
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                mod = ".".join(parts[:i])
                if mod in MODULES and mod != name and not name.startswith(mod + "."):
                    edges.add(mod)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_function_level_imports():
    graph = _graph()
    # pipeline.segment_file imports io inside the function body
    assert "unet_deploy.io" in graph["unet_deploy.pipeline"]
    assert "unet_deploy.tiling" in graph["unet_deploy.pipeline"]


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_states_its_job(name):
    doc = ast.get_docstring(ast.parse(MODULES[name].read_text()))
    assert doc and len(doc.split()) >= 4, f"{name} has no module docstring saying its job"


def test_no_private_names_imported_across_modules():
    bad = []
    for name, path in MODULES.items():
        for target, names in _targets(name, ast.parse(path.read_text())):
            if target.startswith("unet_deploy") and target != name:
                bad += [f"{name} imports {target}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
    assert not bad, "; ".join(bad)


def test_readme_layout_table_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("\n## ", 5)]
    missing = []
    for name, path in MODULES.items():
        if not name.startswith("unet_deploy.") or name.startswith("unet_deploy.kernels"):
            continue
        parts = name.split(".")
        if len(parts) > 2 or _is_package(name):  # the subpackage's row covers its modules
            if f"unet_deploy/{parts[1]}/" not in layout:
                missing.append(name)
        elif f"{path.name}`" not in layout:
            missing.append(name)
    assert not missing, ("README.md's layout table lacks these modules (add a row saying "
                         "each one's job): " + ", ".join(missing))
