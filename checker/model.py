"""The oracle's bounded state: what it remembers about generations, jobs and attachments.

Rules:
- A `GenRecord` is one generation of one buffer: where it lives, the copy that created it
  (generation 1 is created by `buffer_created`, by no copy), and the move that took the buffer
  off it (its copy_begin and free times). Each time is the first one seen: generations only grow
  per completed switch, so a second copy of the same generation is not expected.
- A `Job` is one DMA job (importer svc + job id) from `dma_begin` until it is judged. It holds its
  `GenRecord` by reference, so the record outlives its eviction from the per-buffer table for as
  long as a job needs it; memory is bounded by live jobs and buffers, not by history length.
- An `AttState` is one importer's view of one attachment: mapped (a `map` with no later `unmap`)
  and usable (mapped, and not invalidated on move_notify since).
- A job's accesses end at `access_end` when its dma_end says when its last real access was
  (`last_access_ns`: an aborted job stops touching memory before its dma_end), else at its end.
  A job of a service that died has no dma_end: it ends at the death (`cut` says how it ended).
- Records carry only what a verdict or a witness sentence needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LOST_WRITE = "lost_write"
STALE_READ = "stale_read"
USE_AFTER_UNMAP = "use_after_unmap"
UNFENCED_ACCESS = "unfenced_access"
RACE_KINDS: tuple[str, ...] = (LOST_WRITE, STALE_READ, USE_AFTER_UNMAP, UNFENCED_ACCESS)


def importer_name(x: Any) -> str:
    """Exporter events name importers `importer-N` (protocol/exporter.py does); accept a bare N too."""
    if isinstance(x, int) and not isinstance(x, bool):
        return f"importer-{x}"
    return str(x)


@dataclass(slots=True)
class Placement:
    heap: str | None
    offset: int | None
    size: int | None = None

    @classmethod
    def of(cls, obj: Any) -> "Placement | None":
        if not isinstance(obj, dict):
            return None
        return cls(obj.get("heap"), obj.get("offset"), obj.get("size"))


@dataclass(slots=True)
class GenRecord:
    buffer: int
    gen: int
    place: Placement | None
    initial: bool                      # created by buffer_created, not by a copy
    created_t: int | None = None       # buffer_created, or move_begin of the creating move
    create_move: Any = None
    create_from: Placement | None = None
    create_copy_begin_t: int | None = None
    copy_end_t: int | None = None      # the creating copy ended: the generation is safe to touch
    out_move: Any = None               # the move that takes the buffer off this generation
    out_begin_t: int | None = None
    out_to: Placement | None = None
    copy_begin_t: int | None = None    # from here on, writes to this generation may be lost
    free_t: int | None = None          # from here on, reads of this generation may see other bytes


@dataclass(slots=True)
class BufferGens:
    gens: dict[Any, GenRecord] = field(default_factory=dict)
    dropped_upto: int = 0              # every generation <= this was evicted from `gens`


@dataclass(slots=True)
class AttState:
    mapped: bool = False
    usable: bool = False
    last: str = "attach"               # attach / map / unmap / invalidate
    last_t: int | None = None
    last_gen: int | None = None


@dataclass(slots=True)
class UauCause:
    """Why a job's attachment was not usable at dma_begin."""

    how: str                           # "unmap", "invalidate" or "never"
    t_ns: int | None
    gen: int | None


class Job:
    """One DMA job. Built on every dma_begin, so it is lean: the begin event itself is kept and
    the fields a witness needs are read from it."""

    __slots__ = ("ev", "svc", "write", "begin_t", "rec", "dropped", "uau", "end_t", "status", "links",
                 "rogue", "access_end", "no_access", "cut", "faulted", "device_faults")

    def __init__(self, ev: dict[str, Any], svc: str, write: bool, begin_t: int, rec: GenRecord | None,
                 dropped: bool, uau: UauCause | None, rogue: bool = False) -> None:
        self.ev = ev
        self.svc = svc
        self.write = write
        self.begin_t = begin_t
        self.rec = rec
        self.dropped = dropped
        self.uau = uau
        self.end_t: int | None = None
        self.status: str | None = None
        self.links: list[tuple[CorruptionLink, int]] | None = None
        self.rogue = rogue
        self.access_end: int | None = None   # last real access, when the dma_end says (else end_t)
        self.no_access = False               # blocked by the IOMMU throughout, or aborted before any
        self.cut: str | None = None          # "died" / "restarted": ended by its service's end
        self.faulted = False                 # an iommu_fault was seen for it
        self.device_faults: list[tuple[int, str]] | None = None  # (t_ns, kind) injected while it ran

    job = property(lambda self: self.ev.get("job"))
    buffer = property(lambda self: self.ev.get("buffer"))
    attachment = property(lambda self: self.ev.get("attachment"))
    gen = property(lambda self: self.ev.get("gen"))
    heap = property(lambda self: self.ev.get("heap"))
    offset = property(lambda self: self.ev.get("offset"))
    size = property(lambda self: self.ev.get("size"))

    @property
    def key(self) -> tuple[str, Any]:
        return (self.svc, self.ev.get("job"))


@dataclass(slots=True)
class Race:
    kind: str
    job: Job
    end_t: int                         # the job's end, or the history's last event if it never ended
    unfinished: bool


@dataclass(slots=True)
class CorruptionLink:
    """A corruption event waiting to learn whether one of its candidate jobs raced.

    Candidates are tried in order (the stale writer named by the found stamp, then the reading
    job); a candidate still running is awaited, so the first racy candidate in order wins.
    """

    candidates: list[tuple[str, Any]]
    outcomes: list[Any]                # None: not judged yet; False: no race; Race: raced
    example: dict[str, Any] | None
    race: Race | None = None
    via: str | None = None
    done: bool = False
