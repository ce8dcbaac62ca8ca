"""Talking to a service's control socket: one request, one reply, bounded wait."""

from __future__ import annotations

import itertools
import time

import zmq

from protocol import wire

_ids = itertools.count(1)


class ControlError(Exception):
    pass


class ControlClient:
    """A DEALER to one service's control endpoint. Each call waits at most `timeout_s`."""

    def __init__(self, ctx: zmq.Context, endpoint: str, name: str) -> None:
        self.name = name
        self.endpoint = endpoint
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def call(self, msg: wire.Message, timeout_s: float) -> wire.Message:
        self.send(msg)
        return self.wait(msg, timeout_s)

    def send(self, msg: wire.Message) -> None:
        self.sock.send(wire.encode(msg))

    def wait(self, msg: wire.Message, timeout_s: float) -> wire.Message:
        """The reply to `msg` (sent earlier with send), or ControlError after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                raise ControlError(f"{self.name} did not answer '{msg.OP}' within {timeout_s:g} s ({self.endpoint})")
            reply = wire.decode(self.sock.recv())
            if reply.id != msg.id:
                continue  # a late answer to an earlier request that timed out
            if isinstance(reply, wire.ErrorReply):
                raise ControlError(f"{self.name} refused '{msg.OP}': {reply.code}: {reply.message}")
            return reply

    def ping(self, timeout_s: float) -> None:
        self.call(wire.Ping(id=next(_ids)), timeout_s)

    def status(self, timeout_s: float) -> wire.StatusReply:
        reply = self.call(wire.Status(id=next(_ids)), timeout_s)
        assert isinstance(reply, wire.StatusReply)
        return reply

    def start(self, timeout_s: float) -> None:
        self.call(wire.Start(id=next(_ids)), timeout_s)

    def stop(self, timeout_s: float) -> None:
        self.call(wire.Stop(id=next(_ids)), timeout_s)

    def shutdown(self, timeout_s: float) -> None:
        self.call(wire.Shutdown(id=next(_ids)), timeout_s)

    def close(self) -> None:
        self.sock.close(linger=0)


def call_all(clients: list[ControlClient], op: type[wire.Message], timeout_s: float) -> list[str]:
    """Send `op` to every client at once, then collect the replies; returns the errors (one line
    each). Used for stop: every importer drains at the same time, not one after the other."""
    sent = []
    for c in clients:
        msg = op(id=next(_ids))
        c.send(msg)
        sent.append((c, msg))
    errors = []
    deadline = time.monotonic() + timeout_s
    for c, msg in sent:
        try:
            c.wait(msg, max(0.05, deadline - time.monotonic()))
        except ControlError as exc:
            errors.append(str(exc))
    return errors
