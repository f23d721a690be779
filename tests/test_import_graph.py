"""Dependencies point one way: the modules of ``batterytwin`` import each other without a cycle, and
``batterytwin.contracts`` (constants and schemas) imports nothing of the project.

The graph is read statically (``ast``) from every module under ``src/batterytwin``, with relative
imports resolved and imports inside functions counted (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "batterytwin"


def module_files(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``package`` (a package is its ``__init__``)."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_names(module: str, path: Path) -> set[str]:
    """Absolute dotted names that ``module`` imports anywhere in its file (``from a import b`` gives
    ``a.b``, which :func:`import_graph` reduces to the longest prefix that is a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ``modules`` it imports (a name is reduced to its longest module prefix)."""
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(module, path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as its modules in import order (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph.get(start, ())))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"d": {"b", "c"}, "b": {"c"}, "c": set(), "a": {"d"}}) is None  # a diamond is no cycle


def test_imports_are_resolved_relative_and_inside_functions(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "top.py").write_text("def f():\n    from .sub import kernel\n")
    (pkg / "sub" / "__init__.py").write_text("from .. import top\n")
    (pkg / "sub" / "kernel.py").write_text("from ..top import f\nimport pkg.sub\n")
    graph = import_graph(module_files(tmp_path, "pkg"))
    assert graph == {"pkg": set(), "pkg.top": {"pkg.sub.kernel"}, "pkg.sub": {"pkg.top"},
                     "pkg.sub.kernel": {"pkg.top", "pkg.sub"}}
    assert find_cycle(graph) == ["pkg.sub", "pkg.top", "pkg.sub.kernel", "pkg.sub"]


def test_batterytwin_has_no_import_cycle():
    modules = module_files()
    assert f"{PACKAGE}.store" in modules and len(modules) > 50  # the graph is read from the real tree
    cycle = find_cycle(import_graph(modules))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_contracts_imports_nothing_of_the_project():
    modules = module_files()
    graph = import_graph(modules)
    assert not graph[f"{PACKAGE}.contracts"], graph[f"{PACKAGE}.contracts"]
    names = imported_names(f"{PACKAGE}.contracts", modules[f"{PACKAGE}.contracts"])
    assert not {n for n in names if n.split(".")[0] == PACKAGE}, names
