"""The service's history: JSON lines, one event per line, each written as it happens.

Every event is `{"svc", "pid", <fields>..., "event", "t_ns"}` in that order: `t_ns` is the
emitting service's loop clock (real runs: CLOCK_MONOTONIC, comparable across processes on Linux;
simulated runs: virtual nanoseconds), `svc` and `pid` name the emitter (the simulator gives its
services fixed pids). A real service's file is flushed per event: a write(2) per line, but a
SIGKILLed service still leaves its history up to its last event, which the checker needs to say
what the dead service was doing. The simulator hands in a buffered sink instead (nothing is
SIGKILLed there), or a list for histories kept in memory.

The line is one orjson call on a dict built in place: structlog's processor chain, which made the
same bytes, cost about 4 us more per event on the hottest path of every service (deploy/bench).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Protocol

import orjson


class Sink(Protocol):
    """Where the lines go: `write(line)` gets one complete line, newline included."""

    def write(self, line: bytes) -> Any: ...


class _FlushedFile:
    def __init__(self, path: Path) -> None:
        self.file: BinaryIO = open(path, "ab")

    def write(self, line: bytes) -> None:
        self.file.write(line)
        self.file.flush()

    def close(self) -> None:
        if not self.file.closed:
            self.file.flush()
            self.file.close()


class EventLog:
    """One service's events. `path`: append to that file, flushed per line (real services);
    or `sink`: any object with write(line) (the simulator). `clock` defaults to CLOCK_MONOTONIC
    for the few writers without a loop (deploy's own events); a service passes its loop's."""

    def __init__(self, path: Path | None, svc: str, *, pid: int | None = None,
                 clock: Callable[[], int] | None = None, sink: Sink | None = None) -> None:
        self.path = path
        self.svc = svc
        self.pid = os.getpid() if pid is None else pid
        self._clock = clock or time.monotonic_ns
        self._owned: _FlushedFile | None = None
        if sink is None:
            if path is None:
                raise ValueError("EventLog needs a path or a sink")
            path.parent.mkdir(parents=True, exist_ok=True)
            sink = self._owned = _FlushedFile(path)
        self._write = sink.write

    def emit(self, event: str, **fields: Any) -> None:
        d: dict[str, Any] = {"svc": self.svc, "pid": self.pid}
        d.update(fields)
        d["event"] = event
        d["t_ns"] = self._clock()
        self._write(orjson.dumps(d, default=str) + b"\n")

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
