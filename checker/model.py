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
- Records carry only what a verdict or a witness sentence needs. What a witness's "because"
  chain needs beyond the verdict (checker/because.py) hangs off them: a job's `MapInfo` (the map
  that gave it its placement: request sent, served, received), and a generation's `MoveNotes`
  (the move off it: move_notify sent / received, acks, returns, the ack and fence waits). Both
  are bounded like their owners: one MapInfo per map, held by the attachment and its jobs; one
  MoveNotes per move, with one entry per notified attachment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LOST_WRITE = "lost_write"
STALE_READ = "stale_read"
USE_AFTER_UNMAP = "use_after_unmap"
UNFENCED_ACCESS = "unfenced_access"
WRITE_AFTER_INVALIDATE = "write_after_invalidate"
RACE_KINDS: tuple[str, ...] = (LOST_WRITE, STALE_READ, USE_AFTER_UNMAP, UNFENCED_ACCESS, WRITE_AFTER_INVALIDATE)


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
    out_broke_promise: bool = False    # unmap-hint: an unmap reply had promised this move would not come
    notes: "MoveNotes | None" = None   # the move off this generation: what it waited for
    copy_begin_t: int | None = None    # from here on, writes to this generation may be lost
    free_t: int | None = None          # from here on, reads of this generation may see other bytes
    copy_cause: dict[str, Any] | None = None   # what fired the row that began that copy: copy_begin's
    free_cause: dict[str, Any] | None = None   # (and free's) `trigger` and `timer` fields, as recorded


@dataclass(slots=True)
class BufferGens:
    gens: dict[Any, GenRecord] = field(default_factory=dict)
    dropped_upto: int = 0              # every generation <= this was evicted from `gens`
    cur: GenRecord | None = None       # the generation the latest move began to take the buffer off
    retired: tuple[Any, int] | None = None   # Linux 7.1: the last fence_wait_end: ((kind, id), t)
    pending: list["Window"] = field(default_factory=list)  # 7.1 windows waiting for their fences to retire


class NotifyNote:
    """One attachment's part in one move: its move_notify (or invalidate_mappings) and its answer."""

    __slots__ = ("importer", "attachment", "op", "sent_t", "sent_id", "recv_t", "state", "ack_sent_t", "ack_t",
                 "returned_t")

    def __init__(self, importer: str, attachment: Any) -> None:
        self.importer = importer
        self.attachment = attachment
        self.op = "move_notify"          # or "invalidate_mappings" (Linux 7.1 strategies)
        self.sent_t: int | None = None
        self.sent_id: Any = None
        self.recv_t: int | None = None
        self.state: Any = None           # the importer's attachment state when it arrived
        self.ack_sent_t: int | None = None
        self.ack_t: int | None = None
        self.returned_t: int | None = None


def _latest(last: tuple[int, tuple[str, ...]] | None, t: int, importer: str) -> tuple[int, tuple[str, ...]]:
    """The latest instant an answer came at, with every importer whose answer came then, sorted."""
    if last is not None and last[0] == t:
        return (t, tuple(sorted({*last[1], importer})))
    return (t, (importer,))


class MoveNotes:
    """What the exporter waited for before copying a generation away, and when each wait ended."""

    __slots__ = ("atts", "last_ack", "last_return", "ack_timeout", "fence_wait_begin_t", "fence_wait_end_t",
                 "forced")

    def __init__(self) -> None:
        self.atts: dict[tuple[str, Any], NotifyNote] = {}
        # (t, the importers whose answer came at t): at one instant (simulated runs), which line
        # came first is only the order the exporter read its socket in, which no verdict reads;
        # keeping it would tell apart schedules that differ in nothing else (the state cache).
        self.last_ack: tuple[int, tuple[str, ...]] | None = None
        self.last_return: tuple[int, tuple[str, ...]] | None = None
        self.ack_timeout: tuple[int, list[str]] | None = None
        self.fence_wait_begin_t: int | None = None
        self.fence_wait_end_t: int | None = None
        self.forced: list[str] = []

    def answered(self, importer: str, attachment: Any, t: int, ack: bool) -> None:
        """An ack (ack=True) or a callback's return arrived from this attachment at t."""
        n = self.att(importer, attachment)
        if ack:
            if n.ack_t is None:
                n.ack_t = t
            self.last_ack = _latest(self.last_ack, t, importer)
        else:
            if n.returned_t is None:
                n.returned_t = t
            self.last_return = _latest(self.last_return, t, importer)

    def att(self, importer: str, attachment: Any) -> NotifyNote:
        key = (importer, attachment)
        n = self.atts.get(key)
        if n is None:
            n = self.atts[key] = NotifyNote(importer, attachment)
        return n


