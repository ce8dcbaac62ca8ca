"""The loop interface every service shell runs on, and the real implementation: ZeroMQ sockets,
timers and deferred calls on CLOCK_MONOTONIC.

One clock, one way in: everything in runtime/, exporter_svc/ and importer_svc/ that reads the
time or schedules work asks its loop (`now_ns`, `call_at`, `call_later`, `call_soon`, `cancel`,
`add_reader`), never `time.*` itself; the protocol halves get the time as an argument and ask for
timers with StartTimer actions. So the same code runs on the simulator's virtual clock
(sim/world.py), where a loop is one service's view of the simulated world.

Each service runs one of these, so its protocol half is only ever called from one thread, in
one order. Timers have millisecond resolution at best (the poll timeout); a callback that is
late runs late, never early. Within one loop: deferred calls first, then the due timers in
order of their time, then the sockets that are readable.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from typing import Any, Callable, Protocol

import zmq

Callback = Callable[[], None]


class LoopLike(Protocol):
    """What a shell may ask of its loop. Handles are opaque: keep them only to cancel."""

    def now_ns(self) -> int: ...
    def call_soon(self, callback: Callback) -> None: ...
    def call_at(self, t_ns: int, callback: Callback) -> Any: ...
    def call_later(self, seconds: float, callback: Callback) -> Any: ...
    def cancel(self, handle: Any) -> None: ...
    def add_reader(self, source: Any, callback: Callback) -> None: ...
    def remove_reader(self, source: Any) -> None: ...
    def lane(self, name: str) -> "LoopLike": ...
    def stop(self) -> None: ...


def _socket_of(source: Any) -> zmq.Socket:
    """A reader is a zmq socket or a channel wrapping one (runtime/transport.py)."""
    return getattr(source, "socket", source)


class Loop:
    def __init__(self) -> None:
        self._poller = zmq.Poller()
        self._readers: dict[zmq.Socket, Callback] = {}
        self._timers: list[tuple[int, int, Callback]] = []
        self._cancelled: set[int] = set()
        self._soon: deque[Callback] = deque()
        self._seq = itertools.count()
        self._running = False

    @staticmethod
    def now_ns() -> int:
        """The real loop's clock: CLOCK_MONOTONIC, comparable across the run's processes."""
        return time.monotonic_ns()

    def lane(self, name: str) -> "Loop":
        """A part of the service with work of its own (the DMA engine, the copy engine). In a real
        process it is the same loop; the simulator schedules each lane as an actor of its own."""
        return self

    def add_reader(self, source: Any, callback: Callback) -> None:
        sock = _socket_of(source)
        self._readers[sock] = callback
        self._poller.register(sock, zmq.POLLIN)

    def remove_reader(self, source: Any) -> None:
        sock = _socket_of(source)
        if self._readers.pop(sock, None) is not None:
            self._poller.unregister(sock)

    def call_soon(self, callback: Callback) -> None:
        self._soon.append(callback)

    def call_at(self, t_ns: int, callback: Callback) -> int:
        handle = next(self._seq)
        heapq.heappush(self._timers, (t_ns, handle, callback))
        return handle

    def call_later(self, seconds: float, callback: Callback) -> int:
        return self.call_at(self.now_ns() + int(seconds * 1e9), callback)

    def cancel(self, handle: int) -> None:
        self._cancelled.add(handle)

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._running = True
        while self._running:
            self._run_once()

    def _run_once(self) -> None:
        while self._soon and self._running:
            self._soon.popleft()()
        now = self.now_ns()
        while self._timers and self._timers[0][0] <= now and self._running:
            _, handle, callback = heapq.heappop(self._timers)
            if handle in self._cancelled:
                self._cancelled.discard(handle)
                continue
            callback()
            if self._soon:
                return  # deferred work first, then the rest of the due timers
        if not self._running:
            return
        if self._soon:
            timeout_ms = 0
        elif self._timers:
            timeout_ms = max(0, math.ceil((self._timers[0][0] - self.now_ns()) / 1e6))
        else:
            timeout_ms = 100
        for sock, _ in self._poller.poll(timeout_ms):
            callback = self._readers.get(sock)
            if callback is not None:
                callback()
