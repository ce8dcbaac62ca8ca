"""The race oracle: one streaming pass over a history ordered by t_ns.

Rules (docs/events.md is the event contract; the verdicts are the spec's, restated here):
- A DMA job is an importer's dma_begin..dma_end with one job id; it used generation g of buffer B.
  It is judged once, as the first kind that fits, in this order:
  1. lost_write: a write whose end is strictly after the copy of g began (the exporter's
     copy_begin with buffer B, from_gen g). If no copy_begin of g was seen but g was freed, the
     free stands in for it (a write into a released range is lost all the more).
  2. stale_read: a read whose end is strictly after g's range was freed (free, buffer B, from_gen g).
  2a. Linux 7.1 (docs/events.md): on an attachment whose invalidate_mappings returned, a write
     reaching into its window (fences retired .. unmap) is write_after_invalidate; a read whose
     data was used (dma_end ok, bytes > 0, not discarded) reaching into it is a stale_read. A read
     not used, after the return and before the unmap, is checked first of all: counted in
     speculative_reads, never a race.
  3. use_after_unmap: a job begun while its importer's attachment was unmapped, invalidated on
     move_notify, or never mapped (no `map` of that svc+attachment since).
  4. unfenced_access: a job on generation h > 1 begun before the copy creating h ended (copy_end
     with to_gen h strictly after dma_begin, or no copy_end at all). Generation 1 is created by
     buffer_created, not by a copy.
  Equal times are never a race.
- A job's accesses end at its dma_end, or earlier at the dma_end's `last_access_ns` (an aborted
  job stopped touching memory then). A job with no dma_end ends when its service died
  (deploy's service_died for that name) or restarted (its next service_start); with neither, it
  is considered running until the history's last event. A job that made no real access at all
  (dma_end status "fault" with bytes 0: every chunk blocked by the IOMMU; or last_access_ns null
  or before its dma_begin) is no race: IOMMU faults are not races.
- Rogue jobs (dma_begin `rogue: true`: a device's DMA after unmap or after acking move_notify)
  are real accesses and judged like any job; they are also counted in `rogue_jobs`.
- Bytes check (from the exporter's final_content per buffer): lines stamped with another buffer's
  id are foreign lines; the buffer's last write (latest dma_end among its write jobs with status
  ok, rogue writes excluded) must be in the final bytes with all its lines, unless another write on the buffer overlapped
  it in time (equal times do not overlap), a later write that did not complete touched the buffer,
  or a write was still running: then it is not checked, and the reason is counted.
- Streaming: a job is judged at the first event whose t_ns is past its end (or at the end of the
  history), so every exporter event with the same t_ns, in whichever order the merge put the tie,
  has been seen. Then "copy_begin not seen yet" means it comes at or after the job's end: no race.
- Memory: per buffer the last KEEP_GENERATIONS generation records; a job on a generation older
  than those was on a range copied away and freed several moves earlier (moves of one buffer are
  serial), so a write on it is a lost_write and a read a stale_read. Live jobs, attachments
  and buffers are kept; of judged jobs only the last RECENT_RACES racy ones (for corruption
  linking). Latencies go to bounded histograms.
- Corruption linking: the found stamp's writer job (importer-<writer>, seq) when the stamp belongs
  to another buffer, else (or if that job did not race) the reading job itself; a link counts when
  the first of those candidates that raced is found.
- A line that is not a JSON object with int t_ns, str svc and str event is skipped and counted in
  `history_errors`; an event missing a field its handler needs is counted in `anomalies`.
- Findings beside races (checker/findings.py): deadlocks from the wait-for graph
  (checker/waitfor.py, fed the lock and wait events), forced fences, timeouts, and what was
  still open when the drain ended (`stuck`: checker/liveness.py, fed its events after the
  handlers here). The revoke summary
  is checker/revoke.py's. Witnesses get their "because" chain from checker/because.py.
"""

from __future__ import annotations

from collections import Counter
from itertools import islice
from operator import attrgetter
from typing import Any, Callable, Iterable

from checker.catalogue import require_known
from checker.jsonio import dumps, loads
from checker.latency import LogHistogram
from checker.model import (
    LOST_WRITE,
    RACE_KINDS,
    STALE_READ,
    UNFENCED_ACCESS,
    USE_AFTER_UNMAP,
    AttState,
    BufferGens,
    CorruptionLink,
    GenRecord,
    Job,
    MoveNotes,
    NotifyNote,
    Placement,
    Race,
    UauCause,
    Window,
    WRITE_AFTER_INVALIDATE,
    importer_name,
)
from checker.findings import (CATCHES, DEADLOCK, FENCE_FORCED, REFCOUNT_WARNING, REVOKE_INCOMPLETE, TIMEOUT,
                              Findings)
from checker.liveness import HANDLED as LIVENESS_EVENTS, Liveness
from checker.lockdep import HANDLED as LOCKDEP_EVENTS, LockDep
from checker.revoke import RevokeTally
from checker.waitfor import HANDLED as WAITFOR_EVENTS, Cycle, WaitFor
from checker.witness import corruption_sentence, sentence, witness
from checker.because import because, context_events

KEEP_GENERATIONS = 8
SPECULATIVE = "speculative read"          # classify's verdict for a read-and-discard: counted, no race
STALE_BY_WINDOW = "stale_read by window"  # a stale_read judged by the 7.1 window, not by a free
NOTIFY_FAULTS = ("early-ack", "ignore-notify")
RECENT_RACES = 65536
MAX_WITNESSES = 5
PARSE_BATCH = 512
MAX_CORRUPTION_EXAMPLES = 5
PARAM_KEYS_LIFTED = ("strategy", "seed", "importers", "buffers", "duration_s")
MAX_LISTED = 256           # entries per list of the report (deaths, restarts, lost writes, ...)
LINE_BYTES = 64
FAULT_COMMON_KEYS = ("kind", "target", "at", "for", "p", "op")

RaceHook = Callable[[Race], None]
EventHook = Callable[[dict[str, Any], int, str, str], None]
FindingHook = Callable[[str, str, int, dict[str, Any]], None]


# Event name -> its handler, as an attribute path from the oracle (`revoke.revoke`: the revoke
# tally's). Every name is the catalogue's (checked below, at import); the wait-for graph's
# events (checker/waitfor.py HANDLED) go to the graph unless a handler here takes them first.
_DISPATCH: dict[str, str] = {
    "dma_begin": "_dma_begin",
    "dma_end": "_dma_end",
    "map": "_map",
    "unmap": "_unmap",
    "invalidate": "_invalidate",
    "attach": "_attach",
    "detach": "_detach",
    "buffer_created": "_buffer_created",
    "move_begin": "_move_begin",
    "move_refused": "_move_refused",
    "move_queued": "_move_queued",
    "move_cancelled": "_move_cancelled",
    "copy_begin": "_copy_begin",
    "copy_end": "_copy_end",
    "free": "_free",
    "move_end": "_move_end",
    "move_notify_sent": "_move_notify_sent",
    "move_notify_received": "_move_notify_received",
    "move_notify_returned": "_move_notify_returned",
    # Linux 7.1 names the same notification invalidate_mappings
    "invalidate_mappings_sent": "_move_notify_sent",
    "invalidate_mappings_received": "_move_notify_received",
    "invalidate_mappings_returned": "_invalidate_returned",
    "revoke": "revoke.revoke",
    "unrevoke": "revoke.unrevoke",
    "unmap_wait_begin": "revoke.unmap_wait_begin",
    "unmap_wait_end": "_unmap_wait_end",
    "refcount_warning": "_refcount_warning",
    "workload_stop": "_workload_stop",
    "unmap_served": "_unmap_served",
    "unmap_wait_warning": "_unmap_wait_warning",
    "revoked": "_revoked",
    "ack_sent": "_ack_sent",
    "ack": "_ack",
    "ack_timeout": "_ack_timeout",
    "fence_wait_begin": "_fence_wait_begin",
    "fence_wait_end": "_fence_wait_end",
    "map_served": "_map_served",
    "op_answered": "_op_answered",
    "fence_signal": "_fence_signal",
    "iommu_fault": "_iommu_fault",
    "fault": "_fault",
    "corruption": "_corruption",
    "job_failed": "_job_failed",
    "attachment_revoked": "_attachment_revoked",
    "importer_lost": "_importer_lost",
    "final_content": "_final_content",
    "retry": "_retry",
    "dedup": "_dedup",
    "lease_expired": "_importer_stop",
    "exporter_lost": "_importer_stop",
    "rejoin": "_rejoin",
    "service_restarted": "_service_restarted",
    "workload_start": "_workload_start",
    "service_start": "_service_start",
    "service_stop": "_service_stop",
    "service_died": "_service_died",
    "run_start": "_run_start",
    "run_stop": "_run_stop",
    "run_interrupted": "_run_interrupted",
}
require_known([*_DISPATCH, *WAITFOR_EVENTS, *LIVENESS_EVENTS], "checker/oracle.py")


