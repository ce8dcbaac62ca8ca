"""Device faults, decided in the importer's shell: rogue, slow-dma, early-ack, ignore-notify.

Rules:
- A fault acts while the workload clock is inside [at, at + for); before `start` nothing is faulted.
- Each fault draws from its own generator (stream `device:<index>:<importer>`), seeded by the
  run's seed, the fault's index in the run's list and the importer's name (the same seed gives the same decisions for the same sequence of
  jobs and notifications). `p` is the chance per job (rogue, slow-dma) or per move_notify
  (early-ack, ignore-notify).
- This file only decides; importer_svc/service.py acts and records each application as a `fault`
  event. The protocol halves never know: a faulty device is one that breaks the rules behind the
  driver's back.
"""

from __future__ import annotations

from typing import Any

from runtime.faults import DEVICE_KINDS, applies_to
from runtime.rng import MakeRng, real_rng


class DeviceFaults:
    def __init__(self, svc: str, faults: list[dict[str, Any]], seed: int, make_rng: MakeRng = real_rng) -> None:
        self._faults = [(f, make_rng(f"device:{i}:{svc}", f"{seed}:{i}:{svc}:device")) for i, f in enumerate(faults)
                        if f["kind"] in DEVICE_KINDS and applies_to(f, svc)]
        self.t0: int | None = None

    def start_clock(self, now: int) -> None:
        if self.t0 is None:
            self.t0 = now

    def __bool__(self) -> bool:
        return bool(self._faults)

    def fires(self, kind: str, now: int) -> dict[str, Any] | None:
        """The first active fault of `kind` whose draw says yes, or None."""
        if self.t0 is None:
            return None
        t = (now - self.t0) / 1e9
        for f, rng in self._faults:
            if f["kind"] != kind:
                continue
            if t < f["at"] or (f["for"] is not None and t >= f["at"] + f["for"]):
                continue
            if rng.chance(f["p"]):
                return f
        return None
