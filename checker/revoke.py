"""Linux 7.1 revocation: the report's `revoke` summary, from the exporter's events alone.

Rules (docs/events.md, "Linux 7.1: invalidate_mappings and revoke"):
- `revocations` / `unrevocations`: the exporter's `revoke` / `unrevoke` events.
- `maps_refused`: maps answered `no_device` (`op_answered`, op map, ok false, code no_device): the
  maps that came while their buffer was revoked.
- `unmap_wait_ms`: `unmap_wait_end.waited_ns` of each revocation, as p50 and max (and n).
- `broken_importers`: the importers named by an `unmap_wait_warning` (VFIO's "importer has a
  broken invalidate_mapping()"), sorted, each once. Each warning is also an `unmap` timeout finding.
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

    def revoke(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc == "exporter":
            self.revocations += 1

    def unrevoke(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc == "exporter":
            self.unrevocations += 1

    def map_refused(self, ev: dict[str, Any]) -> None:
        """An exporter op_answered for a map that failed."""
        if ev.get("code") == NO_DEVICE:
            self.maps_refused += 1

    def unmap_wait_end(self, ev: dict[str, Any], t: int, svc: str) -> None:
        waited = ev.get("waited_ns")
        if type(waited) is int and waited >= 0:
            self.unmap_wait.add(waited)

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
                "broken_importers": sorted(self.broken)}
