"""The package's import structure: no cycles, even through imports inside functions, and every module
importable on its own.

The graph is read from the source (``ast``), so an import that only runs when a function is called
counts as much as one at the top of a module: a cycle hidden inside a function is still a cycle.
Imports under ``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stylenet"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(tree: ast.Module, importer: str) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import statement that can run (``names``: those of ``from m import
    a, b``, empty for ``import m``); relative imports are resolved against ``importer``."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = importer.split(".")
                if MODULES[importer].name != "__init__.py":
                    package = package[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            found.append((base, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def reexports(name: str) -> dict[str, str]:
    """Names a package's ``__init__`` imports at module level from its own submodules -> that module."""
    if MODULES[name].name != "__init__.py":
        return {}
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    return {alias.asname or alias.name: node.module for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.module in MODULES for alias in node.names}


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def dependencies(importer: str) -> set[str]:
    """The stylenet modules ``importer`` runs when imported or called.

    ``from pkg import name`` depends on ``pkg.name`` when that is a module, else on the module
    ``pkg/__init__`` re-exports ``name`` from (so ``from stylenet import StylenetError`` depends on
    ``stylenet.errors``, what runs), else on ``pkg``. Importing ``a.b.c`` also runs the packages
    ``a.b`` and ``a`` unless the importer is inside them (its own packages are already importing)."""
    tree = ast.parse(MODULES[importer].read_text(encoding="utf-8"))
    targets: set[str] = set()
    for module, names in imported_names(tree, importer):
        if module not in MODULES:
            continue
        if not names:
            targets.add(module)
        for name in names:
            submodule = f"{module}.{name}"
            targets.add(submodule if submodule in MODULES else reexports(module).get(name, module))
    own = set(ancestors(importer))
    return {*targets, *(parent for target in targets for parent in ancestors(target) if parent not in own)} - {
        importer}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function() -> None:
    """The check itself: a function-level import that closes a loop is found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    tree = ast.parse("def f():\n    from stylenet.export import x\nif TYPE_CHECKING:\n    import stylenet.image\n")
    assert imported_names(tree, "stylenet.modelfile") == [("stylenet.export", ["x"])]


def test_the_import_graph_of_stylenet_is_acyclic() -> None:
    graph = {name: dependencies(name) for name in MODULES}
    assert graph["stylenet.inference.model"] >= {"stylenet.modelfile", "stylenet.inference.tiling"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, in a fresh process of its own, so that no import order hides a
    cycle or a missing import. The third-party libraries are loaded once, before forking, which
    keeps this fast; stylenet itself is never imported before the fork."""
    script = f"""
import importlib, os, sys, traceback
import numpy, PIL.Image, torch, torchvision, pytorch_lightning, hydra, safetensors  # noqa: F401
assert not [m for m in sys.modules if m == "stylenet" or m.startswith("stylenet.")]
failed = []
for name in {sorted(MODULES)!r}:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            os._exit(0)
        except BaseException:
            os.write(write, traceback.format_exc().encode()[-2000:])
            os._exit(1)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name + ": " + message)
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
