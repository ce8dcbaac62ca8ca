"""ZeroMQ sockets for the services: a ROUTER that serves many peers, a DEALER that talks to one.

Both sides can send at any time (the exporter's move_notify goes out on the same connection an
importer's requests come in on). Frames are encoded and decoded by protocol.wire; this module
only moves bytes, sets socket options on purpose, and turns multipart garbage into a clear error.
"""

from __future__ import annotations

import zmq

from protocol.wire import MAX_FRAME

# A peer that sends more than this in one message is disconnected by libzmq before we see it;
# anything between MAX_FRAME and this gets a `too_large` error reply instead.
SOCKET_MAXMSGSIZE = 16 * MAX_FRAME
SNDHWM = 10_000
RCVHWM = 10_000


def _common(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)           # never block exit on unsent messages
    sock.setsockopt(zmq.MAXMSGSIZE, SOCKET_MAXMSGSIZE)
    sock.setsockopt(zmq.SNDHWM, SNDHWM)
    sock.setsockopt(zmq.RCVHWM, RCVHWM)


def router(ctx: zmq.Context, endpoint: str, *, handover: bool = False) -> tuple[zmq.Socket, str]:
    """Bind a ROUTER; returns the socket and the endpoint actually bound (tcp port 0 -> real port).
    handover: a new connection with a routing id already in use takes it over (a restarted
    importer comes back under its name while the dead one's connection lingers)."""
    sock = ctx.socket(zmq.ROUTER)
    _common(sock)
    if handover:
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    # Replies to a peer that has gone are dropped silently rather than raising in the loop.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
    sock.bind(endpoint)
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def dealer(ctx: zmq.Context, endpoint: str, identity: bytes | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    _common(sock)
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
