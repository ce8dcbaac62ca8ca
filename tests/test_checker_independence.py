"""The judge shares no code with the judged: checker/ imports only the standard library,
numpy and orjson."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.helpers import ROOT

CHECKER = ROOT / "checker"
ALLOWED_THIRD_PARTY = {"numpy", "orjson"}
PROJECT_PACKAGES = {"protocol", "runtime", "exporter_svc", "importer_svc", "deploy"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_checker_imports_only_stdlib_numpy_orjson_and_itself() -> None:
    files = sorted(CHECKER.glob("*.py"))
    assert len(files) >= 10
    for f in files:
        for root in imported_roots(f):
            assert root not in PROJECT_PACKAGES, f"{f.name} imports {root}"
            ok = root in sys.stdlib_module_names or root in ALLOWED_THIRD_PARTY or root in ("checker", "__future__")
            assert ok, f"{f.name} imports {root}"
