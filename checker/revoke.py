"""Linux 7.1 revocation: the report's `revoke` summary, from the exporter's events alone.

Rules (docs/events.md, "Linux 7.1: invalidate_mappings and revoke"):
- `revocations` / `unrevocations`: the exporter's `revoke` / `unrevoke` events.
- `maps_refused`: maps answered `no_device` (`op_answered`, op map, ok false, code no_device): the
  maps that came while their buffer was revoked.
- `unmap_wait_ms`: `unmap_wait_end.waited_ns` of each revocation, as p50 and max (and n).
- `broken_importers`: the importers named by an `unmap_wait_warning` (the posted v5/v6 drafts'
  WARN "Timed out waiting for DMABUF unmap, importer has a broken invalidate_mapping()"; 7.1 as
  merged has none), sorted, each once. Each warning is also an `unmap` timeout finding.
- `not_completed`: the revocations whose unmap wait (`unmap_wait_begin` without its
  `unmap_wait_end`) was still open when the workload ended (deploy's `workload_stop`). 7.1 waits
  for unmaps without bound, so an importer that never unmaps holds the revocation: such a wait is
  excused from `stuck` (checker/liveness.py: the importer broke the rule); one with no mapping
  live (a wait for nothing: revoke+cleanup-redrain) is a `stuck` unmap_wait.
- A revocation must not end its unmap wait while a mapping of its buffer is live: the exporter's
  own record of what it mapped (`map_served`, until `unmap_served`, `attachment_revoked` or
  `detach` of that attachment) says which are. Each one still mapped at `unmap_wait_end` is a
  `revoke_incomplete` finding (the revocation went on as if that importer had unmapped: what the
  kref-reinit race of the VFIO series did), with when it was mapped and when it did unmap, and
  its `events`, the witness: the map served, the revocation, the unmap wait's end with the mapping
  live, and the unmap (or revocation, or detach) that came after, when it came.
"""

from __future__ import annotations

from typing import Any

from checker.latency import LogHistogram
from checker.model import importer_name

NO_DEVICE = "no_device"


class RevokeTally:
    def __init__(self) -> None:
        self.revocations = 0
        self.unrevocations = 0
        self.maps_refused = 0
        self.unmap_wait = LogHistogram()
        self.broken: set[str] = set()
        self.mapped: dict[tuple[str, Any], tuple[Any, int, Any]] = {}  # (importer, att) -> (buffer, t, map id)
        self.early: dict[tuple[str, Any], list[dict[str, Any]]] = {}   # still mapped at an unmap_wait_end
        self.revoked_at: dict[Any, tuple[int, Any]] = {}                # buffer -> (t, revoke) of its last revoke
        self.open_waits: set[tuple[Any, Any]] = set()                    # (buffer, revoke) of unmap waits open
        self.workload_over = False
        self.not_completed = 0                                          # waits found open at the workload's end

    def revoke(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc == "exporter":
            self.revocations += 1
            self.revoked_at[ev.get("buffer")] = (t, ev.get("revoke"))

    def unrevoke(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc == "exporter":
            self.unrevocations += 1

    def map_refused(self, ev: dict[str, Any]) -> None:
        """An exporter op_answered for a map that failed."""
        if ev.get("code") == NO_DEVICE:
            self.maps_refused += 1

    def served(self, imp: str, ev: dict[str, Any], t: int) -> None:
        """The exporter's map_served: the attachment is mapped."""
        self.mapped[(imp, ev.get("attachment"))] = (ev.get("buffer"), t, ev.get("id"))

    def unmapped(self, imp: str, att: Any, t: int, how: str) -> None:
        """unmap_served, attachment_revoked or the exporter's detach: the mapping is gone."""
        if self.mapped.pop((imp, att), None) is not None and self.early:
            for item in self.early.pop((imp, att), ()):
                item["unmapped_t"], item["unmapped_by"] = t, how
                item["events"].append({"t_ns": t, "event": how, "svc": "exporter", "importer": imp,
                                       "buffer": item["buffer"], "attachment": att,
                                       "note": "the mapping is gone, after the revocation went on"})

    def unmap_wait_begin(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc == "exporter":
            self.open_waits.add((ev.get("buffer"), ev.get("revoke")))

    def workload_over_at(self, t: int) -> list[tuple[Any, Any, list[str]]]:
        """The workload ended (deploy's workload_stop): each unmap wait still open did not complete.
        Each as (buffer, revoke, the importers whose mappings of the buffer are live)."""
        if self.workload_over:
            return []
        self.workload_over = True
        self.not_completed = len(self.open_waits)
        return [(buf, rev, sorted({imp for (imp, _), (b, _, _) in self.mapped.items() if b == buf}))
                for buf, rev in sorted(self.open_waits, key=str)]

    def unmap_wait_end(self, ev: dict[str, Any], t: int, svc: str) -> list[dict[str, Any]]:
        """The revocation's unmap wait ended: the mappings of its buffer still live (findings)."""
        self.open_waits.discard((ev.get("buffer"), ev.get("revoke")))
        waited = ev.get("waited_ns")
        if type(waited) is int and waited >= 0:
            self.unmap_wait.add(waited)
        buffer, out = ev.get("buffer"), []
        for (imp, att), (buf, since, map_id) in self.mapped.items():
            if buf == buffer:
                events = [{"t_ns": since, "event": "map_served", "svc": "exporter", "importer": imp,
                           "buffer": buffer, "attachment": att, "id": map_id}]
                rt, rv = self.revoked_at.get(buffer, (None, None))
                if rt is not None:
                    events.append({"t_ns": rt, "event": "revoke", "svc": "exporter", "buffer": buffer, "revoke": rv})
                events.append({"t_ns": t, "event": "unmap_wait_end", "svc": "exporter", "buffer": buffer,
                               "revoke": ev.get("revoke"), "note": f"{imp}'s mapping still live"})
                events.sort(key=lambda e: e["t_ns"])
                item = {"t_ns": t, "buffer": buffer, "revoke": ev.get("revoke"), "importer": imp, "attachment": att,
                        "mapped_t": since, "map_id": map_id, "unmapped_t": None, "unmapped_by": None,
                        "events": events}
                self.early.setdefault((imp, att), []).append(item)
                out.append(item)
        return out

    def warned(self, ev: dict[str, Any]) -> str:
        name = importer_name(ev.get("importer"))
        self.broken.add(name)
        return name

    def report(self) -> dict[str, Any]:
        s = self.unmap_wait.summary_us()
        ms = lambda v: None if v is None else round(v / 1000.0, 3)  # noqa: E731
        return {"revocations": self.revocations, "unrevocations": self.unrevocations,
                "maps_refused": self.maps_refused,
                "unmap_wait_ms": {"n": s.get("n", 0), "p50": ms(s.get("p50")), "max": ms(s.get("max"))},
                "broken_importers": sorted(self.broken), "not_completed": self.not_completed}