MapRaw = tuple  # (the importer's map event, its t_ns, the exporter's map_served as (id, t_ns, event) or None)


class MapInfo:
    """The map that handed an attachment its placement: request sent, served, reply received.

    The oracle keeps only the raw events (MapRaw: a tuple per map on the hot path); a witness
    builds this from them (`MapInfo.of`)."""

    __slots__ = ("id", "recv_t", "sent_t", "served_t", "deferred_ns", "gen", "heap", "offset", "reused",
                 "served")

    @classmethod
    def of(cls, raw: "MapRaw | None") -> "MapInfo | None":
        return None if raw is None else cls(*raw)

    def __init__(self, ev: dict[str, Any], t: int, served: tuple[Any, int, dict[str, Any]] | None) -> None:
        self.id = ev.get("id")
        self.recv_t = t
        lat = ev.get("latency_ns")
        self.sent_t = t - lat if type(lat) is int else None
        ok = served is not None and served[0] == self.id
        sev: dict[str, Any] = served[2] if ok else {}  # type: ignore[index]
        self.served_t = served[1] if ok else None      # type: ignore[index]
        self.deferred_ns = sev.get("deferred_ns")
        # what the exporter handed out (the importer may have used something else: reused entries)
        self.served: dict[str, Any] | None = ({k: sev.get(k) for k in ("gen", "heap", "offset", "moved")}
                                              if ok else None)
        self.gen = ev.get("gen")
        self.heap = ev.get("heap")
        self.offset = ev.get("offset")
        self.reused = ev.get("reused") is True   # the IOMMU entries kept from an earlier map were reused


@dataclass(slots=True)
class AttState:
    mapped: bool = False
    usable: bool = False
    last: str = "attach"               # attach / map / unmap / invalidate
    last_t: int | None = None
    last_gen: int | None = None
    map_info: "MapRaw | None" = None   # the map that gave it its current placement (MapInfo.of)
    win: "Window | None" = None        # Linux 7.1: its invalidation window (returned, retired, unmapped)


class Window:
    """Linux 7.1: one attachment's invalidation, from its invalidate_mappings return to its unmap.

    From `returned_t` the importer's callback had returned; from `start` (its fences retired: the
    exporter's fence_wait_end of the same move or revocation, or the return itself for a
    synchronous revoke) until `end` (its unmap, detach or revocation) it may only read and discard."""

    __slots__ = ("key", "buffer", "svc", "attachment", "returned_t", "start", "retired_by", "end", "ended_by")

    def __init__(self, key: tuple[str, Any], buffer: Any, svc: str, attachment: Any, returned_t: int) -> None:
        self.key = key                     # ("move", id) or ("revoke", id)
        self.buffer = buffer
        self.svc = svc
        self.attachment = attachment
        self.returned_t = returned_t
        self.start: int | None = None
        self.retired_by: str | None = None
        self.end: int | None = None
        self.ended_by: str | None = None

    def overlaps(self, begin: int, end: int) -> bool:
        """Accesses from `begin` to `end` reach strictly into the window (equal times do not)."""
        return self.start is not None and end > self.start and (self.end is None or begin < self.end)


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
                 "rogue", "access_end", "no_access", "cut", "faulted", "device_faults", "map", "win", "used")

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
        self.map: MapRaw | None = None       # the map its attachment's placement came from (MapInfo.of)
        self.win: Window | None = None       # Linux 7.1: the invalidation window of its attachment
        self.used = False                    # a read that ended ok, counted its bytes and did not discard them

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
    by_window: bool = False            # Linux 7.1: judged by its attachment's invalidation window


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
