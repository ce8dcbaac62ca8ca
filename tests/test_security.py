"""Local-only defaults and credentials, live: secrets in 0600 files and never on a command line,
CURVE admitting only the run's importers, and services that refuse to serve beyond loopback
without keys. Every address here is on loopback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import zmq

from deploy.launcher import down, up
from deploy.options import RunParams
from protocol import wire
from runtime import security, shm
from tests.helpers import ROOT


def _events(out: Path, svc: str) -> list[dict]:
    return [json.loads(line) for line in (out / "events" / f"{svc}.jsonl").read_text().splitlines()]


def _ping(endpoint: str, secure=None, timeout_ms: int = 400) -> bool:
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if secure is not None:
            secure(sock)
        sock.connect(endpoint)
        sock.send(wire.encode(wire.Ping(id=1)))
        return bool(sock.poll(timeout_ms))
    finally:
        ctx.destroy(linger=0)


def test_curve_run_admits_only_the_runs_importers_and_keeps_secrets_private(short_dir: Path) -> None:
    dep = up(RunParams(strategy="pin", importers=1, transport="tcp", curve=True), short_dir)
    try:
        secrets_dir = short_dir / "secrets"
        assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
        files = sorted(p.name for p in secrets_dir.iterdir())
        assert files == ["exporter.json", "importer-1.json"]
        assert all(stat.S_IMODE((secrets_dir / f).stat().st_mode) == 0o600 for f in files)
        creds = json.loads((secrets_dir / "exporter.json").read_text())
        for svc in dep.services:  # never on a command line: `ps` shows those to everyone
            cmdline = Path(f"/proc/{svc.pid}/cmdline").read_bytes().decode()
            assert creds["secret"] not in cmdline and creds["curve"]["secret"] not in cmdline
        endpoint = dep.exporter.endpoint
        assert endpoint.startswith("tcp://127.0.0.1:")
        assert not _ping(endpoint), "a plain connection gets no answer from a CURVE server"
        stranger_public, stranger_secret = security.keypair()
        assert not _ping(endpoint, security.curve_client(
            {"server": creds["curve"]["public"], "public": stranger_public, "secret": stranger_secret}))
        mine = json.loads((secrets_dir / "importer-1.json").read_text())["curve"]
        assert _ping(endpoint, security.curve_client(mine)), "the run's own key is admitted"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            auth = [e for e in _events(short_dir, "exporter") if e["event"] == "curve_auth"]
            if any(not e["ok"] for e in auth):
                break
            time.sleep(0.05)
        assert [e["key"] for e in auth if not e["ok"]] == [stranger_public]
    finally:
        down(short_dir)
    assert not (short_dir / "secrets").exists(), "down removes the run's credentials"
    assert shm.existing(dep.run_id) == []


def _exporter(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter_svc", "--run-id", "sec" + os.urandom(3).hex(),
                           "--out", str(out), "--control", f"ipc://{out}/e.ctl", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_services_refuse_to_serve_beyond_loopback_without_keys(short_dir: Path) -> None:
    r = _exporter(short_dir, "--endpoint", "tcp://0.0.0.0:*")
    assert r.returncode == 2 and "beyond loopback without CURVE keys" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "importer_svc", "--name", "importer-1", "--index", "1",
                        "--out", str(short_dir), "--exporter", "tcp://exporter.invalid:5555",
                        "--control", f"ipc://{short_dir}/i1.ctl"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "beyond loopback without CURVE keys" in r.stderr, r.stderr


def test_a_credentials_file_others_can_read_is_refused(short_dir: Path) -> None:
    creds = short_dir / "creds.json"
    creds.write_text(json.dumps({"secret": "00" * 32}))
    os.chmod(creds, 0o644)
    r = _exporter(short_dir, "--endpoint", f"ipc://{short_dir}/e.rpc", "--credentials", str(creds))
    assert r.returncode == 2 and "must be 0600" in r.stderr, r.stderr


def test_an_importer_without_credentials_cannot_join(live_exporter) -> None:
    out = live_exporter["dir"]
    r = subprocess.run([sys.executable, "-m", "importer_svc", "--name", "importer-1", "--index", "1",
                        "--out", str(out), "--exporter", live_exporter["rpc"], "--control", f"ipc://{out}/i1.ctl",
                        "--strategy", "pin"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "access_denied" in r.stdout + r.stderr, r.stdout + r.stderr
    denied = [e for e in _events(out, "exporter") if e["event"] == "access_denied"]
    assert denied and denied[0]["op"] == "hello" and denied[0]["reason"] == "bad join token"
