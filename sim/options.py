"""What a simulated run may do beyond `dmabuf-emu run`'s options: for the schedule search.

Rules:
- `network`: "drawn" (the default: each frame's delay is a draw of the sender's `net:` stream,
  sim/network.py) or "chosen": a frame between two services is delivered when the scheduler
  says, anywhere from MIN_NS to MAX_NS after it was sent (sim/network.py `elastic`). Then the
  order of every message against every other event is a step decision, which is what the
  search (sim/search/) explores. Frames of the driver's control sockets keep drawn delays.
- `jobs`: each importer incarnation asks its device for at most this many DMA jobs.
- `moves`: the exporter's memory manager wants at most this many moves (begun, refused or
  queued); an eviction made to promote another buffer into its room still brings that
  promotion.
- `stalls`: a DMA engine's chunk may stall past any of the exporter's pending timers, each such
  stall a decision of the scheduler (sim/world.py): what the schedule search assumes unless told
  --no-stalls ("devices may stall past any timer"); off, devices are punctual (a plain `sim`).
  Written only when on, so a schedule without stalls reads as it always did.
- `pauses`: an importer's process may freeze between a DMA chunk's check and its access, for
  PAUSE_LEASES of its leases (as SIGSTOP at the worst moment, then SIGCONT), each such pause a
  decision of the scheduler (sim/world.py), counted against --bound like a stall (explore
  --pauses). The device's lease runs out meanwhile, so the exporter's handling of a lost importer
  meets an access that was checked before the lease ran out. Off by default; written only when on.
- None means no limit, as in a real run. The options are written into schedule.json (`sim`) so
  that `dmabuf-emu replay` runs the schedule with them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

NETWORKS = ("drawn", "chosen")
# What a verdict assumes of the devices' timing, by `stalls` (explore.json `devices`, its summary).
DEVICES = {True: "devices may stall past any timer", False: "devices punctual"}
PAUSES = "importers may pause mid-access for two leases"   # added to DEVICES' words when `pauses` is on
PAUSE_LEASES = 2


class SimOptionError(ValueError):
    """A bad simulator option: the message names it."""


@dataclass(frozen=True)
class SimOptions:
    network: str = "drawn"
    jobs: int | None = None
    moves: int | None = None
    stalls: bool = False
    pauses: bool = False

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise SimOptionError(f"network must be one of {', '.join(NETWORKS)}, got {self.network!r}")
        for key in ("jobs", "moves"):
            v = getattr(self, key)
            if v is not None and (type(v) is not int or v < 0):
                raise SimOptionError(f"{key} must be a whole number >= 0 or none, got {v!r}")
        for key in ("stalls", "pauses"):
            if type(getattr(self, key)) is not bool:
                raise SimOptionError(f"{key} must be true or false, got {getattr(self, key)!r}")

    @property
    def is_default(self) -> bool:
        return self == SimOptions()

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("stalls", "pauses"):
            if not d[key]:
                del d[key]
        return d

    @property
    def devices(self) -> str:
        """What a verdict under these options assumes of the devices' timing."""
        return DEVICES[self.stalls] + (f"; {PAUSES}" if self.pauses else "")

    def pause_ns(self, lease_ms: float) -> int | None:
        """How long a search's pause holds an importer (None: no pauses)."""
        return int(PAUSE_LEASES * lease_ms * 1e6) if self.pauses else None

    @classmethod
    def from_mapping(cls, data: Any, where: str) -> "SimOptions":
        if not isinstance(data, dict):
            raise SimOptionError(f"{where}: 'sim' must be a table of simulator options, got {type(data).__name__}")
        unknown = sorted(set(data) - {"network", "jobs", "moves", "stalls", "pauses"})
        if unknown:
            raise SimOptionError(f"{where}: unknown simulator option '{unknown[0]}' (known: jobs, moves, network, "
                                 f"pauses, stalls)")
        try:
            return cls(**data)
        except SimOptionError as exc:
            raise SimOptionError(f"{where}: sim: {exc}") from None
