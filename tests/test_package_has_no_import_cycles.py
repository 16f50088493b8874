"""The package's modules import one another without a cycle: every import counts, at module level, inside a function
or under TYPE_CHECKING, since each one ties the two modules' designs together."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "emailsync"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:  # `import emailsync.stores.postgres` names the module itself
                    t = t.rpartition(".")[0]
                if t and t != name and t != "emailsync":  # the package's face hands on the version only
                    graph[name].add(t)
    return graph


def test_the_graph_is_read():
    graph = import_graph()
    assert "emailsync.engine.applier" in graph["emailsync.workflows"]
    assert "emailsync.stores.dynamodb.client" in graph["emailsync.stores.dynamodb.applier"]
    assert "emailsync.cli" in graph["emailsync.console"]  # an import inside a function counts


def test_no_module_imports_itself_through_others():
    try:
        list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None


def test_a_cycle_would_be_found(tmp_path, monkeypatch):
    """The check itself: two modules importing each other are reported."""
    pkg = tmp_path / "emailsync"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from emailsync.b import g\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from emailsync import a\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    graph = import_graph()
    assert graph == {"emailsync": set(), "emailsync.a": {"emailsync.b"}, "emailsync.b": {"emailsync.a"}}
