"""Who may import whom: no import cycle among veil's modules, the product never imports the lab
or the tests, and no test module imports another test module.

A cycle (it once ran controller.cli -> lab CLI -> bench -> controller.cli) makes module order
matter and hides which layer owns a job; shared test helpers live in tests/support/, so a test
module is never a library. The graph is read from the source with ``ast``: every import counts,
at module level or inside a function, because a function-level import still closes a cycle at
run time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hooks", "controller", "xenapi_plugin", "libvirt_hooks")
LAB = "controller.lab"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(top: Iterable[str]) -> dict[str, Path]:
    """{dotted name: file} of every Python module under the given top-level directories."""
    return {module_name(p): p for t in top for p in sorted((ROOT / t).rglob("*.py"))}


def imported(path: Path, known: Iterable[str]) -> Iterator[str]:
    """The modules ``path`` imports, anywhere in it, resolved to the most specific known module
    (``from a.b import c`` is module ``a.b.c`` when that exists, else ``a.b``)."""
    names = set(known)
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in names:
                target = target.rpartition(".")[0]
            if target:
                yield target


def graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    return {name: set(imported(path, mods)) - {name} for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    done: set[str] = set()
    for start in sorted(edges):
        if start in done:
            continue
        path = [start]
        stack = [iter(sorted(edges[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                done.add(path.pop())
            elif nxt in path:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in done:
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_dag() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_veils_modules() -> None:
    edges = graph(modules(PACKAGES))
    assert "controller.lab.bench.systems" in edges and "hooks.ovsdb.rpc" in edges
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_product_never_imports_the_lab_or_the_tests() -> None:
    mods = modules((*PACKAGES, "tests"))
    bad = {
        name: sorted(t for t in set(imported(path, mods))
                     if t == LAB or t.startswith(LAB + ".") or t.split(".")[0] == "tests")
        for name, path in mods.items()
        if name.split(".")[0] in PACKAGES and not (name == LAB or name.startswith(LAB + "."))
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_test_module_imports_another_test_module() -> None:
    mods = modules(("tests",))
    tests = {n for n in mods if n.rpartition(".")[2].startswith("test_") or n == "tests.conftest"}
    assert "tests.controller.test_lab" in tests
    bad = {name: sorted(set(imported(mods[name], mods)) & tests - {name}) for name in sorted(tests)}
    assert {k: v for k, v in bad.items() if v} == {}
