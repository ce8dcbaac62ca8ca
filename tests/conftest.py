"""Shared fixtures: a live exporter process for wire-level tests, and a guard that fails any test
leaving a dmabuf- segment of its own run or a service process behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from runtime import security, shm
from tests.helpers import ROOT


def wait_for_file(path: Path, proc: subprocess.Popen, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode} before writing {path}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.01)
    return json.loads(path.read_text())


@pytest.fixture
def short_dir(tmp_path_factory) -> Path:
    """A run directory with a short path: ipc socket paths must stay under 108 bytes."""
    d = Path("/tmp") / f"dme-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    yield d
    import shutil
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def live_exporter(short_dir: Path):
    """A real exporter process (strategy pin, room for 2 importers) and its endpoints; `secret`
    keys its tokens (protocol/capability.py)."""
    run_id = uuid.uuid4().hex[:8]
    secret = uuid.uuid4().bytes + uuid.uuid4().bytes
    creds = security.secrets_dir(short_dir) / "exporter.json"
    security.write_private(creds, {"secret": secret.hex()})
    cmd = [sys.executable, "-m", "exporter_svc", "--run-id", run_id, "--out", str(short_dir),
           "--endpoint", f"ipc://{short_dir}/e.rpc", "--control", f"ipc://{short_dir}/e.ctl",
           "--strategy", "pin", "--buffers", "4", "--buffer-size", "64KiB", "--max-importers", "2",
           "--credentials", str(creds)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        info = wait_for_file(short_dir / "run" / "exporter.json", proc)
        yield {"proc": proc, "run_id": run_id, "dir": short_dir, "secret": secret, **info}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for name in shm.existing(run_id):
            shm.unlink(name)
    assert proc.returncode == 0, proc.stdout.read().decode() if proc.stdout else ""
    assert shm.existing(run_id) == [], "the exporter must unlink its segments on SIGTERM"
