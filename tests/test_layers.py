"""The layers import one way (pure: reads the sources with ast, no kernel, no root).

    1. pybpf.spec (object spec, pure) -> 2. pybpf.kernel -> 3. pybpf.loader ->
    4. runtime objects (collection, maps, programs, links, ringbuf, live, iter...) ->
    5. front ends (cli, cli_live, display, inspect)

Every import counts, function-local ones too (they still run, and still tie the
modules together): ``from . import x`` and ``from pkg import x`` are imports of
``pkg.x`` when that is a module, and importing ``a.b.c`` from outside package
``a.b`` runs ``a/b/__init__.py`` first, so it is an import of ``a.b`` as well.
"""

from __future__ import annotations

import ast
import itertools
import os
from collections import deque

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pybpf")

# modules below every layer: exceptions, records, integer enums, the GC pause, the disk cache,
# signal deferral
BASE = ("pybpf.errors", "pybpf._record", "pybpf._enum", "pybpf._gcpause", "pybpf._cache", "pybpf.resource")
FRONT_ENDS = ("pybpf.cli", "pybpf.cli_live", "pybpf.display", "pybpf.inspect", "pybpf.__main__")


def _module_name(path: str, root: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(root))[:-len(".py")].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _modules(root: str) -> dict[str, str]:
    mods = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                mods[_module_name(os.path.join(d, f), root)] = os.path.join(d, f)
    return mods


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _graph(root: str = PACKAGE) -> dict[str, dict[str, tuple[int, str]]]:
    """module -> {imported module of the package at ``root``: (line of its first import, the
    module that import names: itself, or a module of the package whose __init__ it runs)}."""
    mods = _modules(root)
    graph = {}
    for name, path in mods.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        found: dict[str, tuple[int, str]] = {}

        def add(target: str, line: int) -> None:
            # a.b.c imported from outside a.b also runs a.b's (and a's) __init__
            parts = target.split(".")
            for i in range(len(parts), 0, -1):
                t = ".".join(parts[:i])
                if t in mods and t != name and (t == target or not _inside(name, t)):
                    if t not in found or found[t][1] != t:
                        found[t] = (line, target if target in mods else t)

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    add(sub if sub in mods else source, node.lineno)
        graph[name] = found
    return graph


GRAPH = _graph()


def _layer(m: str) -> int:
    if m in BASE:
        return 0
    for package, layer in (("pybpf.spec", 1), ("pybpf.kernel", 2), ("pybpf.loader", 3)):
        if _inside(m, package):
            return layer
    if m == "pybpf" or any(_inside(m, f) for f in FRONT_ENDS):
        return 5
    return 4


# Upward imports not fixed yet, each (importer, the module its import statement names). The
# tests below fail on any other upward import, and on an entry here that no longer happens
# (then delete it); the cycle tests do not follow these imports (each would close a cycle
# with the layer above, which imports downward).
KNOWN_UPWARD = {
    # UAPI constants and helper ids live in pybpf/kernel/constants.py and helpers.py, which
    # are pure (enum only): the instruction decoder and the spec's program types need them
    ("pybpf.spec.disasm", "pybpf.kernel.constants"),
    ("pybpf.spec.disasm", "pybpf.kernel.helpers"),
    ("pybpf.spec.insn", "pybpf.kernel.constants"),
    ("pybpf.spec.object", "pybpf.kernel.constants"),
    # notebook views (_repr_html_, _repr_pretty_, layout, histogram) of specs, typed values,
    # maps and objects are drawn by the front end pybpf.display
    ("pybpf.spec.object", "pybpf.display"),
    ("pybpf.spec.typed", "pybpf.display"),
    ("pybpf.maps", "pybpf.display"),
    ("pybpf.collection", "pybpf.display"),
}


def _edges(skip=frozenset()):
    """(importer, imported) of every import, but those whose import statement is in ``skip``."""
    for m, targets in GRAPH.items():
        for t, (_, named) in targets.items():
            if (m, named) not in skip:
                yield m, t


def _collapse(units: tuple[str, ...]) -> dict[str, set[str]]:
    """The import graph with each package in ``units`` (and its modules) as one node."""
    def unit(m):
        return next((u for u in units if _inside(m, u)), m)
    g: dict[str, set[str]] = {}
    for m, t in _edges(skip=KNOWN_UPWARD):
        a, b = unit(m), unit(t)
        if a != b:
            g.setdefault(a, set()).add(b)
    return g


