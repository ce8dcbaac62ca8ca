"""Potential deadlocks as lockdep sees them with the dma-fence signalling annotations
(drivers/dma-buf/dma-fence.c, dma_fence_begin_signalling / dma_fence_end_signalling): reported
whether or not the cycle formed in this run.

Rules (events: docs/events.md):
- A fence's signalling section runs from its publication (the job's dma_begin with a `fence`)
  to its fence_signal. What its signalling waits for is in the events: `fence_blocked` names it
  (`waiting_for`: this importer's map request `id`, a buffer's lock, another fence).
- A map request the section waits for takes the buffer's reservation lock at the exporter (or
  waits for it): the exporter's map_served / map_deferred of that request, in a run whose
  exporter guards buffers with the reservation lock (it has resv_lock events). That is side A:
  "the signalling path takes a dma_resv lock", directly (`waiting_for` a lock) or through a
  request it sent.
- Side B: a wait for fences while holding a reservation lock: a fence_wait_begin of a move or
  revocation between its resv_lock and resv_unlock ("Drivers are allowed to call
  dma_fence_wait() while holding dma_resv_lock()").
- Lockdep's classes: every reservation lock is one class and every fence one signalling map, so
  side A and side B need not be of the same buffer or the same time. Their pair closes the cycle
  lock -> fence wait -> signalling -> lock: one `potential_deadlock` finding per importer and
  buffer whose section took the lock, with both sides' events as its witness.
- A search's catch (checker/findings.py CATCHES): `LockDep(on_finding)` calls the oracle's
  finding hook once per finding, when its pair closes, with `finding: potential_deadlock`, the
  importer, the buffer and the fence (sim/search/trial.py keys a catch by them).
- Memory: the recent sections waiting for a map and map answers (MAX_PENDING each, the answers
  slimmed), the held locks, one witness per finding: flat in the history's length.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

HANDLED = ("fence_blocked", "map_served", "map_deferred", "resv_lock", "resv_unlock", "fence_wait_begin")
MAX_PENDING = 256            # recent map answers and blocked fences kept (the map a fence waits for is its
                             # importer's latest request: it is answered within a few of them)
MAX_ITEMS = 256


def _slim(e: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in e.items() if k not in ("pid",)}


class LockDep:
    def __init__(self, on_finding: Callable[[str, str, int, dict[str, Any]], None] | None = None) -> None:
        self.on_finding = on_finding          # the oracle's FindingHook (what, svc, t_ns, fields)
        self.waiting: OrderedDict[tuple[str, Any], dict[str, Any]] = OrderedDict()  # (importer, map id) -> fence_blocked
        self.answered: OrderedDict[tuple[str, Any], dict[str, Any]] = OrderedDict()  # (importer, map id) -> exporter's map event
        self.held: dict[Any, dict[str, Any]] = {}        # buffer -> its resv_lock
        self.locks_seen = False
        self.side_a: list[tuple[dict[str, Any], dict[str, Any]]] = []   # (fence_blocked, the lock-taking event)
        self.side_b: dict[str, Any] | None = None        # (resv_lock, fence_wait_begin) of the first wait under a lock
        self.keys: set[tuple[Any, Any]] = set()
        self.items: list[dict[str, Any]] = []
        self.count = 0

    def feed(self, e: dict[str, Any]) -> None:
        name = e.get("event")
        if name == "fence_blocked":
            w = e.get("waiting_for") or {}
            if w.get("kind") == "map":
                key = (e.get("svc"), w.get("id"))
                got = self.answered.pop(key, None)
                if got is not None:
                    self._side_a(e, got)
                else:
                    self._put(self.waiting, key, e)
            elif w.get("kind") == "lock":
                self._side_a(e, e)
        elif name in ("map_served", "map_deferred"):
            key = (str(e.get("importer")), e.get("id"))
            f = self.waiting.pop(key, None)
            if f is not None:
                self._side_a(f, e)
            elif name == "map_deferred" or key not in self.answered:
                self._put(self.answered, key, {k: e.get(k) for k in ("t_ns", "svc", "event", "id", "importer",
                                                                     "buffer", "attachment", "move")})
        elif name == "resv_lock":
            self.locks_seen = True
            self.held[e.get("buffer")] = e
        elif name == "resv_unlock":
            self.held.pop(e.get("buffer"), None)
        elif name == "fence_wait_begin":
            lock = self.held.get(e.get("buffer"))
            if lock is not None and self.side_b is None:
                self.side_b = {"lock": lock, "wait": e}
                for a in self.side_a:
                    self._pair(*a)

    @staticmethod
    def _put(d: OrderedDict, key: Any, value: Any) -> None:
        d[key] = value
        if len(d) > MAX_PENDING:
            d.popitem(last=False)

    def _side_a(self, fence: dict[str, Any], taking: dict[str, Any]) -> None:
        key = (fence.get("svc"), fence.get("buffer"))
        if key in self.keys or any((f.get("svc"), f.get("buffer")) == key for f, _ in self.side_a):
            return
        self.side_a.append((fence, taking))
        if self.side_b is not None:
            self._pair(fence, taking)

    def _pair(self, fence: dict[str, Any], taking: dict[str, Any]) -> None:
        if not self.locks_seen and taking is not fence:
            return
        key = (fence.get("svc"), fence.get("buffer"))
        if key in self.keys:
            return
        self.keys.add(key)
        self.count += 1
        b = self.side_b or {}
        item = {"t_ns": max(fence["t_ns"], taking["t_ns"], b["wait"]["t_ns"]),
                "importer": fence.get("svc"), "buffer": fence.get("buffer"),
                "fence": {"seq": fence.get("seq"), "job": fence.get("job")},
                "events": [_slim(fence), _slim(taking), _slim(b["lock"]), _slim(b["wait"])]}
        if len(self.items) < MAX_ITEMS:
            self.items.append(item)
        if self.on_finding is not None:
            from checker.findings import POTENTIAL_DEADLOCK     # findings imports this module
            self.on_finding("potential deadlock", str(item["importer"]), item["t_ns"],
                            {"finding": POTENTIAL_DEADLOCK, **item})

    def report(self, t0: int, secs: Any) -> dict[str, Any]:
        out = []
        for it in self.items:
            fence, taking, lock, wait = it["events"]
            how = ("waits for the reservation lock" if taking is fence else
                   f"waits for its map request {taking.get('id')}, which the exporter "
                   f"{'deferred behind the reservation lock' if taking.get('event') == 'map_deferred' else 'served under the reservation lock'}"
                   f" at {(taking['t_ns'] - t0) / 1e6:.3f} ms")
            s = (f"{it['importer']}'s fence {fence.get('seq')} on buffer {it['buffer']} (job {fence.get('job')}) "
                 f"does not signal until it {how}; the exporter waits for fences while holding a reservation "
                 f"lock (buffer {wait.get('buffer')}, fence_wait_begin at {(wait['t_ns'] - t0) / 1e6:.3f} ms under "
                 f"its resv_lock at {(lock['t_ns'] - t0) / 1e6:.3f} ms): lock -> fence wait -> signalling -> "
                 f"lock is a cycle, whether or not it formed in this run")
            out.append({**it, "t_s": secs(it["t_ns"]), "sentence": s})
        return {"count": self.count, "items": out}
