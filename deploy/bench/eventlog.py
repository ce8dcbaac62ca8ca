"""The history line's cost: runtime/eventlog.py's structlog path against its floor, the same line
built by hand (one dict, one orjson call), measured in the same repetition.

Both write the same bytes (checked before timing, with a fixed clock) to the same sink, one that
drops them, so the figure is the line's making, not the disk's. The event is the one
the exporter writes for every map it serves at once (map_served), the hottest line of a run.
"""

from __future__ import annotations

import io
import time
from typing import Any, Callable

import orjson

from deploy.bench.stats import summary
from runtime.eventlog import EventLog

FIELDS: dict[str, Any] = dict(id=7, importer="importer-1", buffer=0, attachment=1, heap="vram", offset=0,
                              size=65536, gen=1, moved=False, deferred_ns=0)


def floor_emit(write: Callable[[bytes], Any], svc: str, pid: int,
               clock: Callable[[], int]) -> Callable[..., None]:
    """The hand-built line (what runtime/eventlog.py did before structlog): the floor."""

    def emit(event: str, **fields: Any) -> None:
        d: dict[str, Any] = {"svc": svc, "pid": pid}
        d.update(fields)
        d["event"] = event
        d["t_ns"] = clock()
        write(orjson.dumps(d, default=str) + b"\n")
    return emit


def _same_bytes() -> None:
    a, b = io.BytesIO(), io.BytesIO()
    log = EventLog(None, "exporter", pid=4242, clock=lambda: 123, sink=a)
    for e in (log.emit, floor_emit(b.write, "exporter", 4242, lambda: 123)):
        e("map_served", **FIELDS)
        e("odd", where=object.__name__, value=1.5, none=None, nested={"k": [1, 2]})
    if a.getvalue() != b.getvalue():
        raise AssertionError(f"the structlog line differs from the floor's:\n{a.getvalue()!r}\n{b.getvalue()!r}")


class _Discard:
    def write(self, line: bytes) -> None:
        pass


def _time(emit: Callable[..., None], events: int) -> float:
    """ns per event, best of three passes (the least disturbed by the rest of the machine)."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter_ns()
        for _ in range(events):
            emit("map_served", **FIELDS)
        best = min(best, (time.perf_counter_ns() - t) / events)
    return best


def measure(reps: int, events: int) -> dict[str, Any]:
    _same_bytes()
    ours: list[float] = []
    floor: list[float] = []
    for _ in range(reps):
        sink = _Discard()
        log = EventLog(None, "exporter", pid=4242, clock=time.monotonic_ns, sink=sink)
        ours.append(_time(log.emit, events))
        floor.append(_time(floor_emit(sink.write, "exporter", 4242, time.monotonic_ns), events))
    return {"eventlog_ns_per_event": summary(ours, "ns"),
            "eventlog_floor_ns_per_event": summary(floor, "ns"),
            "eventlog_ratio": summary([o / f for o, f in zip(ours, floor)], "x")}