def _path(g: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    prev = {start: None}
    todo = deque([start])
    while todo:
        m = todo.popleft()
        for t in sorted(g.get(m, ())):
            if t not in prev:
                prev[t] = m
                if t == goal:
                    path = [t]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return path[::-1]
                todo.append(t)
    return None


def _cycles(nodes: tuple[str, ...], units: tuple[str, ...] = ()) -> list[str]:
    """Every pair of ``nodes`` that import each other (through any modules), as the
    cycle's path with each step's line: "a -> b (b.py:12 ...)"."""
    g = _collapse(units)
    found, seen = [], set()
    for a, b in itertools.combinations(nodes, 2):
        there, back = _path(g, a, b), _path(g, b, a)
        if there and back and frozenset(there + back) not in seen:
            seen.add(frozenset(there + back))
            found.append(" -> ".join(there + back[1:]) + "\n    via " + _explain(there + back[1:], units))
    return found


def _explain(path: list[str], units: tuple[str, ...]) -> str:
    """The import lines behind each step of a path of (collapsed) nodes."""
    steps = []
    for a, b in zip(path, path[1:]):
        lines = [f"{m}:{line} imports {t}" for m, targets in sorted(GRAPH.items()) if _inside(m, a)
                 for t, (line, _) in sorted(targets.items()) if _inside(t, b)
                 and not (a in units and _inside(t, a))]
        steps.append(lines[0] if len(lines) == 1 else "{" + "; ".join(lines[:3])
                     + ("; ..." if len(lines) > 3 else "") + "}")
    return ", ".join(steps)


def test_graph_sees_imports(tmp_path):
    """The parser finds every kind of import (else the tests below prove nothing)."""
    files = {
        "__init__.py": "",
        "top.py": "import os\nimport pkg.sub.deep\n",
        "func.py": "def f():\n    from .sub import mod\n",
        "rel.py": "from . import top\nfrom .sub.mod import NAME\nfrom .top import os\n",
        "sub/__init__.py": "from . import mod\n",
        "sub/mod.py": "from .deep import X\nfrom ..func import f\n",
        "sub/deep.py": "X = 1\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    g = _graph(str(tmp_path / "pkg"))
    assert g["pkg.top"] == {"pkg.sub.deep": (2, "pkg.sub.deep"), "pkg.sub": (2, "pkg.sub.deep")}
    assert g["pkg.func"] == {"pkg.sub.mod": (2, "pkg.sub.mod"), "pkg.sub": (2, "pkg.sub.mod")}
    assert g["pkg.rel"] == {"pkg.top": (1, "pkg.top"), "pkg.sub.mod": (2, "pkg.sub.mod"),
                            "pkg.sub": (2, "pkg.sub.mod")}
    assert g["pkg.sub"] == {"pkg.sub.mod": (1, "pkg.sub.mod")}
    # from inside a package its __init__ has run already: no edge to pkg.sub, nor to pkg
    assert g["pkg.sub.mod"] == {"pkg.sub.deep": (1, "pkg.sub.deep"), "pkg.func": (2, "pkg.func")}
    assert "pybpf.spec.btf" in GRAPH["pybpf.kernel.btf"]
    assert "pybpf.iter" in GRAPH["pybpf.programs"]                   # inside Program.iterate


def test_no_cycle_between_collection_loader_maps():
    cycles = _cycles(("pybpf.collection", "pybpf.loader", "pybpf.maps"), units=("pybpf.loader",))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_cycle_between_iter_and_links():
    cycles = _cycles(("pybpf.iter", "pybpf.links"), units=("pybpf.links",))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_cycle_between_externs_and_relocate():
    cycles = _cycles(("pybpf.loader.externs", "pybpf.loader.relocate"))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _upward(lowest: int, highest: int) -> dict[tuple[str, str], str]:
    """Import statements in modules of layers lowest..highest naming a module of a layer above."""
    return {(m, named): f"{m}:{line} imports {named} (layer {_layer(m)} -> {_layer(named)})"
            for m, targets in sorted(GRAPH.items()) if lowest <= _layer(m) <= highest
            for t, (line, named) in sorted(targets.items()) if t == named and _layer(t) > _layer(m)}


def test_spec_and_kernel_import_nothing_above():
    """pybpf.spec imports nothing from kernel, loader, runtime or front ends; pybpf.kernel
    nothing from loader, runtime or front ends (but KNOWN_UPWARD)."""
    new = [why for pair, why in _upward(1, 2).items() if pair not in KNOWN_UPWARD]
    assert not new, "imports against the layers:\n" + "\n".join(new)


def test_no_layer_imports_above_itself():
    """The same for every layer: the loader imports no runtime object or front end, the
    runtime objects no front end (but KNOWN_UPWARD)."""
    new = [why for pair, why in _upward(0, 4).items() if pair not in KNOWN_UPWARD]
    assert not new, "imports against the layers:\n" + "\n".join(new)


def test_known_upward_imports_still_exist():
    gone = sorted(KNOWN_UPWARD - set(_upward(0, 4)))
    assert not gone, f"fixed, remove from KNOWN_UPWARD: {gone}"


@pytest.mark.parametrize("package", ["pybpf.spec", "pybpf.kernel", "pybpf.loader"])
def test_lower_layers_have_no_cycle_with_upper(package):
    """No cycle from a module of ``package`` through a layer above back to it (but through
    the KNOWN_UPWARD imports)."""
    g: dict[str, set[str]] = {}
    for m, t in _edges(skip=KNOWN_UPWARD):
        g.setdefault(m, set()).add(t)
    cycles = []
    for m in sorted(GRAPH):
        if _inside(m, package):
            for t in sorted(g.get(m, ())):
                if _layer(t) > _layer(m):
                    back = _path(g, t, m)
                    if back:
                        cycles.append(" -> ".join([m] + back))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
