"""The importer's side of the heartbeat lease, sans-IO: when the device must stop its DMA, and
when it must give up on the exporter.

Rules of this file:
- The exporter renews an importer's lease on every message it receives from it and declares the
  importer lost after `lease` of silence (protocol/exporter/session.py, check_leases), once its
  device has no access under way (device_stopped), revoking all it held and completing its
  fences: from then on the importer's mappings point at memory the exporter may give to someone
  else. The stop below is checked before each chunk; a chunk checked in time and paused before
  its access is what that wait is for.
- The importer cannot read the exporter's clock. What it knows is when it *first sent* each
  request the exporter has answered: the exporter heard it no earlier than that, so its lease
  runs at least until that send + lease. The importer stops all DMA at the latest such send +
  STOP_FRACTION * lease, which is always before the exporter's lease on it runs out, whatever
  the delays in between (a retried request counts from its first send: conservative).
- Nothing is granted before the first answer (hello): a device that has not joined has no DMA.
- The exporter is lost when the importer, awake the whole time, has had no answer at all for
  EXPORTER_LOST_LEASES leases while it had requests out. A paused importer's own silence is not
  the exporter's fault: the shell calls woke() when it notices a gap in its own timers, and the
  count starts again from there.
- Times are monotonic nanoseconds from the shell; this file keeps no clock.
"""

from __future__ import annotations

STOP_FRACTION = 0.8
EXPORTER_LOST_LEASES = 2


class ImporterLease:
    def __init__(self, lease_ns: int) -> None:
        self.lease_ns = lease_ns
        self._sent: dict[int, int] = {}     # request id -> first send
        self.granted_send: int | None = None  # latest first-send time the exporter answered
        self._last_answer: int | None = None
        self._awake_since: int | None = None

    def sent(self, msg_id: int, now: int) -> None:
        """A request went out (retries keep their first send time)."""
        self._sent.setdefault(msg_id, now)
        if len(self._sent) > 1024:  # unanswered for ever (dropped): only the recent ones matter
            for old in sorted(self._sent, key=self._sent.__getitem__)[:512]:
                del self._sent[old]
        if self._awake_since is None:
            self._awake_since = now

    def answered(self, msg_id: int, now: int, *, grant: bool = True) -> None:
        """A reply to `msg_id` came in (grant=False: an error that says we are not a member, so
        the exporter is alive but holds nothing of ours to lease)."""
        first = self._sent.pop(msg_id, None)
        self._last_answer = now
        if grant and first is not None and (self.granted_send is None or first > self.granted_send):
            self.granted_send = first

    def forget(self, msg_id: int) -> None:
        self._sent.pop(msg_id, None)

    def deadline(self) -> int | None:
        """When the device must have stopped all DMA; None before the first answer."""
        if self.granted_send is None:
            return None
        return self.granted_send + int(STOP_FRACTION * self.lease_ns)

    def expired(self, now: int) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def revoke(self) -> None:
        """The lease ran out: nothing is granted until the exporter answers a new request."""
        self.granted_send = None
        self._sent.clear()

    def woke(self, now: int) -> None:
        """The shell noticed its own timers ran late (it was paused or starved)."""
        self._awake_since = now

    def exporter_silent_ns(self, now: int) -> int:
        """How long the exporter has left requests unanswered while we were awake (0 if none out)."""
        if not self._sent:
            return 0
        since = max(t for t in (self._last_answer, self._awake_since, min(self._sent.values())) if t is not None)
        return max(0, now - since)

    def exporter_lost(self, now: int) -> bool:
        return self.exporter_silent_ns(now) > EXPORTER_LOST_LEASES * self.lease_ns
