"""No module of llmclf imports another that imports it back, directly or through others.

Read from the source with `ast`, not by importing: every `import` and `from ... import` of an llmclf module
counts, at any depth (a function-local import is a dependency too; it only moves the failure to run time).
`from .x import name` imports module `x`, and `x.name` too where that is a submodule. Importing `a.b` from
outside package `a` runs `a/__init__.py` first, so it imports `a` as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "llmclf"

# Cycles allowed for now, while their owners remove them: each as its modules in import order, back to the
# first, e.g. ("data", "distributed", "predict", "data") (names without the "llmclf." prefix; "llmclf" is the
# package's __init__). A cycle not listed here fails the test, and so does a listed one that is gone.
KNOWN_CYCLES: list[tuple[str, ...]] = []


def module_files(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} for every .py file of the package (a package is named by its __init__)."""
    files = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _targets(node: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package's modules one import statement imports."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif node.level == 0:
        names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    else:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        stem = ".".join(base + ([node.module] if node.module else []))
        names = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
    if isinstance(node, ast.ImportFrom) and (names[0] in _ancestors(module) or names[0] == module):
        # `from . import sub` in a module of the package: the package is running already, so only the
        # submodule is imported; `from . import __version__` reads the package's own __init__
        submodules = [n for n in names[1:] if n in modules]
        names = submodules + ([names[0]] if len(submodules) < len(names) - 1 else [])
    found = set()
    for name in names:
        if name in modules:
            found.add(name)
            # the packages above it run first, unless the importer is inside them (they are running already)
            found.update(a for a in _ancestors(name) if a not in _ancestors(module) and a != module)
    return found


def import_graph(src: Path = SRC, package: str = PACKAGE) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, from the source alone."""
    files = module_files(src, package)
    graph = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[module] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= _targets(node, module, is_package, set(files))
        graph[module].discard(module)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _short(name: str) -> str:
    return name[len(PACKAGE) + 1:] if name.startswith(PACKAGE + ".") else name


def _known_edges(cycles=KNOWN_CYCLES, package: str = PACKAGE) -> set[tuple[str, str]]:
    """The imports that the listed cycles are made of, with full module names."""
    full = [tuple(m if m == package else f"{package}.{m}" for m in cycle) for cycle in cycles]
    return {(a, b) for cycle in full for a, b in zip(cycle, cycle[1:])}


def cyclic_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """The imports that lie on some cycle: those between two modules of one strongly connected component."""
    edges = set()
    for component in strongly_connected(graph):
        edges |= {(a, b) for a in component for b in graph[a] if b in component}
    return edges


def test_no_import_cycles_but_the_known_ones():
    graph = import_graph()
    assert len(graph) > 20 and graph[f"{PACKAGE}.cli"], "the package's modules were not found"
    new = sorted(cyclic_edges(graph) - _known_edges())
    components = [sorted(map(_short, c)) for c in strongly_connected(graph)]
    assert not new, ("imports on a cycle not in KNOWN_CYCLES: "
                     + ", ".join(f"{_short(a)} -> {_short(b)}" for a, b in new)
                     + f"; cyclic groups of modules: {components}")


def test_known_cycles_are_still_there():
    """A cycle removed from the code must leave KNOWN_CYCLES too, so the list only ever shrinks."""
    graph = import_graph()
    for cycle in KNOWN_CYCLES:
        assert cycle[0] == cycle[-1] and len(cycle) > 2, f"{cycle}: write a cycle as a -> b -> ... -> a"
    gone = sorted((_short(a), _short(b)) for a, b in _known_edges() - cyclic_edges(graph))
    assert not gone, f"no longer on a cycle (remove the cycles using them from KNOWN_CYCLES): {gone}"


def test_the_checker_sees_cycles_through_local_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def f():\n    if True:\n        from .sub.c import other\n")
    (pkg / "sub" / "__init__.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("import os\n\ndef g():\n    from .. import a\n")
    (pkg / "d.py").write_text("from pkg.sub import c\n")
    (pkg / "e.py").write_text("from .d import x\nfrom . import VERSION, a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.b"] == {"pkg.sub", "pkg.sub.c"}  # the package's __init__ runs first
    assert graph["pkg.sub"] == {"pkg.sub.c"}  # its own submodule: no edge back to itself
    assert graph["pkg.sub.c"] == {"pkg.a"}  # `from .. import a`: the submodule; its package runs already
    assert graph["pkg.d"] == {"pkg.sub", "pkg.sub.c"}
    assert graph["pkg.e"] == {"pkg.d", "pkg.a", "pkg"}  # VERSION is no module: it is read from pkg/__init__
    assert [sorted(c) for c in strongly_connected(graph)] == [["pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"]]
    edges = cyclic_edges(graph)
    both = [("a", "b", "sub.c", "a"), ("a", "b", "sub", "sub.c", "a")]
    assert edges - _known_edges(both, "pkg") == set()
    assert edges - _known_edges([("a", "b", "sub.c", "a")], "pkg") == {("pkg.b", "pkg.sub"), ("pkg.sub", "pkg.sub.c")}
