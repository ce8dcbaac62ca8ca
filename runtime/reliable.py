"""At-least-once requests with exactly-once effects, under the protocol.

Rules:
- A request we send stays outstanding until a reply with its id arrives; it is sent again, same id,
  same bytes, after a retransmission timeout, doubling up to `max_backoff_s`, until answered,
  given up (`give_up_s`) or cancelled. So a dropped request (or a dropped reply) costs time, not
  correctness.
- The timeout adapts to the peer, as TCP's does (RFC 6298, with Karn's rule: only requests answered
  at their first sending are timed): max(retry_s, srtt + 4 * rttvar). A peer that is slow, not
  lossy, is not flooded with copies of what it has not yet had time to answer.
- At most `window` requests per peer are out at once; more wait here, in order, and go out as
  answers come back. A device that attaches 256 buffers at once thus queues them with us, not in
  the exporter's socket, where its heartbeats would wait behind them.
- A request we receive is executed once per (peer, id). A duplicate (a retry, or a `dup` fault)
  that arrives after we answered gets the cached reply again; one that arrives while the original
  is still being served (a map waiting for the reservation lock) is dropped: the reply will come.
- A reply for a request that is no longer outstanding (answered already) is dropped.
- Both tables are bounded: the reply cache keeps the last REPLY_CACHE answers per peer (several
  times any window: a duplicate of an older request cannot still be in flight), for MAX_PEERS peers.
The protocol halves never see a duplicate, and never know a retry happened: the history does
(`retry` and `dedup` events).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable

from runtime.loop import LoopLike

REPLY_CACHE = 512
IN_PROGRESS = b""


@dataclass
class _Pending:
    peer: bytes
    frame: bytes
    op: str
    first_sent_ns: int
    attempts: int = 1
    timer: int | None = None


Transmit = Callable[[bytes, bytes, str, int], None]


class Outstanding:
    """Requests we sent that have no reply yet (and those waiting for room in the window)."""

    def __init__(self, loop: LoopLike, transmit: Transmit,
                 on_retry: Callable[[bytes, int, str, int], None], retry_s: float,
                 max_backoff_s: float = 1.0, give_up_s: float | None = None,
                 window: int | None = None) -> None:
        self.loop = loop
        self.transmit = transmit
        self.on_retry = on_retry
        self.retry_s = retry_s
        self.max_backoff_s = max(max_backoff_s, retry_s)
        self.give_up_s = give_up_s
        self.window = window
        self._pending: dict[tuple[bytes, int], _Pending] = {}
        self._in_flight: dict[bytes, int] = {}
        self._waiting: dict[bytes, deque[tuple[int, str, bytes]]] = {}
        self._srtt: float | None = None
        self._rttvar = 0.0

    @property
    def rto_s(self) -> float:
        if self._srtt is None:
            return self.retry_s
        return min(self.max_backoff_s, max(self.retry_s, self._srtt + 4 * self._rttvar))

    def send(self, peer: bytes, msg_id: int, op: str, frame: bytes) -> None:
        """Send a request now, or as soon as the peer's window has room."""
        if (peer, msg_id) in self._pending:
            return
        if self.window is not None and self._in_flight.get(peer, 0) >= self.window:
            self._waiting.setdefault(peer, deque()).append((msg_id, op, frame))
            return
        self._go(peer, msg_id, op, frame)

    def _go(self, peer: bytes, msg_id: int, op: str, frame: bytes) -> None:
        p = _Pending(peer, frame, op, self.loop.now_ns())
        self._pending[(peer, msg_id)] = p
        self._in_flight[peer] = self._in_flight.get(peer, 0) + 1
        self.transmit(peer, frame, op, msg_id)
        self._arm(peer, msg_id, p)

    def _arm(self, peer: bytes, msg_id: int, p: _Pending) -> None:
        delay = min(self.max_backoff_s, self.rto_s * (2 ** (p.attempts - 1)))

        def fire() -> None:
            if self._pending.get((peer, msg_id)) is not p:
                return
            if self.give_up_s is not None and self.loop.now_ns() - p.first_sent_ns > self.give_up_s * 1e9:
                # Past this the peer's lease has run out: the protocol has moved on without it.
                self._forget(peer, msg_id)
                self.on_retry(peer, msg_id, p.op, 0)
                return
            p.attempts += 1
            self.on_retry(peer, msg_id, p.op, p.attempts)
            self.transmit(peer, p.frame, p.op, msg_id)
            self._arm(peer, msg_id, p)

        p.timer = self.loop.call_later(delay, fire)

    def answered(self, peer: bytes, msg_id: int) -> int | None:
        """Forget the request; returns when it was first sent, or None if it was not outstanding."""
        p = self._pending.get((peer, msg_id))
        if p is None:
            return None
        if p.attempts == 1:  # Karn: a retried request's answer says nothing about the round trip
            self._sample((self.loop.now_ns() - p.first_sent_ns) / 1e9)
        self._forget(peer, msg_id)
        return p.first_sent_ns

    def _sample(self, rtt: float) -> None:
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt

    def _forget(self, peer: bytes, msg_id: int) -> None:
        p = self._pending.pop((peer, msg_id))
        if p.timer is not None:
            self.loop.cancel(p.timer)
        self._in_flight[peer] -= 1
        waiting = self._waiting.get(peer)
        while waiting and (self.window is None or self._in_flight[peer] < self.window):
            msg_id, op, frame = waiting.popleft()
            self._go(peer, msg_id, op, frame)

    def cancel(self, peer: bytes | None = None) -> None:
        """Forget every request (to `peer`), sent or waiting."""
        for key in [k for k in self._pending if peer is None or k[0] == peer]:
            p = self._pending.pop(key)
            if p.timer is not None:
                self.loop.cancel(p.timer)
            self._in_flight[key[0]] -= 1
        for q in [q for k, q in self._waiting.items() if peer is None or k == peer]:
            q.clear()

    def __len__(self) -> int:
        return len(self._pending) + sum(len(q) for q in self._waiting.values())


MAX_PEERS = 256


class ReplyCache:
    """Requests we received: executed once, answered again from here. Bounded in peers too: a
    flood of throw-away connections evicts the oldest peers' caches, not our memory."""

    def __init__(self, per_peer: int = REPLY_CACHE, max_peers: int = MAX_PEERS) -> None:
        self.per_peer = per_peer
        self.max_peers = max_peers
        self._peers: OrderedDict[bytes, OrderedDict[int, bytes]] = OrderedDict()

    def _cache(self, peer: bytes) -> OrderedDict[int, bytes]:
        cache = self._peers.get(peer)
        if cache is None:
            cache = self._peers[peer] = OrderedDict()
            if len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        return cache

    def check(self, peer: bytes, msg_id: int) -> bytes | None:
        """None: new, execute it (now marked in progress). IN_PROGRESS: being served, drop it.
        Otherwise the cached reply frame to send again."""
        cache = self._cache(peer)
        if msg_id in cache:
            cache.move_to_end(msg_id)
            return cache[msg_id]
        cache[msg_id] = IN_PROGRESS
        if len(cache) > self.per_peer:
            cache.popitem(last=False)
        return None

    def answered(self, peer: bytes, msg_id: int, frame: bytes) -> None:
        cache = self._cache(peer)
        cache[msg_id] = frame
        if len(cache) > self.per_peer:
            cache.popitem(last=False)

    def forget(self, peer: bytes, msg_id: int) -> None:
        """An answer that must not be replayed (the peer will ask again and deserves a fresh one)."""
        self._peers.get(peer, OrderedDict()).pop(msg_id, None)
