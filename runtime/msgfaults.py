"""Message faults in a service's send path: delay, drop, dup, reorder (see runtime/faults.py).

Rules:
- A fault acts on the messages this service sends, requests and replies alike, of its `op` if one
  is named, while the workload clock is inside [at, at + for). Before `start` nothing is faulted:
  joining and attaching always work.
- Each fault draws from its own generator (stream `msgfault:<index>:<service>`), seeded by the
  run's seed, the fault's index in the run's list and the service's name: the same seed gives
  the same decisions for the same sequence of messages (runtime/rng.py; in the simulator each
  draw is a decision of its scheduler).
- Several faults may hit one message; they apply in list order (a delayed message may then be
  duplicated on release, and so on). Every application is a `fault` event.
- reorder holds a message until the next one is sent, then sends that one first. A held message
  is released after REORDER_HOLD_S at the latest, so nothing waits for ever.
"""

from __future__ import annotations

from typing import Any, Callable

from runtime.eventlog import EventLog
from runtime.faults import MESSAGE_KINDS, applies_to
from runtime.loop import LoopLike
from runtime.rng import MakeRng, real_rng

REORDER_HOLD_S = 0.05

SendFn = Callable[[bytes, bytes], None]


class MessageFaults:
    def __init__(self, loop: LoopLike, log: EventLog, svc: str, faults: list[dict[str, Any]], seed: int,
                 send: SendFn, make_rng: MakeRng = real_rng) -> None:
        self.loop = loop
        self.log = log
        self.svc = svc
        self.send = send
        self.faults = [(i, f, make_rng(f"msgfault:{i}:{svc}", f"{seed}:{i}:{svc}")) for i, f in enumerate(faults)
                       if f["kind"] in MESSAGE_KINDS and applies_to(f, svc)]
        self.t0: int | None = None
        self._held: tuple[bytes, bytes, str, int] | None = None
        self._held_timer: int | None = None

    def start_clock(self) -> None:
        if self.t0 is None:
            self.t0 = self.loop.now_ns()

    @property
    def active(self) -> bool:
        return bool(self.faults)

    def _in_window(self, f: dict[str, Any]) -> bool:
        if self.t0 is None:
            return False
        t = (self.loop.now_ns() - self.t0) / 1e9
        return t >= f["at"] and (f["for"] is None or t < f["at"] + f["for"])

    def submit(self, peer: bytes, frame: bytes, op: str, msg_id: int) -> None:
        """Send `frame` to `peer`, through whatever faults are active."""
        if not self.faults:  # the common case, on every message: straight out
            self.send(peer, frame)
            return
        self._apply(0, peer, frame, op, msg_id)

    def _apply(self, start: int, peer: bytes, frame: bytes, op: str, msg_id: int) -> None:
        for pos in range(start, len(self.faults)):
            index, f, rng = self.faults[pos]
            if f["op"] is not None and f["op"] != op:
                continue
            if not self._in_window(f) or not rng.chance(f["p"]):
                continue
            kind = f["kind"]
            if kind == "drop":
                self._event(kind, op, msg_id)
                return
            if kind == "dup":
                self._event(kind, op, msg_id)
                self._apply(pos + 1, peer, frame, op, msg_id)
                self._apply(pos + 1, peer, frame, op, msg_id)
                return
            if kind == "delay":
                ms = max(0.0, f["ms"] + rng.uniform(-f["jitter_ms"], f["jitter_ms"]))
                self._event(kind, op, msg_id, ms=round(ms, 3))
                self.loop.call_later(ms / 1000, lambda: self._apply(pos + 1, peer, frame, op, msg_id))
                return
            if kind == "reorder":
                if self._held is None:
                    self._event(kind, op, msg_id)
                    self._held = (peer, frame, op, msg_id)
                    self._held_timer = self.loop.call_later(REORDER_HOLD_S, self._release)
                    return
        self._out(peer, frame)

    def _out(self, peer: bytes, frame: bytes) -> None:
        self.send(peer, frame)
        if self._held is not None:
            self._release()

    def _release(self) -> None:
        held, self._held = self._held, None
        if self._held_timer is not None:
            self.loop.cancel(self._held_timer)
            self._held_timer = None
        if held is not None:
            self.send(held[0], held[1])

    def _event(self, kind: str, op: str, msg_id: int, **extra: Any) -> None:
        self.log.emit("fault", kind=kind, target=self.svc, op=op, id=msg_id, **extra)
