"""The services' transport: a ROUTER that serves many peers, a DEALER that talks to one.

Both sides can send at any time (the exporter's move_notify goes out on the same connection an
importer's requests come in on). Frames are encoded and decoded by protocol.wire; this module
only moves bytes, sets socket options on purpose, and turns multipart garbage into a clear error.

A shell sees a `Channel` made by its `Transport` (runtime/env.py hands one in):
- `send(peer, frame)`: one frame to `peer` (a ROUTER's routing id; ignored by a DEALER). Never
  blocks; a frame that cannot be queued is dropped by the transport (zmq.ZMQError when it says so).
- `recv()`: the next message as zmq gives it (ROUTER: [peer, frame, ...]; DEALER: [frame, ...]), or
  None when nothing is waiting. The shell checks the frame count itself.
- the loop's `add_reader(channel, callback)` calls back when something may be waiting.
`ZmqTransport` is the real one (sockets of one zmq.Context); the simulator's carries the same
encoded frames between services in one process (sim/network.py).
"""

from __future__ import annotations

from typing import Callable, Protocol

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


class Channel(Protocol):
    def send(self, peer: bytes, frame: bytes) -> None: ...
    def recv(self) -> list[bytes] | None: ...
    def close(self) -> None: ...


class Transport(Protocol):
    def router(self, endpoint: str, *, handover: bool = False,
               secure: Secure | None = None) -> tuple[Channel, str]: ...
    def dealer(self, endpoint: str, identity: bytes | None = None,
               secure: Secure | None = None) -> Channel: ...
    def close(self) -> None: ...


class ZmqChannel:
    """A ROUTER or DEALER socket behind the Channel interface. `socket` is what the loop polls."""

    def __init__(self, sock: zmq.Socket, routed: bool) -> None:
        self.socket = sock
        self._routed = routed

    def send(self, peer: bytes, frame: bytes) -> None:
        # Two sends with int flags: send_multipart's enum arithmetic was a third of this path.
        if self._routed:
            self.socket.send(peer, NOBLOCK_SNDMORE)
        self.socket.send(frame, NOBLOCK)

    def recv(self) -> list[bytes] | None:
        # Ask before reading: an empty socket's zmq.Again costs more than the question.
        if not self.socket.getsockopt(EVENTS) & POLLIN:
            return None
        try:
            return self.socket.recv_multipart(NOBLOCK)
        except zmq.Again:
            return None

    def close(self) -> None:
        self.socket.close(linger=0)


class ZmqTransport:
    """Real sockets, all in one zmq.Context (`ctx`, which CURVE's ZAP handler shares)."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()

    def router(self, endpoint: str, *, handover: bool = False,
               secure: Secure | None = None) -> tuple[ZmqChannel, str]:
        sock, bound = router(self.ctx, endpoint, handover=handover, secure=secure)
        return ZmqChannel(sock, routed=True), bound

    def dealer(self, endpoint: str, identity: bytes | None = None,
               secure: Secure | None = None) -> ZmqChannel:
        return ZmqChannel(dealer(self.ctx, endpoint, identity=identity, secure=secure), routed=False)

    def close(self) -> None:
        self.ctx.destroy(linger=0)
