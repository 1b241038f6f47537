"""The layers of python/llmpre (docs/architecture.md): no module imports a higher
layer, and no two modules import each other, directly or around a loop (imports
inside functions count too: a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "python"
PACKAGE = ROOT / "llmpre"

# lowest first; a package may import its own layer and those below it
LAYERS = [
    {"llmpre", "llmpre._core", "llmpre.errors", "llmpre.runtime", "llmpre.assets"},
    {"llmpre.data", "llmpre.ops"},
    {"llmpre.models"},
    {"llmpre.parallel"},
    {"llmpre.train"},
    {"llmpre.plan", "llmpre.report"},
    {"llmpre.cli"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict:
    """module -> set of llmpre modules it imports (anywhere in the file)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # "from llmpre.ops import fused" imports the module llmpre.ops.fused
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t == "llmpre" or t.startswith("llmpre."))
        deps.discard(name)
        graph[name] = {d for d in deps if d in modules}
    return graph


def layer_of(module: str) -> int:
    best = None
    for i, members in enumerate(LAYERS):
        for m in members:
            if (module == m or module.startswith(m + ".")) and (best is None or len(m) > len(best[1])):
                best = (i, m)
    assert best is not None, f"{module} is in no layer: add its package to LAYERS and docs/architecture.md"
    return best[0]


def test_no_upward_imports():
    graph = import_graph()
    upward = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                    if layer_of(b) > layer_of(a) and b != "llmpre")
    assert not upward, "lower layers import higher ones:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = import_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):   # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    # a package's __init__ re-exporting its submodules is not a loop between two files of code
    real = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)
            and not _only_init_reexports(graph, c)]
    assert not real, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in real)


def _only_init_reexports(graph, component) -> bool:
    """A cycle whose back edges all go into a package ``__init__`` that merely re-exports
    (``llmpre.models`` <- ``llmpre.models.hf``) is the package's public face, not a loop."""
    packages = {m for m in component if (PACKAGE / Path(*m.split(".")[1:]) / "__init__.py").exists()}
    inner = [m for m in component if m not in packages]
    for m in inner:
        if graph[m] & set(inner):
            return False
    return bool(packages)


def test_the_graph_is_printable():
    """The package-level graph (printed with -s; docs/architecture.md has it)."""
    graph = import_graph()
    edges = {}
    for a, deps in graph.items():
        pa = ".".join(a.split(".")[:2])
        for b in deps:
            pb = ".".join(b.split(".")[:2])
            if pa != pb:
                edges.setdefault(pa, set()).add(pb)
    lines = [f"{a} -> {', '.join(sorted(bs))}" for a, bs in sorted(edges.items())]
    print("\n".join(lines))
    assert "llmpre.parallel" in edges and "llmpre.train" not in edges["llmpre.parallel"]
