"""The `revoke` and `close` faults, applied by the exporter's shell: buffers revoked at `at` and
un-revoked `for` seconds later, or the exporting device closed at `at`, on the workload's clock.

Rules:
- The clock starts with the workload (the exporter's `start`); each fault is two loop timers, one
  call into the half per buffer at each (Exporter.revoke_buffer, unrevoke_buffer, close_buffer):
  what a revocation or a close does is the strategy's table, not this file's.
- Every application is a `fault` event (kind revoke, step revoke or unrevoke; kind close, step
  close; the buffers).
- A strategy whose table cannot revoke is refused before anything starts (ValueError, one line):
  dmabuf-emu refuses it earlier, this is for a service started by hand.
- Stopping cancels what has not fired yet: a buffer revoked at stop stays so.
"""

from __future__ import annotations

from typing import Any, Callable

from runtime.eventlog import EventLog
from runtime.faults import BUFFER_KINDS, describe, revoked_buffers
from runtime.loop import Loop


def check(faults: list[dict[str, Any]], buffers: int, revokes: bool) -> None:
    """ValueError (one line) if the revoke faults cannot run: called before anything is created."""
    mine = [f for f in faults if f["kind"] in BUFFER_KINDS]
    if mine and not revokes:
        raise ValueError(f"a {mine[0]['kind']} fault needs a strategy whose exporter table revokes (such as revoke)")
    for f in mine:
        bad = [b for b in revoked_buffers(f, buffers) if b >= buffers]
        if bad:
            raise ValueError(f"{f['kind']} fault: buffer {bad[0]} does not exist (buffers 0..{buffers - 1})")


class Revocations:
    def __init__(self, loop: Loop, log: EventLog, faults: list[dict[str, Any]], buffers: int,
                 call: Callable[[str, int], None]) -> None:
        """call(step, buffer): step is "revoke", "unrevoke" or "close". Requires check() passed."""
        self._faults = [f for f in faults if f["kind"] in BUFFER_KINDS]
        self.loop, self.log, self.buffers, self.call = loop, log, buffers, call
        self._timers: list[int] = []
        self._started = False

    def start(self) -> None:
        """The workload starts: schedule every revocation and un-revocation (once)."""
        if self._started:
            return
        self._started = True
        for f in self._faults:
            first = "close" if f["kind"] == "close" else "revoke"
            self._timers.append(self.loop.call_later(f["at"], lambda f=f, step=first: self._apply(f, step)))
            if f["for"] is not None:
                self._timers.append(self.loop.call_later(f["at"] + f["for"], lambda f=f: self._apply(f, "unrevoke")))

    def stop(self) -> None:
        self._started = True  # never (again) after a stop
        for handle in self._timers:
            self.loop.cancel(handle)
        self._timers = []

    def _apply(self, fault: dict[str, Any], step: str) -> None:
        buffers = revoked_buffers(fault, self.buffers)
        self.log.emit("fault", kind=fault["kind"], target="exporter", step=step, buffers=buffers, fault=describe(fault))
        for b in buffers:
            self.call(step, b)
