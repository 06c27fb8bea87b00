"""dom0's interpreter for the XenServer tests: the oldest CPython this machine has, and a tree
holding only what dom0 would hold (veil's dom0 modules, as the RPM ships them, plus XenAPI).

XenServer 8 / XCP-ng 8.x dom0 runs Python 3.6. The tests run the dom0 programs (plugin, hook,
sync daemon) as their own processes under ``DOM0_PYTHON`` with ``-I``-like isolation: only the
staged tree is importable, so a dom0 module that imports ovsdbapp, a controller module or 3.7+
syntax fails there. ``VEIL_DOM0_PYTHON`` names another interpreter.
"""

from __future__ import annotations

import ast
import atexit
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import XenAPI

from xenapi_plugin import packaging

REPO = Path(__file__).resolve().parents[2]
STUBS = REPO / "tests" / "support" / "dom0"  # XenAPIPlugin as dom0 has it
_CANDIDATE_GLOBS = ("/root/.pyenv/versions/3.*/bin/python3", "/usr/local/bin/python3.*", "/usr/bin/python3.*")
_VERSION = re.compile(r"^python3\.\d+$")


def _version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (int(out[0]), int(out[1])) if len(out) == 2 else None


def _candidates() -> Iterator[str]:
    import glob

    for pattern in _CANDIDATE_GLOBS:
        for path in sorted(glob.glob(pattern)):
            if pattern.endswith("python3") or _VERSION.match(Path(path).name):
                yield path
    yield sys.executable


@functools.lru_cache(maxsize=None)
def dom0_python() -> tuple[str, tuple[int, int]]:
    """(path, version) of the oldest CPython >= 3.6 installed here (dom0 has 3.6)."""
    chosen = os.environ.get("VEIL_DOM0_PYTHON")
    if chosen:
        version = _version(chosen)
        assert version is not None, f"VEIL_DOM0_PYTHON={chosen} does not run"
        return chosen, version
    found = [(v, p) for p in _candidates() for v in [_version(p)] if v is not None and v >= (3, 6)]
    version, path = min(found)
    return path, version


@functools.lru_cache(maxsize=None)
def dom0_tree() -> Path:
    """A directory with veil's dom0 modules (``packaging.stage``: what the RPM ships) and the
    XenAPI package, nothing else veil has; removed when the test session ends."""
    tree = Path(tempfile.mkdtemp(prefix="h13dom0-", dir="/tmp"))
    atexit.register(shutil.rmtree, tree, True)
    packaging.stage(tree)
    xenapi_dir = Path(XenAPI.__file__).resolve().parent
    shutil.copytree(xenapi_dir, tree / "XenAPI", ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def dom0_env(base: dict[str, str] | None = None, *, on_dom0: bool = False) -> dict[str, str]:
    """The environment a dom0 program gets: only the staged tree (plus dom0's XenAPIPlugin
    with ``on_dom0``) on its path, no user site-packages."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(dom0_tree()), *([str(STUBS)] if on_dom0 else [])])
    env["PYTHONNOUSERSITE"] = "1"
    env.pop("PYTHONHOME", None)
    return env


def module_source(module: str) -> Path:
    return packaging.module_file(module, REPO)


def runtime_imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports at run time (anywhere, a function body too), skipping the
    ``if TYPE_CHECKING:`` blocks, which never run."""
    def walk(node: ast.AST) -> Iterator[str]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                for stmt in child.orelse:
                    yield from walk_stmt(stmt)
                continue
            yield from walk_stmt(child)

    def walk_stmt(node: ast.AST) -> Iterator[str]:
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)
        yield from walk(node)

    yield from walk(ast.parse(path.read_text(), str(path)))


def closure(entry_points: Iterable[str]) -> tuple[set[str], set[str]]:
    """(veil modules, other top-level modules) that ``entry_points`` import at run time,
    transitively; a package's ``__init__`` counts whenever one of its modules is imported."""
    ours = ("hooks", "controller", "xenapi_plugin", "libvirt_hooks", "tests")
    todo, seen, others = list(entry_points), set(), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        for name in runtime_imports(module_source(module)):
            if name.split(".")[0] not in ours:
                others.add(name.split(".")[0])
                continue
            while name and not (module_source(name).exists()):
                name = name.rpartition(".")[0]  # ``from pkg.mod import Name``: the module is pkg.mod
            if name:
                todo.append(name)
    return seen, others


def install_dom0(root: Path) -> list[Path]:
    """veil-xen-install's two scripts under ``root``, run by the dom0 interpreter on the staged
    dom0 tree (as the RPM's %post writes them: ``--python /usr/bin/python3 --libdir ...``)."""
    from xenapi_plugin.install import install

    return install(root, python=dom0_python()[0], libdir=str(dom0_tree()))