def _then(first: Callable[[dict[str, Any], int, str], None] | None,
          second: Callable[[dict[str, Any], int, str], None]) -> Callable[[dict[str, Any], int, str], None]:
    """A handler that runs `first` (if any), then `second`."""
    if first is None:
        return second

    def both(ev: dict[str, Any], t: int, svc: str) -> None:
        first(ev, t, svc)
        second(ev, t, svc)
    return both


class _LastWrite:
    """Per buffer: the latest-ending ok write job so far, and whether it can be checked."""

    __slots__ = ("svc", "job", "begin", "end", "rogue", "overlapped", "superseded", "max_end")

    def __init__(self) -> None:
        self.svc: str | None = None
        self.job: Any = None
        self.begin = 0
        self.end = 0
        self.rogue = False
        self.overlapped = False        # another write's accesses overlapped it in time
        self.superseded = False        # a later write that did not complete touched the buffer
        self.max_end: int | None = None  # latest access end of every write that ended so far


def describe_fault(f: Any) -> str:
    """One line for people: `delay ms=5 op=move_notify -> exporter at 0 s for 2 s`."""
    if not isinstance(f, dict):
        return str(f)

    def num(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    parts = [str(f.get("kind"))]
    parts += [f"{k}={num(v)}" for k, v in f.items() if k not in FAULT_COMMON_KEYS and v is not None]
    if f.get("op"):
        parts.append(f"op={f['op']}")
    p = f.get("p")
    if isinstance(p, (int, float)) and not isinstance(p, bool) and p < 1:
        parts.append(f"p={p:g}")
    at, dur = f.get("at"), f.get("for")
    when = f"at {num(at if at is not None else 0)} s" + (f" for {num(dur)} s" if dur is not None else "")
    return f"{' '.join(parts)} -> {f.get('target', 'importers')} {when}"


def _cause(ev: dict[str, Any]) -> dict[str, Any] | None:
    """What fired the row that emitted `ev` (its trigger and timer fields), None if not recorded."""
    cause = {k: ev[k] for k in ("trigger", "timer") if k in ev}
    return cause or None


def _op_key(ev: dict[str, Any]) -> tuple[str, Any]:
    """The move or revocation an event belongs to."""
    return ("move", ev.get("move")) if ev.get("move") is not None else ("revoke", ev.get("revoke"))


def explained(race: Race, t0: int) -> dict[str, Any]:
    """A race's witness (report.json `witnesses`): its sentence and proof, why it happened (the
    "because" chain) and the messages and waits that chain cites."""
    return {**witness(race, t0), "because": because(race, t0), "context": context_events(race)}


def _listed(items: list[dict[str, Any]], item: dict[str, Any], over: Counter[str], name: str) -> None:
    if len(items) < MAX_LISTED:
        items.append(item)
    else:
        over[name] += 1


class Oracle:
    """Feed events in t_ns order (`run` over a file, or `feed` one by one), then `report()`."""

    def __init__(self, *, on_race: RaceHook | None = None, on_event: EventHook | None = None,
                 on_finding: FindingHook | None = None) -> None:
        self.on_race = on_race
        self.on_event = on_event
        self.on_finding = on_finding
        self.events = 0
        self.history_errors = 0
        self.unordered = 0
        self.anomalies: Counter[str] = Counter()
        self.t0: int | None = None
        self.t1: int | None = None
        # run parameters
        self.run_params: dict[str, Any] | None = None
        self.run_id: Any = None
        self.exporter_strategy: Any = None
        self.mutant: dict[str, Any] | None = None  # what a mutant's run says it breaks (service_start, run_start)
        # services: name -> [started, stopped, died]
        self.svc_flags: dict[str, list[bool]] = {}
        self.svc_last: dict[str, int] = {}
        # counters
        self.ops = {"attach": 0, "detach": 0, "map": 0, "unmap": 0}
        self.n_dma_read = 0
        self.n_dma_write = 0
        self.maps = {"reused": 0, "remapped": 0}
        self.moves = {"attempted": 0, "begun": 0, "completed": 0, "refused": 0, "queued": 0,
                      "cancelled": 0}
        self.refused_by_reason: Counter[str] = Counter()
        self.races = {k: 0 for k in RACE_KINDS}
        self.notify = {"sent": 0, "acked": 0, "ack_timeouts": 0, "received": 0, "invalidated": 0}
        self.iommu_faults = 0
        self.faults = 0
        self.fences_forced = 0
        self.jobs_failed = 0
        self.jobs_unfinished = 0
        self.jobs_judged = 0
        self.attachments_revoked = 0
        self.held_at_detach = 0
        self.services_died = 0
        # faults and recovery
        self.run_start_t: int | None = None
        self.workload_t: int | None = None
        self.interrupted: dict[str, Any] | None = None   # deploy's run_interrupted: the run was cut short
        self.fault_kinds: Counter[str] = Counter()
        self.deaths: list[dict[str, Any]] = []
        self.restarts: list[dict[str, Any]] = []
        self.importer_stops: list[dict[str, Any]] = []
        self.not_listed: Counter[str] = Counter()
        self.starts: Counter[str] = Counter()
        self.restart_counts: Counter[str] = Counter()
        self.recovery = {"retries": 0, "dedups": 0, "lease_expired": 0, "rejoin": 0, "exporter_lost": 0}
        self.importer_lost_by_reason: Counter[str] = Counter()
        self.revoked_by_reason: Counter[str] = Counter()
        self.jobs_aborted = 0
        self.jobs_blocked = 0
        self.jobs_cut = 0
        self.held_at_death = 0
        self.rogue = {"total": 0, "raced": 0, "iommu_faults": 0}
        self.races_by_importer: Counter[str] = Counter()
        self.first_race_t: int | None = None
        self.last_writes: dict[Any, _LastWrite] = {}
        self.final_content: dict[Any, dict[str, Any]] = {}
        self.corruption = {"jobs": 0, "lines": 0, "linked": 0}
        self.corruption_examples: list[tuple[dict[str, Any], CorruptionLink]] = []
        self.latency = {k: LogHistogram() for k in ("map", "unmap", "move", "notify_ack", "fence_wait")}
        self.witness_races: dict[str, list[Race]] = {k: [] for k in RACE_KINDS}
        self.waitfor = WaitFor(on_cycle=self._on_cycle if on_finding is not None else None,
                               on_broken=self._on_cycle_broken if on_finding is not None else None)
        self.findings = Findings(self.waitfor, LockDep(on_finding))
        # the graph's tables, held here too: a hot handler asks "any waits at all?" in one lookup
        # (the WaitFor mutates them in place, never rebinds them)
        self._wf_deferred = self.waitfor.deferred
        self._wf_on_map = self.waitfor.blocked_on_map
        self._wf_waiters = self.waitfor.fence_waiters
        self._wf_blocked = self.waitfor.blocked
        self.revoke = RevokeTally()
        self.speculative_reads = 0
        # state
        self.buffers: dict[Any, BufferGens] = {}
        self.jobs: dict[tuple[str, Any], Job] = {}
        self.atts: dict[tuple[str, Any], AttState] = {}
        self.recent_races: dict[tuple[str, Any], Race] = {}
        # (importer, att) -> its last map_served: (id, t, the event)
        self.served: dict[tuple[str, Any], tuple[Any, int, dict[str, Any]]] = {}
        self._ending: list[Job] = []      # ended jobs waiting for time to move past their end
        self._orphans: list[Job] = []     # unfinished jobs whose id a restarted service reused
        self._ending_t = 0
        self._finished = False
        self._handlers: dict[str, Callable[[dict[str, Any], int, str], None]] = {
            name: attrgetter(path)(self) for name, path in _DISPATCH.items()}
        for name in WAITFOR_EVENTS:
            self._handlers.setdefault(name, getattr(self.waitfor, name))
        # Liveness (checker/liveness.py) sees its events after the handler above, if any.
        self.liveness = self.findings.liveness = Liveness(self.findings.stuck, on_finding)
        for name, live in self.liveness.handlers().items():
            self._handlers[name] = _then(self._handlers.get(name), live)

    # ------------------------------------------------------------------ the pass

    def run(self, lines: Iterable[bytes]) -> None:
        """Judge every line (bytes, as read from a history opened in binary mode).

        Lines are parsed PARSE_BATCH at a time as one JSON array (one orjson call instead of
        many); a batch that does not parse as exactly one element per line is parsed again line by
        line, so a bad line costs only its own event.
        """
        it = iter(lines)
        while True:
            chunk = list(islice(it, PARSE_BATCH))
            if not chunk:
                return
            try:
                parsed = loads(b"[" + b",".join(chunk) + b"]")
                if len(parsed) != len(chunk):
                    raise ValueError("a line held more or less than one JSON value")
            except (ValueError, TypeError):
                parsed = [self._parse_one(line) for line in chunk]
            self._consume(parsed)

    def _parse_one(self, line: bytes | str) -> Any:
        try:
            return loads(line)
        except ValueError:
            if line.strip():
                self.history_errors += 1
            return None

    def _consume(self, parsed: list[Any]) -> None:
        """The hot loop: keep it lean (locals, no per-event allocation)."""
        handlers = self._handlers
        svc_last = self.svc_last
        on_event = self.on_event
        lockdep = self.findings.lockdep.feed   # potential deadlocks (checker/lockdep.py)
        ending = self._ending
        events = self.events
        t1 = self.t1 if self.t1 is not None else -(1 << 63)
        for ev in parsed:
            if ev is None:
                continue
            try:
                t = ev["t_ns"]
                svc = ev["svc"]
                name = ev["event"]
                if type(t) is not int or type(svc) is not str or type(name) is not str:
                    raise TypeError
            except (KeyError, TypeError, IndexError):
                self.history_errors += 1
                continue
            events += 1
            if t >= t1:
                t1 = t
            else:
                self.unordered += 1
            if ending and t != self._ending_t:
                self._flush_ending()
            if self.t0 is None:
                self.t0 = t
            svc_last[svc] = t
            h = handlers.get(name)
            if h is not None:
                try:
                    h(ev, t, svc)
                except (KeyError, TypeError, ValueError, AttributeError):
                    self.anomalies[f"malformed {name}"] += 1
            if name in LOCKDEP_EVENTS:
                lockdep(ev)
            if on_event is not None:
                on_event(ev, t, svc, name)
        self.events = events
        if events:
            self.t1 = t1

    def feed(self, ev: dict[str, Any]) -> None:
        """One event (already parsed); for tests and tools. Same rules as `run`."""
        self.run([dumps(ev)])

    def finish(self) -> None:
        """End of history: judge the jobs that never ended as running until the last event."""
        if self._finished:
            return
        self._finished = True
        self._flush_ending()
        live = sorted([*self.jobs.values(), *self._orphans], key=lambda j: (j.begin_t, j.svc, str(j.job)))
        self._orphans.clear()
        for job in live:
            self.jobs_unfinished += 1
            self._judge(job)

    # ------------------------------------------------------------------ verdicts

    def _flush_ending(self) -> None:
        ending = self._ending
        for job in ending:
            self._judge(job)
        ending.clear()

    def _lookup(self, buffer: Any, gen: Any) -> tuple[GenRecord | None, bool]:
        bg = self.buffers.get(buffer)
        if bg is None:
            return None, False
        rec = bg.gens.get(gen)
        if rec is None and isinstance(gen, int) and gen <= bg.dropped_upto:
            return None, True
        return rec, False

    def classify(self, job: Job, end: int) -> str | None:
        """The race kind of `job`, whose accesses ended at `end`, or None (or SPECULATIVE, or
        STALE_BY_WINDOW: see `_judge`)."""
        if job.no_access:
            return None
        rec, dropped = job.rec, job.dropped
        if rec is None and not dropped:
            rec, dropped = self._lookup(job.buffer, job.gen)
            job.rec, job.dropped = rec, dropped
        w = job.win
        if w is not None and not job.write and not job.used and end > w.returned_t \
                and (w.end is None or job.begin_t < w.end):
            return SPECULATIVE
        if job.write:
            if dropped:
                return LOST_WRITE
            if rec is not None:
                edge = rec.copy_begin_t if rec.copy_begin_t is not None else rec.free_t
                if edge is not None and end > edge:
                    return LOST_WRITE
        else:
            if dropped:
                return STALE_READ
            if rec is not None and rec.free_t is not None and end > rec.free_t:
                return STALE_READ
        if w is not None and w.overlaps(job.begin_t, end):
            return WRITE_AFTER_INVALIDATE if job.write else STALE_BY_WINDOW
        if job.uau is not None:
            return USE_AFTER_UNMAP
        if rec is not None:
            if not rec.initial and (rec.copy_end_t is None or rec.copy_end_t > job.begin_t):
                return UNFENCED_ACCESS
        elif job.gen != 1:
            return UNFENCED_ACCESS
        return None

    def _judge(self, job: Job) -> None:
        key = (job.svc, job.ev["job"])
        jobs = self.jobs
        if jobs.get(key) is job:
            del jobs[key]
        end = job.end_t
        unfinished = end is None
        if end is None:
            end = self.t1
            assert end is not None
        self.jobs_judged += 1
        kind = self.classify(job, job.access_end if job.access_end is not None else end)
        by_window = False
        if kind == SPECULATIVE:
            self.speculative_reads += 1
            kind = None
        elif kind == STALE_BY_WINDOW:
            kind, by_window = STALE_READ, True
        race: Race | None = None
        if job.no_access:
            self.jobs_blocked += 1
        if job.rogue and (job.faulted or job.status == "fault"):
            self.rogue["iommu_faults"] += 1
        if kind is not None:
            race = Race(kind, job, end, unfinished, by_window)
            self.races[kind] += 1
            self.races_by_importer[job.svc] += 1
            if job.rogue:
                self.rogue["raced"] += 1
            start = self._race_start(kind, job)
            if self.first_race_t is None or start < self.first_race_t:
                self.first_race_t = start
            recent = self.recent_races
            recent[key] = race
            if len(recent) > RECENT_RACES:
                del recent[next(iter(recent))]
            if len(self.witness_races[kind]) < MAX_WITNESSES:
                self.witness_races[kind].append(race)  # rendered at the end: later frees belong in it
            if self.on_race is not None:
                self.on_race(race)
        if job.links:
            for link, i in job.links:
                link.outcomes[i] = race if race is not None else False
                self._resolve_link(link)

    @staticmethod
    def _race_start(kind: str, job: Job) -> int:
        """When the race began: the job's begin, or the copy / free it overlapped if later."""
        rec = job.rec
        edge = None
        if rec is not None and not job.dropped:
            if kind == LOST_WRITE:
                edge = rec.copy_begin_t if rec.copy_begin_t is not None else rec.free_t
            elif kind == STALE_READ:
                edge = rec.free_t
        return job.begin_t if edge is None else max(job.begin_t, edge)

    def _resolve_link(self, link: CorruptionLink) -> None:
        if link.done:
            return
        for i, outcome in enumerate(link.outcomes):
            if outcome is None:
                return  # an earlier candidate is still running: its verdict comes first
            if outcome is not False:
                link.done = True
                link.race = outcome
                link.via = "writer" if (i == 0 and len(link.candidates) == 2) else "reader"
                self.corruption["linked"] += 1
                return
        link.done = True

    # ------------------------------------------------------------------ importer events

    def _dma_begin(self, ev: dict[str, Any], t: int, svc: str) -> None:
        write = ev["access"] == "write"
        if write:
            self.n_dma_write += 1
        else:
            self.n_dma_read += 1
        gen = ev["gen"]
        bg = self.buffers.get(ev["buffer"])
        rec = None
        dropped = False
        if bg is not None:
            rec = bg.gens.get(gen)
            dropped = rec is None and type(gen) is int and gen <= bg.dropped_upto
        st = self.atts.get((svc, ev.get("attachment")))
        uau = None if (st is not None and st.usable) else self._uau_cause(st)
        key = (svc, ev["job"])
        jobs = self.jobs
        old = jobs.get(key)
        if old is not None and old.end_t is None:
            # A job id reused while its job runs (a restarted service that did not announce
            # itself): the old job never ended; it is judged at the end of the history like any
            # other unfinished job.
            self.anomalies["dma_begin of a job already running"] += 1
            self._orphans.append(old)
        rogue = ev.get("rogue") is True
        if rogue:
            self.rogue["total"] += 1
        job = jobs[key] = Job(ev, svc, write, t, rec, dropped, uau, rogue)
        if st is not None:
            job.map = st.map_info
            w = st.win
            if w is not None and w.end is None and not st.usable:
                job.win = w

    @staticmethod
    def _uau_cause(st: AttState | None) -> UauCause:
        if st is None or st.last not in ("unmap", "invalidate"):
            return UauCause("never", None, None)
        return UauCause(st.last, st.last_t, st.last_gen)

    def _dma_end(self, ev: dict[str, Any], t: int, svc: str) -> None:
        job = self.jobs.get((svc, ev["job"]))
        if job is None or job.end_t is not None:
            self.anomalies["dma_end without dma_begin"] += 1
            return
        job.end_t = t
        status = job.status = ev.get("status")
        last = ev.get("last_access_ns")
        if type(last) is int:
            if last < job.begin_t:
                job.no_access = True
            elif last < t:
                job.access_end = last
        elif last is None and "last_access_ns" in ev:
            job.no_access = True           # explicitly null: it never touched memory
        if status != "ok":
            if status == "aborted":
                self.jobs_aborted += 1
            elif status == "fault":
                job.faulted = True
                if ev.get("bytes") == 0:
                    job.no_access = True
        if job.win is not None and not job.write:
            n = ev.get("bytes")
            job.used = status == "ok" and type(n) is int and n > 0 and ev.get("discarded") is not True
        if job.write and not job.no_access:
            # a rogue write is never "the buffer's last write": it had no right to the range
            self._write_ended(job, t, status == "ok" and not job.rogue)
        self._ending.append(job)
        self._ending_t = t

    def _write_ended(self, job: Job, t: int, ok: bool) -> None:
        """Bookkeeping for the bytes check: which write was the buffer's last, and can it be checked."""
        lw = self.last_writes.get(job.buffer)
        if lw is None:
            lw = self.last_writes[job.buffer] = _LastWrite()
        b = job.begin_t
        e = job.access_end if job.access_end is not None else t
        if ok:
            lw.overlapped = lw.max_end is not None and lw.max_end > b
            lw.superseded = False
            lw.svc, lw.job, lw.begin, lw.end, lw.rogue = job.svc, job.job, b, e, job.rogue
        elif lw.svc is not None:
            if b < lw.end:
                lw.overlapped = True
            else:
                lw.superseded = True
        if lw.max_end is None or e > lw.max_end:
            lw.max_end = e

    def _att(self, svc: str, att: Any) -> AttState:
        st = self.atts.get((svc, att))
        if st is None:
            st = self.atts[(svc, att)] = AttState()
        return st

    def _map(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc == "exporter":
            return
        self.ops["map"] += 1
        self.maps["reused" if ev.get("reused") else "remapped"] += 1
        lat = ev.get("latency_ns")
        if lat is not None:
            self.latency["map"].add(lat)
        att = ev.get("attachment")
        st = self._att(svc, att)
        st.mapped = st.usable = True
        st.last, st.last_t, st.last_gen = "map", t, ev.get("gen")
        st.map_info = (ev, t, self.served.pop((svc, att), None))
        if self._wf_on_map:
            self.waitfor.map_answered(svc, ev.get("id"), t)

    def _unmap(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc == "exporter":
            return
        self.ops["unmap"] += 1
        lat = ev.get("latency_ns")
        if lat is not None:
            self.latency["unmap"].add(lat)
        st = self._att(svc, ev.get("attachment"))
        st.mapped = st.usable = False
        st.last, st.last_t, st.last_gen = "unmap", t, ev.get("gen")
        if st.win is not None:
            self._end_window(st, t, "unmap")

    def _invalidate(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.notify["invalidated"] += 1
        st = self._att(svc, ev.get("attachment"))
        st.usable = False
        st.last, st.last_t, st.last_gen = "invalidate", t, ev.get("gen")

    def _attach(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc == "exporter":
            return
        self.ops["attach"] += 1
        self._att(svc, ev.get("attachment"))

    def _detach(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc == "exporter":
            self.served.pop((importer_name(ev.get("importer")), ev.get("attachment")), None)
            self.revoke.unmapped(importer_name(ev.get("importer")), ev.get("attachment"), t, "detach")
            if self._wf_deferred:
                imp = importer_name(ev.get("importer"))
                self.waitfor.attachment_gone(imp, ev.get("attachment"), t, {
                    "event": "detach", "svc": imp, "importer": imp, "attachment": ev.get("attachment")})
            return
        self.ops["detach"] += 1
        # Forget the attachment (bounded memory); a mapping never unmapped still counts as held.
        st = self.atts.pop((svc, ev.get("attachment")), None)
        if st is not None and st.mapped:
            self.held_at_detach += 1
        if st is not None and st.win is not None:
            self._end_window(st, t, "detach")

    def _iommu_fault(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.iommu_faults += 1
        job = self.jobs.get((svc, ev.get("job")))
        if job is not None:
            job.faulted = True

    def _fault(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.faults += 1
        kind = str(ev.get("kind"))
        self.fault_kinds[kind] += 1
        if kind in NOTIFY_FAULTS and svc != "exporter" and svc != "deploy":
            # A device that lied about a notification while jobs ran on the buffer: their
            # witnesses say so (the verdict itself never depends on it).
            buffer = ev.get("buffer")
            for job in self.jobs.values():
                if job.svc == svc and job.buffer == buffer and job.end_t is None:
                    if job.device_faults is None:
                        job.device_faults = []
                    if len(job.device_faults) < 4:
                        job.device_faults.append((t, kind))

    def _importer_stop(self, ev: dict[str, Any], t: int, svc: str) -> None:
        name = ev["event"]
        self.recovery[name] += 1
        _listed(self.importer_stops, {"name": svc, "event": name, "t_ns": t}, self.not_listed,
                "importer_stops")

    def _rejoin(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.recovery["rejoin"] += 1

    def _retry(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.recovery["retries"] += 1

    def _dedup(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.recovery["dedups"] += 1

    def _job_failed(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.jobs_failed += 1

    def _move_notify_received(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.notify["received"] += 1
        n = self._note(ev, svc)
        if n is not None and n.recv_t is None:
            n.recv_t, n.state = t, ev.get("state")

    def _corruption(self, ev: dict[str, Any], t: int, svc: str) -> None:
        c = self.corruption
        c["jobs"] += 1
        lines = ev.get("lines")
        c["lines"] += lines if isinstance(lines, int) else 0
        raw_found = ev.get("found")
        found: dict[str, Any] = raw_found if isinstance(raw_found, dict) else {}
        candidates: list[tuple[str, Any]] = []
        writer = found.get("writer")
        if (found.get("buffer") is not None and found.get("buffer") != ev.get("buffer")
                and isinstance(writer, int) and writer > 0):
            candidates.append((f"importer-{writer}", found.get("seq")))
        candidates.append((svc, ev.get("job")))
        example: dict[str, Any] | None = None
        if len(self.corruption_examples) < MAX_CORRUPTION_EXAMPLES:
            example = {k: ev.get(k) for k in ("t_ns", "svc", "job", "buffer", "gen", "heap", "lines",
                                              "line", "expected", "found")}
            example["sentence"] = corruption_sentence(example, self.t0 if self.t0 is not None else t)
        link = CorruptionLink(candidates, [None] * len(candidates), example)
        if example is not None:
            self.corruption_examples.append((example, link))
        for i, key in enumerate(candidates):
            job = self.jobs.get(key)
            if job is not None:
                if job.links is None:
                    job.links = []
                job.links.append((link, i))
            else:
                link.outcomes[i] = self.recent_races.get(key, False)
        self._resolve_link(link)

    # ------------------------------------------------------------------ exporter events

    def _gens(self, buffer: Any) -> BufferGens:
        bg = self.buffers.get(buffer)
        if bg is None:
            bg = self.buffers[buffer] = BufferGens()
        return bg

    def _put(self, rec: GenRecord) -> None:
        bg = self._gens(rec.buffer)
        bg.gens[rec.gen] = rec
        while len(bg.gens) > KEEP_GENERATIONS:
            oldest = min(bg.gens)
            del bg.gens[oldest]
            if isinstance(oldest, int):
                bg.dropped_upto = max(bg.dropped_upto, oldest)

    def _rec(self, buffer: Any, gen: Any) -> GenRecord:
        """The record of (buffer, gen), made up (unknown placement) if its creation was not seen."""
        rec = self._gens(buffer).gens.get(gen)
        if rec is None:
            self.anomalies["generation used before it was created"] += 1
            rec = GenRecord(buffer, gen, None, initial=(gen == 1))
            self._put(rec)
        return rec

    def _buffer_created(self, ev: dict[str, Any], t: int, svc: str) -> None:
        gen = ev.get("gen", 1)
        self._put(GenRecord(ev["buffer"], gen, Placement(ev.get("heap"), ev.get("offset"), ev.get("size")),
                            initial=True, created_t=t))

    def _move_begin(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.moves["attempted"] += 1
        self.moves["begun"] += 1
        buffer = ev["buffer"]
        from_gen, to_gen = ev["from_gen"], ev["to_gen"]
        src = self._rec(buffer, from_gen)
        src.out_move, src.out_begin_t = ev.get("move"), t
        src.notes = MoveNotes()
        src.out_broke_promise = ev.get("broke_promise") is True
        self.buffers[buffer].cur = src
        src.out_to = Placement.of(ev.get("to"))
        if src.place is None:
            src.place = Placement.of(ev.get("from"))
        self._put(GenRecord(buffer, to_gen, Placement.of(ev.get("to")), initial=False, created_t=t,
                            create_move=ev.get("move"), create_from=Placement.of(ev.get("from"))))

    def _move_refused(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.moves["attempted"] += 1
        self.moves["refused"] += 1
        self.refused_by_reason[str(ev.get("reason"))] += 1

    def _move_queued(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.moves["queued"] += 1

    def _move_cancelled(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.moves["cancelled"] += 1

    def _copy_begin(self, ev: dict[str, Any], t: int, svc: str) -> None:
        buffer = ev["buffer"]
        src = self._rec(buffer, ev["from_gen"])
        if src.copy_begin_t is None:
            src.copy_begin_t = t
            src.copy_cause = _cause(ev)
        if src.out_move is None:
            src.out_move = ev.get("move")
        dst = self._gens(buffer).gens.get(ev.get("to_gen"))
        if dst is not None and dst.create_copy_begin_t is None:
            dst.create_copy_begin_t = t

    def _copy_end(self, ev: dict[str, Any], t: int, svc: str) -> None:
        dst = self._rec(ev["buffer"], ev["to_gen"])
        if dst.copy_end_t is None:
            dst.copy_end_t = t

    def _free(self, ev: dict[str, Any], t: int, svc: str) -> None:
        src = self._rec(ev["buffer"], ev["from_gen"])
        if src.free_t is None:
            src.free_t = t
            src.free_cause = _cause(ev)

    def _move_end(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.moves["completed"] += 1
        lat = ev.get("latency_ns")
        if lat is not None:
            self.latency["move"].add(lat)

    def _out_notes(self, buffer: Any, move: Any, gen: Any = None) -> MoveNotes | None:
        """The notes of the move `move` off a generation of `buffer` (by gen when the event says it)."""
        bg = self.buffers.get(buffer)
        if bg is None:
            return None
        rec = bg.gens.get(gen) if gen is not None else None
        if rec is None or rec.out_move != move:
            rec = bg.cur
            if rec is None or rec.out_move != move:
                rec = next((r for r in bg.gens.values() if r.out_move == move and r.notes is not None), None)
        return rec.notes if rec is not None else None

    def _note(self, ev: dict[str, Any], svc: str, importer: str | None = None) -> NotifyNote | None:
        notes = self._out_notes(ev.get("buffer"), ev.get("move"), ev.get("gen"))
        if notes is None:
            return None
        return notes.att(importer or svc, ev.get("attachment"))

    def _move_notify_sent(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.notify["sent"] += 1
        n = self._note(ev, svc, importer_name(ev.get("importer")))
        if n is not None and n.sent_t is None:
            n.sent_t, n.sent_id = t, ev.get("id")
            n.op = ev["event"][:-5]  # move_notify / invalidate_mappings

    def _move_notify_returned(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc != "exporter":
            return
        self._answered(ev, t, ack=False)

    def _answered(self, ev: dict[str, Any], t: int, ack: bool) -> None:
        notes = self._out_notes(ev.get("buffer"), ev.get("move"))
        if notes is not None:
            notes.answered(importer_name(ev.get("importer")), ev.get("attachment"), t, ack)

    def _ack_sent(self, ev: dict[str, Any], t: int, svc: str) -> None:
        n = self._note(ev, svc)
        if n is not None and n.ack_sent_t is None:
            n.ack_sent_t = t

    def _ack(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc != "exporter":
            return
        self.notify["acked"] += 1
        lat = ev.get("latency_ns")
        if lat is not None:
            self.latency["notify_ack"].add(lat)
        self._answered(ev, t, ack=True)

    def _ack_timeout(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.notify["ack_timeouts"] += 1
        imps = ev.get("importers")
        notes = self._out_notes(ev.get("buffer"), ev.get("move"))
        if notes is not None and notes.ack_timeout is None:
            notes.ack_timeout = (t, [importer_name(i) for i in imps] if isinstance(imps, list) else [])
        self._timeout("notify", t, buffer=ev.get("buffer"), move=ev.get("move"), revoke=ev.get("revoke"),
                      importers=[importer_name(i) for i in imps] if isinstance(imps, list) else [])

    def _fence_wait_begin(self, ev: dict[str, Any], t: int, svc: str) -> None:
        notes = self._out_notes(ev.get("buffer"), ev.get("move"))
        if notes is not None and notes.fence_wait_begin_t is None:
            notes.fence_wait_begin_t = t
        self.findings.wait_round(ev)
        self.waitfor.fence_wait_begin(ev, t, svc)

    def _fence_wait_end(self, ev: dict[str, Any], t: int, svc: str) -> None:
        bg = self.buffers.get(ev.get("buffer"))
        if bg is not None:
            key = _op_key(ev)
            bg.retired = (key, t)
            if bg.pending:
                for w in bg.pending:
                    if w.key == key and w.start is None:
                        w.start, w.retired_by = t, f"fence_wait_end of {key[0]} {key[1]}"
                bg.pending = [w for w in bg.pending if w.start is None]
        waited = ev.get("waited_ns")
        if waited is not None:
            self.latency["fence_wait"].add(waited)
        notes = self._out_notes(ev.get("buffer"), ev.get("move"))
        if notes is not None:
            notes.fence_wait_end_t = t
            forced = ev.get("forced")
            if isinstance(forced, list):
                notes.forced = [importer_name(f) for f in forced]
        self.findings.wait_round(ev)
        self.waitfor.fence_wait_end(ev, t, svc)

    def _fence_signal(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc == "exporter":
            wf = self.waitfor
            if ev.get("forced") is True:
                self.fences_forced += 1
                self.findings.forced(ev, t)
                imp = importer_name(ev.get("importer"))
                if self.on_finding is not None:
                    self.on_finding("fence forced", "exporter", t, {"finding": FENCE_FORCED, "importer": imp,
                                                                    "buffer": ev.get("buffer"), "error": ev.get("error")})
                wf.forced(imp, ev["buffer"], t, {"event": "fence_signal", "svc": svc, "forced": True,
                                                 "importer": imp, "buffer": ev["buffer"], "error": ev.get("error")})
        elif self._wf_waiters or self._wf_blocked:
            self.waitfor.signaled(svc, ev["buffer"], ev.get("seq"), t,
                        {"event": "fence_signal", "svc": svc, "buffer": ev["buffer"], "seq": ev.get("seq")})

    def _map_served(self, ev: dict[str, Any], t: int, svc: str) -> None:
        imp = ev["importer"]
        if type(imp) is not str:
            imp = importer_name(imp)
        self.served[(imp, ev.get("attachment"))] = (ev.get("id"), t, ev)
        self.revoke.served(imp, ev, t)
        if self._wf_deferred:
            self.waitfor.map_done(imp, ev.get("id"), t, {"event": "map_served", "svc": svc, "importer": imp,
                                                         "id": ev.get("id"), "buffer": ev.get("buffer")})

    def _unmap_served(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.revoke.unmapped(importer_name(ev.get("importer")), ev.get("attachment"), t, "unmap_served")

    def _op_answered(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if ev.get("ok") is not False or ev.get("op") != "map" or svc != "exporter":
            return
        self.revoke.map_refused(ev)
        if self._wf_deferred:
            imp = str(ev.get("peer"))
            self.waitfor.map_done(imp, ev.get("id"), t, {"event": "op_answered", "svc": svc, "importer": imp,
                                                         "id": ev.get("id"), "code": ev.get("code")})

    # ------------------------------------------------------------------ Linux 7.1

    def _invalidate_returned(self, ev: dict[str, Any], t: int, svc: str) -> None:
        """invalidate_mappings_returned: the exporter's (the reply arrived) or the importer's (its
        callback returned: the attachment's window opens once its fences retire)."""
        if svc == "exporter":
            self._move_notify_returned(ev, t, svc)
            return
        buffer, att = ev["buffer"], ev.get("attachment")
        st = self._att(svc, att)
        if not st.mapped:
            return  # nothing mapped: no access to judge until it maps again (a new mapping)
        if st.win is not None and st.win.end is None and st.win.start is not None:
            return  # already past its fences: the earlier window is the stricter one
        key = _op_key(ev)
        w = Window(key, buffer, svc, att, t)
        bg = self._gens(buffer)
        if st.win is not None and st.win.end is None and st.win in bg.pending:
            bg.pending.remove(st.win)   # never retired: this invalidation supersedes it
        if ev.get("stopped") is True:
            w.start, w.retired_by = t, "its DMA had stopped when the callback returned (a synchronous revoke)"
        elif bg.retired is not None and bg.retired[0] == key:
            w.start, w.retired_by = t, f"fence_wait_end of {key[0]} {key[1]}, before the callback returned"
        else:
            bg.pending.append(w)
        st.win = w
        for job in self.jobs.values():
            if job.svc == svc and job.end_t is None and job.win is None and job.attachment == att:
                job.win = w

    def _end_window(self, st: AttState, t: int, how: str) -> None:
        w = st.win
        if w is None or w.end is not None:
            return
        w.end, w.ended_by = t, how
        bg = self.buffers.get(w.buffer)
        if bg is not None and w in bg.pending:
            bg.pending.remove(w)

    def _revoked(self, ev: dict[str, Any], t: int, svc: str) -> None:
        """The importer learned its attachment is gone: its window (if any) is over."""
        st = self.atts.get((svc, ev.get("attachment")))
        if st is not None and st.win is not None:
            self._end_window(st, t, "revoked")

    def _unmap_wait_end(self, ev: dict[str, Any], t: int, svc: str) -> None:
        for item in self.revoke.unmap_wait_end(ev, t, svc):
            self.findings.revoke_incomplete(item)
            if self.on_finding is not None:
                self.on_finding("revoke incomplete", "exporter", t, {"finding": REVOKE_INCOMPLETE, **item})

    def _refcount_warning(self, ev: dict[str, Any], t: int, svc: str) -> None:
        item = self.findings.refcount_warning(ev, t)
        if self.on_finding is not None:
            self.on_finding("refcount warning", svc, t, {"finding": REFCOUNT_WARNING, **item})

    def _workload_stop(self, ev: dict[str, Any], t: int, svc: str) -> None:
        """The revocations still waiting for unmaps did not complete (the revoke summary's count).
        One held by an importer that keeps its mapping is that importer's doing, excused from
        `stuck` (liveness sees workload_stop after this); one with no mapping live is stuck."""
        for buffer, revoke, held_by in self.revoke.workload_over_at(t):
            if held_by:
                self.liveness.excuse_unmap_wait(buffer, revoke, f"held by {', '.join(held_by)}, still mapped")

    def _unmap_wait_warning(self, ev: dict[str, Any], t: int, svc: str) -> None:
        name = self.revoke.warned(ev)
        self._timeout("unmap", t, buffer=ev.get("buffer"), revoke=ev.get("revoke"), importers=[name],
                      message=ev.get("message"))

    def _on_cycle(self, c: Cycle) -> None:
        assert self.on_finding is not None
        self.on_finding(DEADLOCK, "exporter", c.formed_t,
                        {"finding": DEADLOCK, "cycle": [list(n) for n in c.nodes], "formed_by": c.formed_by})

    def _on_cycle_broken(self, c: Cycle) -> None:
        assert self.on_finding is not None and c.broken_t is not None
        self.on_finding(f"{DEADLOCK} broken", str((c.broken_by or {}).get("svc") or "exporter"), c.broken_t,
                        {"finding": DEADLOCK, "cycle": [list(n) for n in c.nodes], "broken_by": c.broken_by})

    def _timeout(self, kind: str, t: int, **fields: Any) -> None:
        self.findings.timeout(kind, t, **fields)
        if self.on_finding is not None:
            self.on_finding(f"timeout: {kind}", "exporter", t, {"finding": TIMEOUT, "kind": kind, **fields})

    def _attachment_revoked(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.attachments_revoked += 1
        self.revoked_by_reason[str(ev.get("reason"))] += 1
        self.revoke.unmapped(importer_name(ev.get("importer")), ev.get("attachment"), t, "attachment_revoked")
        self.served.pop((importer_name(ev.get("importer")), ev.get("attachment")), None)
        if self._wf_deferred:
            imp = importer_name(ev.get("importer"))
            self.waitfor.attachment_gone(imp, ev.get("attachment"), t, {
                "event": "attachment_revoked", "svc": svc, "importer": imp, "attachment": ev.get("attachment"),
                "reason": ev.get("reason")})

    def _importer_lost(self, ev: dict[str, Any], t: int, svc: str) -> None:
        reason = str(ev.get("reason"))
        self.importer_lost_by_reason[reason] += 1
        if reason == "lease expired":
            self._timeout("lease", t, importers=[importer_name(ev.get("importer"))])

    def _final_content(self, ev: dict[str, Any], t: int, svc: str) -> None:
        """The bytes check of one buffer (see the module docstring)."""
        buf = ev["buffer"]
        size = ev["size"]
        expected = size // LINE_BYTES
        foreign = 0
        from_buffers: list[Any] = []
        own: dict[tuple[Any, Any], int] = {}
        for stamp in ev["stamps"]:
            sb, writer, seq, lines = stamp[0], stamp[1], stamp[2], stamp[3]
            if sb != buf:
                foreign += lines
                if sb not in from_buffers and len(from_buffers) < 8:
                    from_buffers.append(sb)
            else:
                own[(writer, seq)] = own.get((writer, seq), 0) + lines
        res: dict[str, Any] = {"buffer": buf, "gen": ev.get("gen"), "lines": expected,
                               "foreign_lines": foreign, "foreign_from": from_buffers,
                               "t_ns": t, "last_write": None}
        lw = self.last_writes.get(buf)
        check: str
        if lw is None or lw.svc is None:
            check = "no_write"
        elif lw.overlapped:
            check = "overlapped"
        elif lw.superseded:
            check = "superseded"
        elif any(j.write and j.end_t is None and j.buffer == buf and not j.no_access
                 for j in self.jobs.values()):
            check = "still_running"
        else:
            num = lw.svc[9:] if lw.svc.startswith("importer-") else ""
            if not num.isdigit():
                check = "unknown_writer"
            else:
                found = own.get((int(num), lw.job), 0)
                check = "present" if found == expected else "lost"
                res["last_write"] = {"svc": lw.svc, "job": lw.job, "lines_found": found,
                                     "lines_expected": expected, "rogue": lw.rogue,
                                     "begin_t_ns": lw.begin, "end_t_ns": lw.end}
        res["check"] = check
        self.final_content[buf] = res
        if self.on_finding is not None:
            if check == "lost":
                self.on_finding("lost write in the final bytes", "exporter", t,
                                {"buffer": buf, **res["last_write"]})
            if foreign:
                self.on_finding("foreign lines in the final bytes", "exporter", t,
                                {"buffer": buf, "lines": foreign, "from_buffers": from_buffers})

    # ------------------------------------------------------------------ services and deploy

    def _flags(self, name: str) -> list[bool]:
        f = self.svc_flags.get(name)
        if f is None:
            f = self.svc_flags[name] = [False, False, False]
        return f

    def _end_incarnation(self, svc: str, t: int, how: str) -> None:
        """A service died or restarted: its jobs still running end now; its attachments are gone."""
        for job in list(self.jobs.values()):
            if job.svc == svc and job.end_t is None:
                job.end_t = t
                job.cut = how
                self.jobs_cut += 1
                if job.write:
                    self._write_ended(job, t, False)
                self._ending.append(job)
                self._ending_t = t
        for key in [k for k in self.atts if k[0] == svc]:
            st = self.atts.pop(key)
            if st.mapped:
                self.held_at_death += 1
            if st.win is not None:
                self._end_window(st, t, f"service {how}")
        self.waitfor.service_ended(svc, t, how)

    def _service_start(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self._flags(svc)[0] = True
        self.starts[svc] += 1
        # A service starts once per incarnation: whatever it was still doing belonged to the last one.
        self._end_incarnation(svc, t, "restarted")
        if svc == "exporter":
            self.exporter_strategy = ev.get("strategy")
            if self.run_id is None:
                self.run_id = ev.get("run_id")
            self._note_mutant(ev)

    def _service_stop(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self._flags(svc)[1] = True

    def _service_died(self, ev: dict[str, Any], t: int, svc: str) -> None:
        name = str(ev["name"])
        self.services_died += 1
        self._flags(name)[2] = True
        _listed(self.deaths, {"name": name, "t_ns": t, "how": ev.get("how"), "pid": ev.get("pid")},
                self.not_listed, "died")
        self._end_incarnation(name, t, "died")

    def _service_restarted(self, ev: dict[str, Any], t: int, svc: str) -> None:
        name = str(ev["name"])
        self.restart_counts[name] += 1
        _listed(self.restarts, {"name": name, "t_ns": t, "pid": ev.get("pid"),
                                "incarnation": ev.get("incarnation")}, self.not_listed, "restarted")

    def _workload_start(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if self.workload_t is None:
            self.workload_t = t

    def _run_start(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self._flags(svc)[0] = True
        if self.run_start_t is None:
            self.run_start_t = t
        params = ev.get("params")
        self.run_params = dict(params) if isinstance(params, dict) else {}
        if "strategy" not in self.run_params and ev.get("strategy") is not None:
            self.run_params["strategy"] = ev.get("strategy")
        self.run_id = ev.get("run_id", self.run_id)
        self._note_mutant(ev)

    def _note_mutant(self, ev: dict[str, Any]) -> None:
        # A run of a mutant (a strategy with a rule broken on purpose) says which rule: the report
        # quotes it beside every witness. Taken as told: the verdicts come from the history alone.
        mutant = ev.get("mutant")
        if isinstance(mutant, dict) and self.mutant is None:
            self.mutant = {k: mutant.get(k) for k in ("name", "rule", "source", "expect")}

    def _run_stop(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self._flags(svc)[1] = True

    def _run_interrupted(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if self.interrupted is None:  # the first signal is the one that stopped the run
            self.interrupted = {"signal": ev.get("signal"), "at": ev.get("at"), "during": ev.get("during"),
                                "t_ns": t}

    # ------------------------------------------------------------------ the report

    def _corruption_examples(self, t0: int) -> list[dict[str, Any]]:
        out = []
        for example, link in self.corruption_examples:
            race = link.race
            out.append({**example, "race": None if race is None else {
                "kind": race.kind, "svc": race.job.svc, "job": race.job.job, "via": link.via,
                "sentence": sentence(race, t0)}})
        return out

    def report(self) -> dict[str, Any]:
        self.finish()
        params = dict(self.run_params) if self.run_params is not None else {}
        top: dict[str, Any] = {k: params.get(k) for k in PARAM_KEYS_LIFTED}
        if top["duration_s"] is None:
            top["duration_s"] = params.get("duration")  # deploy's run_start says `duration` (seconds)
        if self.run_params is None:
            top["strategy"] = self.exporter_strategy
        elif top["strategy"] is None:
            top["strategy"] = self.exporter_strategy
        by_name = {}
        for name in sorted(set(self.svc_flags) | set(self.svc_last)):
            f = self.svc_flags.get(name, [False, False, False])
            by_name[name] = {"started": f[0], "stopped": f[1], "died": f[2],
                             "last_t_ns": self.svc_last.get(name)}
        held_now = sum(1 for st in self.atts.values() if st.mapped)
        t0 = self.t0
        races: dict[str, Any] = dict(self.races)
        races["total"] = sum(self.races.values())
        work0 = next((x for x in (self.workload_t, self.run_start_t, t0) if x is not None), None)
        races["first_s"] = (None if self.first_race_t is None or work0 is None
                            else (self.first_race_t - work0) / 1e9)
        moves: dict[str, Any] = dict(self.moves)
        moves["refused_by_reason"] = dict(sorted(self.refused_by_reason.items()))
        findings = self.findings.report(t0 or 0, self.t1, self._secs)
        witnesses = {k: [explained(r, t0 or 0) for r in v] for k, v in self.witness_races.items()}
        if self.mutant is not None:
            # Beside each witness: the rule the run's strategy breaks, as the run said it.
            for item in [w for ws in witnesses.values() for w in ws] + [i for k in CATCHES for i in findings[k]["items"]]:
                item["broken_rule"] = self.mutant
        return {
            **top,
            "run_id": self.run_id,
            "params": params,
            "events": self.events,
            "history_errors": self.history_errors,
            "history_unordered": self.unordered,
            "anomalies": dict(sorted(self.anomalies.items())),
            "t0_ns": t0,
            "t1_ns": self.t1,
            "duration_observed_s": ((self.t1 - t0) / 1e9) if (t0 is not None and self.t1 is not None) else 0.0,
            "ops": {**self.ops, "dma_read": self.n_dma_read, "dma_write": self.n_dma_write},
            "maps": dict(self.maps),
            "moves": moves,
            "races": races,
            "mutant": self.mutant,
            "findings": findings,
            "speculative_reads": self.speculative_reads,
            "revoke": self.revoke.report(),
            "witnesses": witnesses,
            "corruption": {**self.corruption, "examples": self._corruption_examples(t0 or 0)},
            "iommu_faults": self.iommu_faults,
            "fences_forced": self.fences_forced,
            "mappings_held_at_shutdown": held_now + self.held_at_detach,
            "mappings_held_at_death": self.held_at_death,
            "mappings_held_detached": self.held_at_detach,
            "jobs": {"judged": self.jobs_judged, "unfinished": self.jobs_unfinished,
                     "failed": self.jobs_failed, "aborted": self.jobs_aborted,
                     "no_access": self.jobs_blocked, "ended_by_death": self.jobs_cut},
            "jobs_unfinished": self.jobs_unfinished,
            "attachments_revoked": self.attachments_revoked,
            "notify": dict(self.notify),
            "latency_us": {k: h.summary_us() for k, h in self.latency.items()},
            "services": self._services_report(by_name),
            "services_died": self.services_died,
            "faults": self._faults_report(params),
            "races_by_importer": dict(sorted(self.races_by_importer.items())),
            "rogue_jobs": dict(self.rogue),
            "recovery": {
                "importer_lost": dict(sorted(self.importer_lost_by_reason.items())),
                "attachment_revoked": dict(sorted(self.revoked_by_reason.items())),
                **self.recovery,
            },
            "bytes_check": self._bytes_check(),
            "interrupted": None if self.interrupted is None else {
                **{k: v for k, v in self.interrupted.items() if k != "t_ns"},
                "t_s": self._secs(self.interrupted["t_ns"])},
        }

    def _secs(self, t: int) -> float:
        base = self.run_start_t if self.run_start_t is not None else self.t0
        return (t - base) / 1e9 if base is not None else 0.0

    def _services_report(self, by_name: dict[str, Any]) -> dict[str, Any]:
        def timed(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            out = []
            for it in items:
                d = {k: v for k, v in it.items() if k != "t_ns"}
                d["t_s"] = self._secs(it["t_ns"])
                out.append(d)
            return out

        names = set(self.starts) | set(self.restart_counts)
        return {
            "died": timed(self.deaths),
            "restarted": timed(self.restarts),
            "incarnations": {n: max(self.starts[n], self.restart_counts[n] + 1) for n in sorted(names)},
            "importer_stops": timed(self.importer_stops),
            "not_listed": dict(sorted(self.not_listed.items())),
            "by_name": by_name,
        }

    def _faults_report(self, params: dict[str, Any]) -> dict[str, Any]:
        sched = params.get("faults")
        return {
            "schedule": [describe_fault(f) for f in sched] if isinstance(sched, list) else [],
            "applied": dict(sorted(self.fault_kinds.items())),
            "applied_total": self.faults,
        }

    def _bytes_check(self) -> dict[str, Any]:
        final = [self.final_content[b] for b in sorted(self.final_content, key=str)]
        foreign = [{"buffer": r["buffer"], "lines": r["foreign_lines"], "from_buffers": r["foreign_from"]}
                   for r in final if r["foreign_lines"]]
        lost = [{"buffer": r["buffer"], **{k: r["last_write"][k] for k in
                                           ("svc", "job", "lines_found", "lines_expected", "rogue")}}
                for r in final if r["check"] == "lost"]
        checks = Counter(r["check"] for r in final)
        if not final:
            verdict = "not checked (no final_content)"
        elif lost and foreign:
            verdict = "lost writes and foreign lines"
        elif lost:
            verdict = "lost writes"
        elif foreign:
            verdict = "foreign lines"
        else:
            verdict = "ok"
        return {
            "verdict": verdict,
            "buffers": len(final),
            "foreign_lines": sum(r["foreign_lines"] for r in final),
            "foreign": foreign[:MAX_LISTED],
            "lost_writes": lost[:MAX_LISTED],
            "last_writes_present": checks.get("present", 0),
            "not_checked": {k: v for k, v in sorted(checks.items()) if k not in ("present", "lost")},
        }
