"""What keeps a run local and its capabilities private: credential files, loopback checks, CURVE.

Credentials travel in files of mode 0600 inside DIR/secrets (mode 0700), never on a command line
(`ps` shows those to every user) and never in the history. A service refuses a credentials file
that its group or others may read, as ssh does with a private key.

    exporter.json    {"secret": hex, "curve": {"public": z85, "secret": z85, "clients": [z85, ...]}}
    importer-N.json  {"join": token, "exports": {"<buffer>": token, ...},
                      "curve": {"server": z85, "public": z85, "secret": z85}}

(`curve` only when the run uses CURVE.) ZeroMQ CURVE: the exporter's rpc socket is a CURVE server
whose ZAP handler (in the exporter's own loop) admits only the client keys listed; each importer
is a CURVE client knowing the server's public key. Keys are generated per run by `dmabuf-emu`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from pathlib import Path
from typing import Any, Callable

import zmq
from zmq.utils import z85

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = "dmabuf"


class CredentialsError(ValueError):
    """A credentials file that cannot be used: the message names the file and the fault."""


# ---------------------------------------------------------------------------------- files

def secrets_dir(out: Path) -> Path:
    d = out / "secrets"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Write JSON readable by the owner only (created 0600: never readable by others, not even
    for an instant)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read_private(path: Path) -> dict[str, Any]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CredentialsError(f"{path}: no such credentials file") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(f"{path}: mode {stat.S_IMODE(st.st_mode):o} lets others read it; "
                               f"credentials must be 0600")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"{path}: not a credentials file ({exc})") from None
    if not isinstance(data, dict):
        raise CredentialsError(f"{path}: not a credentials file (not a JSON object)")
    return data


# ---------------------------------------------------------------------------------- endpoints

def is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name or a wildcard (`*`): not provably local
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def is_local_endpoint(endpoint: str) -> bool:
    """ipc and inproc are local; tcp only on a loopback address."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0]
    if ";" in host:  # tcp://source;dest: the destination is what counts
        host = host.split(";", 1)[1]
    return is_loopback_host(host)


def connect_endpoint(bound: str) -> str:
    """Where a process on this machine connects to reach a socket bound at `bound` (a wildcard
    address is reached over loopback)."""
    scheme, _, rest = bound.partition("://")
    if scheme != "tcp":
        return bound
    host, _, port = rest.rpartition(":")
    if host in ("0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"tcp://{host}:{port}"


# ---------------------------------------------------------------------------------- CURVE

def curve_available() -> bool:
    return bool(zmq.has("curve"))


def keypair() -> tuple[str, str]:
    """(public, secret), Z85 text."""
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def curve_server(curve: dict[str, Any]) -> Callable[[zmq.Socket], None]:
    def apply(sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve["secret"].encode())
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    return apply


def curve_client(curve: dict[str, Any]) -> Callable[[zmq.Socket], None]:
    def apply(sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve["server"].encode())
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve["public"].encode())
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve["secret"].encode())
    return apply


class ZapHandler:
    """ZeroMQ's authentication hook (RFC 27), served from the service's own loop: a CURVE client
    is admitted if its public key is one of `clients`. Must be bound before the server socket."""

    def __init__(self, ctx: zmq.Context, clients: list[str], on_result: Callable[..., None]) -> None:
        self.allowed = {z85.decode(k.encode()) for k in clients}
        self.on_result = on_result
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)

    def handle(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            version, request_id = (frames + [b"", b""])[:2]
            if len(frames) < 6 or version != b"1.0":
                self.sock.send_multipart([b"1.0", request_id, b"500", b"bad ZAP request", b"", b""])
                continue
            domain, address, _identity, mechanism = frames[2:6]
            key = frames[6] if len(frames) > 6 else b""
            ok = mechanism == b"CURVE" and domain == ZAP_DOMAIN.encode() and key in self.allowed
            self.on_result(ok=ok, mechanism=mechanism.decode(errors="replace"),
                           address=address.decode(errors="replace"),
                           key=z85.encode(key).decode() if len(key) == 32 else "")
            if ok:
                self.sock.send_multipart([b"1.0", request_id, b"200", b"OK", b"", b""])
            else:
                self.sock.send_multipart([b"1.0", request_id, b"400", b"unknown client key", b"", b""])

    def close(self) -> None:
        self.sock.close(linger=0)
