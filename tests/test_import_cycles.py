"""No import cycle inside ``spo``, read from the source (ast; nothing is imported).

Two graphs: imports at module level (run when the module is imported: a cycle there breaks or
half-initialises a module depending on which end is imported first) and every import, the ones
inside functions too (deferred: a cycle there works, but hides a layering knot, like config ->
report.figures -> generate -> config was). ``if TYPE_CHECKING:`` imports run never and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "spo"


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module):
    """(node, at_module_level) for every import statement outside ``if TYPE_CHECKING:``."""
    def walk(node, top):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    yield from walk_one(sub, top)
                continue
            yield from walk_one(child, top)

    def walk_one(node, top):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, top
        yield from walk(node, top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    yield from walk(tree, True)


def _targets(node, module: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    """The modules of ``spo`` an import statement loads (``from a import b``: a.b when b is a
    module, else a)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: from the module's package, one level up per extra dot
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        names = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem
                 for alias in node.names]
    out = []
    for name in names:
        while name and name not in known:  # `import spo.a.b.C`-style: the longest module prefix
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


def import_graphs(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level edges, all edges) between the modules of ``spo``."""
    known = _modules(root)
    top: dict[str, set[str]] = {m: set() for m in known}
    every: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, at_top in _imports(tree):
            for target in _targets(node, module, path.name == "__init__.py", known):
                every[module].add(target)
                if at_top:
                    top[module].add(target)
    return top, every


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, iterative)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_graph_reader_sees_imports_of_every_kind(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import spo.b\nfrom typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from spo import c\n")
    (pkg / "b.py").write_text("def f():\n    from spo.sub import d\n")
    (pkg / "c.py").write_text("from spo import a\n")
    (pkg / "sub" / "d.py").write_text("from .. import a\nclass K:\n    from spo.sub import e\n")
    (pkg / "sub" / "e.py").write_text("")
    top, every = import_graphs(tmp_path)
    assert top["spo.a"] == {"spo.b"}                       # the TYPE_CHECKING import is left out
    assert top["spo.b"] == set() and every["spo.b"] == {"spo.sub.d"}
    assert top["spo.sub.d"] == {"spo.a", "spo.sub.e"}      # relative; a class body runs at import
    assert find_cycle(top) is None
    assert find_cycle(every) == ["spo.a", "spo.b", "spo.sub.d", "spo.a"]


@pytest.mark.parametrize("which", ["module-level", "all"])
def test_spo_has_no_import_cycle(repo_root, which):
    top, every = import_graphs(repo_root)
    cycle = find_cycle(top if which == "module-level" else every)
    assert cycle is None, f"import cycle ({which} imports): {' -> '.join(cycle)}"
