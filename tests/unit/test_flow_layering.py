"""Orchestration layers point one way: flows import tasks and the library, tasks import only the library."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_tasks_never_import_flows():
    offenders = {
        str(path.relative_to(REPO)): sorted(m for m in _imported_modules(path) if m.split(".")[0] == "flows")
        for path in sorted((REPO / "tasks").glob("*.py"))
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_ecgmodel_never_imports_flows_or_tasks():
    offenders = {
        str(path.relative_to(REPO)): sorted(m for m in _imported_modules(path) if m.split(".")[0] in ("flows", "tasks"))
        for path in sorted((REPO / "ecgmodel").rglob("*.py"))
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders
