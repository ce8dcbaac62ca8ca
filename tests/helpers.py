"""What many test files need: the repository's root and the CLI run as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`dmabuf-emu ARGS` in a fresh interpreter (`python -m deploy.cli`), its output captured."""
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
