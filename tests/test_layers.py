"""The layers: protocol <- runtime <- exporter_svc, importer_svc <- sim <- deploy; the checker imports
nothing of ours. lint-imports checks the same in .ci/run (pyproject.toml [tool.importlinter]);
this walks every import statement, those inside functions included, so that the suite fails too."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("protocol", "runtime", "exporter_svc", "importer_svc", "sim", "checker", "deploy")
# what each package may import of ours (itself included)
ALLOWED = {
    "protocol": {"protocol"},
    "runtime": {"runtime", "protocol"},
    "exporter_svc": {"exporter_svc", "runtime", "protocol"},
    "importer_svc": {"importer_svc", "runtime", "protocol"},
    "sim": {"sim", "exporter_svc", "importer_svc", "runtime", "protocol", "checker"},
    "checker": {"checker"},
}


def imported(source: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in `source`, at any depth."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def climbing(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, top in imported(path.read_text()):
            if top in OURS and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    return bad


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_package_imports_above_its_layer(package: str) -> None:
    assert climbing(package) == []


def test_the_walk_sees_imports_inside_functions() -> None:
    source = "import os\n\ndef f():\n    from deploy.options import RunParams\n    import sim.run\n"
    assert imported(source) == [(1, "os"), (4, "deploy"), (5, "sim")]


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter is not installed (pip install -e '.[test]')")
def test_lint_imports_keeps_the_contracts() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    r = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout
