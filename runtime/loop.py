"""A single-threaded event loop: ZeroMQ sockets, timers and deferred calls.

Each service runs one of these, so its protocol half is only ever called from one thread, in
one order. Timers have millisecond resolution at best (the poll timeout); a callback that is
late runs late, never early.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from typing import Callable

import zmq

Callback = Callable[[], None]


class Loop:
    def __init__(self) -> None:
        self._poller = zmq.Poller()
        self._readers: dict[zmq.Socket, Callback] = {}
        self._timers: list[tuple[int, int, Callback]] = []
        self._cancelled: set[int] = set()
        self._soon: deque[Callback] = deque()
        self._seq = itertools.count()
        self._running = False

    def add_reader(self, sock: zmq.Socket, callback: Callback) -> None:
        self._readers[sock] = callback
        self._poller.register(sock, zmq.POLLIN)

    def remove_reader(self, sock: zmq.Socket) -> None:
        if self._readers.pop(sock, None) is not None:
            self._poller.unregister(sock)

    def call_soon(self, callback: Callback) -> None:
        self._soon.append(callback)

    def call_at(self, t_ns: int, callback: Callback) -> int:
        handle = next(self._seq)
        heapq.heappush(self._timers, (t_ns, handle, callback))
        return handle

    def call_later(self, seconds: float, callback: Callback) -> int:
        return self.call_at(time.monotonic_ns() + int(seconds * 1e9), callback)

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
        now = time.monotonic_ns()
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
            timeout_ms = max(0, math.ceil((self._timers[0][0] - time.monotonic_ns()) / 1e6))
        else:
            timeout_ms = 100
        for sock, _ in self._poller.poll(timeout_ms):
            callback = self._readers.get(sock)
            if callback is not None:
                callback()
