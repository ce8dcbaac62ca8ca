"""The real services the benchmarks drive, started and stopped here, leaving nothing behind:
a pin exporter (no moves) in a short temporary directory, the echo server, and a client that
speaks the real wire protocol (protocol/wire.py) over a DEALER like an importer does."""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import zmq

from deploy.control import ControlClient, ControlError
from protocol import capability, wire
from runtime import security, shm, transport, watchdog

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
RECV_TIMEOUT_MS = 10_000


def service_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@contextmanager
def short_tmpdir(prefix: str = "dmb-") -> Iterator[Path]:
    """A directory under /tmp: ipc socket paths must stay under 108 bytes."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _stop(proc: subprocess.Popen, timeout_s: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Exporter:
    run_id: str
    rpc: str
    control: str
    proc: subprocess.Popen
    dir: Path
    secret: bytes = b""


@contextmanager
def exporter(*, buffers: int, max_importers: int, buffer_size: str = "64KiB",
             strategy: str = "pin") -> Iterator[Exporter]:
    """A real exporter process (python -m exporter_svc), no memory pressure (move rate 0)."""
    with short_tmpdir() as d:
        run_id = "bench" + secrets.token_hex(3)
        secret = secrets.token_bytes(32)
        creds = security.secrets_dir(d) / "exporter.json"
        security.write_private(creds, {"secret": secret.hex()})
        # --launcher: the bench's exporter stops with the bench, SIGKILLed included (runtime/watchdog.py)
        cmd = [sys.executable, "-m", "exporter_svc", "--run-id", run_id, "--launcher", watchdog.identity(), "--out", str(d),
               "--endpoint", f"ipc://{d}/e.rpc", "--control", f"ipc://{d}/e.ctl",
               "--strategy", strategy, "--buffers", str(buffers), "--buffer-size", buffer_size,
               "--max-importers", str(max_importers), "--move-rate", "0", "--credentials", str(creds)]
        with open(d / "exporter.log", "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=service_env(), cwd=str(PROJECT_ROOT))
        try:
            info_path = d / "run" / "exporter.json"
            deadline = time.monotonic() + 30
            while not info_path.exists():
                if proc.poll() is not None:
                    raise RuntimeError(f"exporter exited with {proc.returncode}: "
                                       f"{(d / 'exporter.log').read_text(errors='replace')[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError("exporter did not come up within 30 s")
                time.sleep(0.01)
            import json
            info = json.loads(info_path.read_text())
            yield Exporter(run_id, info["rpc"], info["control"], proc, d, secret)
        finally:
            ctx = zmq.Context()
            try:
                if proc.poll() is None:
                    c = ControlClient(ctx, f"ipc://{d}/e.ctl", "exporter")
                    try:
                        c.shutdown(3.0)
                    except ControlError:
                        pass
                    finally:
                        c.close()
            finally:
                ctx.destroy(linger=0)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                _stop(proc)
            for name in shm.existing(run_id):
                shm.unlink(name)


@contextmanager
def echo_server() -> Iterator[str]:
    """The baseline's server process: python -m deploy.bench.echo; yields its endpoint."""
    with short_tmpdir() as d:
        proc = subprocess.Popen([sys.executable, "-m", "deploy.bench.echo", f"ipc://{d}/echo"],
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=service_env(),
                                cwd=str(PROJECT_ROOT), text=True)
        try:
            assert proc.stdout is not None
            endpoint = proc.stdout.readline().strip()
            if not endpoint:
                raise RuntimeError(f"echo server exited with {proc.wait()}")
            yield endpoint
        finally:
            _stop(proc)


class WireClient:
    """One importer's side of the wire: a DEALER with a routing id, blocking request/reply."""

    def __init__(self, ctx: zmq.Context, endpoint: str, name: str, secret: bytes) -> None:
        self.name = name
        self.secret = secret
        self.tokens: dict[int, str] = {}   # attachment -> its token
        self.sock = transport.dealer(ctx, endpoint, identity=name.encode())
        self.sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
        self.ids = itertools.count(1)

    def call(self, msg: wire.Message) -> wire.Message:
        self.sock.send(wire.encode(msg))
        reply = wire.decode(self.sock.recv())
        if reply.id != msg.id or isinstance(reply, wire.ErrorReply):
            raise RuntimeError(f"{self.name}: {msg.OP} got {reply}")
        return reply

    def join(self, buffer: int) -> int:
        """hello (or rejoin under the same name) and attach `buffer`; returns the attachment."""
        hello = self.call(wire.Hello(id=next(self.ids), name=self.name, pid=os.getpid(), strategy="pin",
                                     token=capability.join_token(self.secret, self.name)))
        assert isinstance(hello, wire.HelloReply), hello
        att = self.call(wire.Attach(id=next(self.ids), buffer=buffer,
                                    token=capability.export_token(self.secret, buffer)))
        assert isinstance(att, wire.AttachReply), att
        self.tokens[att.attachment] = att.token
        return att.attachment

    def close(self) -> None:
        self.sock.close(linger=0)
