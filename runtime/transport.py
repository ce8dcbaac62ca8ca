"""ZeroMQ sockets for the services: a ROUTER that serves many peers, a DEALER that talks to one.

Both sides can send at any time (the exporter's move_notify goes out on the same connection an
importer's requests come in on). Frames are encoded and decoded by protocol.wire; this module
only moves bytes, sets socket options on purpose, and turns multipart garbage into a clear error.
"""

from __future__ import annotations

from typing import Callable

import zmq

from protocol.wire import MAX_FRAME

# High-water marks, on purpose. libzmq counts them in messages per peer connection (pipe):
# - a peer that sends more than this in one message is disconnected by libzmq before we see it;
#   anything between MAX_FRAME and this gets a `too_large` error reply instead;
# - RCVHWM: at most this many messages queue per peer before its sender is held back (a DEALER
#   blocks or gets EAGAIN): a flooding peer fills its own queue, not our memory. Together with
#   MAXMSGSIZE that bounds one connection's inbound queue at RCVHWM * SOCKET_MAXMSGSIZE bytes;
# - SNDHWM: a ROUTER drops what it cannot queue to a peer that does not read (ROUTER_MANDATORY
#   off): a client that never reads its replies cannot make us buffer them without end. A well
#   behaved importer has at most queue depth + a few requests out at once, far below these; a
#   message lost to a full queue is resent by runtime/reliable.py.
SOCKET_MAXMSGSIZE = 2 * MAX_FRAME
# Plain ints: zmq's IntFlag constants cost an enum construction per `&` on the hot read path.
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
NOBLOCK = int(zmq.NOBLOCK)
NOBLOCK_SNDMORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
SNDHWM = 1000
RCVHWM = 1000

Secure = Callable[[zmq.Socket], None]


def _common(sock: zmq.Socket, endpoint: str, secure: Secure | None) -> None:
    sock.setsockopt(zmq.LINGER, 0)           # never block exit on unsent messages
    sock.setsockopt(zmq.MAXMSGSIZE, SOCKET_MAXMSGSIZE)
    sock.setsockopt(zmq.SNDHWM, SNDHWM)
    sock.setsockopt(zmq.RCVHWM, RCVHWM)
    if endpoint.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)         # --bind named an IPv6 address
    if secure is not None:
        secure(sock)                         # CURVE options: before bind / connect


def router(ctx: zmq.Context, endpoint: str, *, handover: bool = False,
           secure: Secure | None = None) -> tuple[zmq.Socket, str]:
    """Bind a ROUTER; returns the socket and the endpoint actually bound (tcp port 0 -> real port).
    handover: a new connection with a routing id already in use takes it over (a restarted
    importer comes back under its name while the dead one's connection lingers).
    secure: applied before bind (runtime/security.py: CURVE server)."""
    sock = ctx.socket(zmq.ROUTER)
    _common(sock, endpoint, secure)
    if handover:
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    # Replies to a peer that has gone are dropped silently rather than raising in the loop.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
    sock.bind(endpoint)
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def dealer(ctx: zmq.Context, endpoint: str, identity: bytes | None = None,
           secure: Secure | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    _common(sock, endpoint, secure)
    if identity:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(endpoint)
    return sock


def ipc_endpoint(path: str) -> str:
    """An ipc endpoint for a socket file, refusing paths the kernel cannot bind (108 bytes)."""
    if len(path.encode()) > zmq.IPC_PATH_MAX_LEN:
        raise ValueError(f"socket path {path!r} is {len(path.encode())} bytes, over the "
                         f"{zmq.IPC_PATH_MAX_LEN}-byte limit for ipc sockets: use a shorter --out "
                         f"directory or --transport tcp")
    return f"ipc://{path}"
