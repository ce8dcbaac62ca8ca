"""Races a run could have had: happens-before over its events (vector clocks, as FastTrack and
ThreadSanitizer keep them), and the DMA accesses that nothing orders before the exporter's copy
or free of their placement, whether or not they overlapped this time.

Threads (each one program order):
- `exporter`; each importer process's loop (`importer-N#pid`); `deploy`;
- a DMA lane per importer process and attachment (`importer-N#pid/A`; rogue jobs on `.../A/rogue`):
  dma_end, the job's fence_signal, iommu_fault and corruption are the lane's. A job's dma_begin is
  its importer loop's and forks the lane (the driver decided to start it).

Rules (each edge A -> B: everything A's thread had done by A happens before B):
- R1 program order: within a thread.
- R2 message: a send -> its receipt, matched by (peer, id) and kind; a retried or duplicated
  send is a new send of the same content, and the receipt is joined with the FIRST send's clock
  (a later copy's clock contains it). Exporter -> importer: map_served / unmap_served /
  op_answered -> the importer's map / unmap / attach / detach (same id); move_notify_sent /
  invalidate_mappings_sent -> *_received (same id). Importer -> exporter: ack_sent -> ack (same
  id); the importer's move_notify_received (the callback returns on receipt) or
  invalidate_mappings_returned -> the exporter's *_returned (importer, attachment, move/revoke).
  A receipt stamped before its send (a real run's exporter descheduled between the send and
  its event) waits for it: the jobs its loop begins meanwhile learn the send when it comes.
  A request whose send is not an event (map, unmap, attach, detach, pin, unpin, hello, bye) is
  taken as sent by the importer's loop as it was when the exporter received it: this orders more
  than the protocol does, never against time.
- R3 dma-done: a job's end reaches its importer's loop (the driver's completion callback), and
  the loop passes it on only with what it sends about that attachment next: the unmap,
  unpin, detach or ack the exporter receives, and (Linux 7.1) the invalidate_mappings callback's
  return, which looked at the attachment's DMA (`stopped`). It orders nothing else of the loop: the driver
  serves other buffers and the exporter's notifications without waiting for its device. A job
  the driver stopped itself (dma_end `aborted` for a lease, a restart, a rejoin, a bye) joins the
  loop at once.
- R4 reservation lock: resv_unlock of a buffer -> its next resv_lock.
- R5 fence: an importer's fence_signal (buffer, seq) -> the end of a fence wait that listed that
  importer's fence on the buffer with a seqno <= seq (fence_wait_end), and -> a fence_wait_begin
  whose usage takes the signalled fence's usage (KERNEL < WRITE < READ < BOOKKEEP) when it
  signalled before the wait's snapshot (the wait saw it signalled and did not list it).
- R6 kernel fence: the exporter's KERNEL fence_signal (after its copy_end) -> an importer's
  kernel_fence_wait on that buffer with a seqno <= it. A wait that returned before any such
  signal is in the history saw the shared fence cell signalled: the exporter's event was stamped
  late (a real run: descheduled between its signal and its event; seen in resv-fence runs under
  load). The wait's loop, and the jobs it begins from then on, learn the signal when its event
  comes, as a receipt whose send is stamped late does (R2).
- R7 reset confirmation: the device's own fence_signal on a buffer after the exporter forced
  its fence -> the exporter's reset_confirmed for that importer and buffer.
- R8 lease (time-based): an importer the exporter declares lost (importer_lost, any reason but
  `reset unconfirmed`) had stopped its DMA by then: a job of that importer whose last access
  (dma_end's last_access_ns; its service's death for a job cut short) is at or before the
  importer_lost is ordered before it. A job whose access went on past it is not.
- R9 process lifecycle: deploy -> an importer's service_start (it was started); a job cut short
  by its process's death ends at deploy's service_died.

A candidate is a pair within one buffer and generation (docs/events.md):
- lost_write: a write job and the copy_begin of its generation (the free when no copy was seen);
- stale_read: a read job and the free of its generation;
- unfenced_access: the copy_end creating a generation and a job's dma_begin on it;
- write_after_invalidate (Linux 7.1): a write job (or a read whose data was used: stale_read)
  and the opening of its attachment's invalidation window (the later of the exporter's
  invalidate_mappings_returned and its fence_wait_end of the same move or revocation);
- use_after_unmap: a job begun after its importer invalidated or unmapped the attachment with
  no map since (program order already orders it the wrong way: this is the race itself).
For the first four the safe order is the job's end before the exporter's event (its begin after
the copy_end, for unfenced_access); a pair is a candidate when the safe edge is missing,
whether the two overlapped in time or not (`overlapped` says which). Every edge goes forward in
time, so a race the oracle reports is always a candidate. A candidate is never counted as a race.

Memory: per thread one clock (a dict); per generation (KEEP_GENERATIONS per buffer) its copy /
free clocks and, per lane, the last MAX_ENDED jobs that ended on it (older ones are counted in
`not_examined`); pending sends until their receipt (bounded, oldest dropped).
"""

from __future__ import annotations

import gc
from collections import OrderedDict, deque
from itertools import islice
from typing import Any, Iterable

from checker.jsonio import loads

KEEP_GENERATIONS = 8
MAX_ENDED = 64                 # ended jobs kept per (generation, lane) until the generation moves
MAX_PENDING = 1 << 14          # sends awaiting their receipt
MAX_RECENT_MOVES = 1024       # moves whose fence wait may still open a window or be looked up
MAX_ITEMS = 256                # candidates listed in report.json (all are counted)
PARSE_BATCH = 512
MAX_SIGNALS = 32               # fence signals kept per (importer, buffer)
USAGE_RANK = {"KERNEL": 0, "WRITE": 1, "READ": 2, "BOOKKEEP": 3}
NO_EDGE_REASONS = ("reset unconfirmed",)
EXPORTER = "exporter"
DEPLOY = "deploy"

Clock = dict[str, int]


class PredictRefused(ValueError):
    """The history cannot be predicted from (one line says why)."""


def _join(into: Clock, other: Clock | None) -> None:
    if other:
        for k, v in other.items():
            if into.get(k, 0) < v:
                into[k] = v


def _learn(into: Clock, exporter_epoch: int | None) -> None:
    """An exporter -> importer edge. It carries only the exporter's own epoch: what the exporter
    knew of importers' threads came from them, and every check reads an exporter clock (for the
    lanes) or an importer's knowledge of the exporter (unfenced_access), so nothing is lost."""
    if exporter_epoch is not None and into.get(EXPORTER, 0) < exporter_epoch:
        into[EXPORTER] = exporter_epoch


class _Bounded(OrderedDict):
    """A dict that forgets its oldest entry past `cap` (sends never received, jobs never ended)."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap
        self.dropped = 0

    def put(self, key: Any, value: Any) -> None:
        if key in self:
            return                      # R2: the first send's clock stands
        self[key] = value
        if len(self) > self.cap:
            self.popitem(last=False)
            self.dropped += 1


class _Job:
    __slots__ = ("svc", "job", "buffer", "gen", "att", "write", "lane", "begin_t", "end_t",
                 "access_end", "end_epoch", "fence", "serial", "rogue", "used", "begin_exp", "unf", "uau")

    def __init__(self, e: dict[str, Any], svc: str, att: Any, rogue: bool, lane: str, serial: int,
                 begin_exp: int) -> None:
        self.svc = svc                  # the importer
        self.job = e.get("job")
        self.buffer = e.get("buffer")
        self.gen = e.get("gen")
        self.att = att
        self.write = e.get("access") == "write"
        self.lane = lane
        self.begin_t = e["t_ns"]
        self.end_t: int | None = None
        self.access_end: int | None = None
        self.end_epoch = 0
        self.fence = e.get("fence")
        self.serial = serial
        self.rogue = rogue
        self.used = False
        self.begin_exp = begin_exp
        self.unf: _Gen | None = None    # the generation it began on, when a copy created it (unfenced_access)
        self.uau: tuple[bool, str | None, int] | None = None  # its attachment was unmapped or invalidated

    def brief(self) -> dict[str, Any]:
        return {"svc": self.svc, "job": self.job, "access": "write" if self.write else "read",
                "attachment": self.att, "begin_ns": self.begin_t, "end_ns": self.end_t,
                "last_access_ns": self.access_end, "fence": self.fence, "rogue": self.rogue}


class _Point:
    """An exporter event a job is paired with: its name, time and clock."""

    __slots__ = ("event", "t", "clock", "move", "wait")

    def __init__(self, event: str, t: int, clock: Clock, move: Any, wait: dict[str, Any] | None) -> None:
        self.event, self.t, self.clock, self.move, self.wait = event, t, clock, move, wait


class _Gen:
    __slots__ = ("copy_begin", "free", "copy_end_epoch", "copy_end_t", "ended", "wait")

    def __init__(self) -> None:
        self.copy_begin: _Point | None = None
        self.free: _Point | None = None
        self.copy_end_epoch: int | None = None
        self.copy_end_t: int | None = None
        self.ended: dict[str, deque[_Job]] = {}
        self.wait: dict[str, Any] | None = None     # the move's fence wait off this generation


class Predictor:
    """One streaming pass; `feed(event)` per event in history order, then `result()`."""

    def __init__(self) -> None:
        self.vc: dict[str, Clock] = {EXPORTER: {EXPORTER: 0}, DEPLOY: {DEPLOY: 0}}
        self.main_of: dict[str, str] = {}               # importer name -> its current loop thread
        self.replies = _Bounded(MAX_PENDING)            # (importer, id) -> exporter clock
        self.notifies = _Bounded(MAX_PENDING)           # (importer, id) -> exporter clock
        self.returns = _Bounded(MAX_PENDING)            # (importer, attachment, op) -> importer clock
        self.acks = _Bounded(MAX_PENDING)               # (importer, id) -> importer clock
        self.lock_release: dict[Any, Clock] = {}
        self.signals: dict[tuple[str, Any], deque[tuple[int, int, Clock]]] = {}
        self._signals_of: dict[Any, list[deque[tuple[int, int, Clock]]]] = {}  # buffer -> its importers' signals
        self.kernel: dict[Any, deque[tuple[int, Clock]]] = {}
        self.waits: dict[tuple[Any, Any], dict[str, Any]] = {}
        self.gens: dict[Any, dict[Any, _Gen]] = {}
        self.jobs: dict[tuple[str, Any], _Job] = {}
        # (svc, job) -> (lane, its epoch at the job's end), for a fence signalled later (oldest
        # dropped past MAX_PENDING: a fence never signalled)
        self.job_lane: OrderedDict[tuple[str, Any], tuple[str, int]] = OrderedDict()
        self.att_lane: dict[tuple[str, Any], str] = {}  # (importer name, attachment) -> its lane
        self.att_usable: dict[tuple[str, Any], tuple[bool, str | None, int]] = {}
        self.serial: dict[tuple[str, Any], int] = {}
        self.lost: dict[str, list[tuple[int, int]]] = {}  # importer -> [(t, exporter epoch)] (R8)
        # oldest dropped first (OrderedDict: a plain dict's first key is found by a scan past
        # every key deleted before it, quadratic once they are full)
        self.windows: OrderedDict[tuple[str, Any, Any], dict[str, Any]] = OrderedDict()
        self.bindings: OrderedDict[tuple[str, Any, int], list[tuple[str, Any, Any]]] = OrderedDict()
        self.windows_made = 0
        self._returned: dict[tuple[Any, Any], list[tuple[str, Any, Any]]] = {}  # (buffer, op) -> windows
        #   whose callback returned before the op's fence wait ended (opened by _window_fence_end)
        self.map_ended: dict[tuple[str, Any], deque[_Job]] = {}
        self.cands: list[dict[str, Any]] = []
        self.count = 0
        self.by_kind: dict[str, int] = {}
        self.overlapped = 0
        self.not_examined = 0
        self.seen = 0
        self.fence_events = 0
        self.lock_events = 0
        self.jobs_seen = 0
        self.jobs_without_fence_field = 0
        self.seen_pairs: set[tuple[Any, ...]] = set()
        self.early = _Bounded(MAX_PENDING)              # (kind, importer, id) -> jobs begun since its receipt
        self.unresolved: dict[str, deque[tuple[str, str, Any]]] = {}  # importer -> receipts whose send is unseen
        self.dropped: dict[Any, int] = {}               # buffer -> its newest generation forgotten
        self.xc = self.vc[EXPORTER]                      # the exporter's clock (never rebound)
        self._main_pid: dict[str, tuple[Any, str, Clock]] = {}  # importer -> (pid, its loop thread, its clock)
        self.unreadable = 0
        self.anomalies = 0
        self.fenced_jobs = 0
        self._lane_done: dict[str, Clock] = {}          # lane -> its clock at its last dma_end (R3)
        self._op_gen: OrderedDict[tuple[Any, Any], Any] = OrderedDict()  # (buffer, move) -> the generation it moves off
        self._waits_ended: OrderedDict[tuple[Any, Any], bool] = OrderedDict()
        self._kernel_early: dict[Any, deque[tuple[int, tuple[Any, ...]]]] = {}  # buffer -> waits before their signal
        self._kernel_unsorted: set[Any] = set()          # buffers whose KERNEL seqnos came out of order
        self._lanes: dict[tuple[str, Any, bool], str] = {}  # (loop thread, attachment, rogue) -> lane name

    # --- clocks ------------------------------------------------------------------------------

    def _clock(self, thread: str) -> Clock:
        c = self.vc.get(thread)
        if c is None:  # a new thread
            c = self.vc[thread] = {thread: 0}
        return c

    def _tick(self, thread: str) -> Clock:
        c = self._clock(thread)
        c[thread] += 1
        return c

    def _xtick(self) -> Clock:
        c = self.xc
        c[EXPORTER] += 1
        return c

    def _snap(self, thread: str) -> Clock:
        return dict(self._tick(thread))

    def _main(self, e: dict[str, Any]) -> str:
        known = self._main_pid.get(e["svc"])
        if known is not None and known[0] == e.get("pid"):
            return known[1]
        return self._loop(e)[1]

    def _loop(self, e: dict[str, Any]) -> tuple[Any, str, Clock]:
        """The importer's loop thread for this event's process: (pid, name, its clock). Hot
        handlers look `_main_pid` up themselves and call this only for a process not seen last."""
        svc, pid = e["svc"], e.get("pid")
        known = self._main_pid.get(svc)
        if known is not None and known[0] == pid:
            return known
        key = f"{svc}#{pid}"
        c = self.vc.get(key)
        if c is None:
            c = self.vc[key] = {key: 0}
        known = self._main_pid[svc] = (pid, key, c)
        self.main_of[svc] = key
        return known

    def _join_peer(self, into: Clock, importer: Any, att: Any = None) -> None:
        """R2 for a request whose send is no event: the importer's loop as of now, with (R3) the
        ended jobs of the attachment the request is about, joined into `into`."""
        imp = importer if type(importer) is str else str(importer)
        key = self.main_of.get(imp)
        if key is not None:
            _join(into, self.vc.get(key))
        if att is not None:
            lane = self.att_lane.get((imp, att))
            if lane is not None:
                _join(into, self._lane_done.get(lane))

    # --- the pass ----------------------------------------------------------------------------

    def run(self, lines: Iterable[bytes | str | dict[str, Any]]) -> "Predictor":
        # The pass makes no reference cycles (a job lets go of its generation when it ends), so
        # the cyclic collector only costs time here (a tenth of the pass): off while it runs.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._run(lines)
        finally:
            if collecting:
                gc.enable()

    def _run(self, lines: Iterable[bytes | str | dict[str, Any]]) -> "Predictor":
        it = iter(lines)
        while True:
            chunk = list(islice(it, PARSE_BATCH))
            if not chunk:
                return self
            if isinstance(chunk[0], dict):
                for e in chunk:
                    self.feed(e)  # type: ignore[arg-type]
                continue
            # one parse per batch (as the oracle does); a batch with a bad line is parsed line by line
            try:
                events = loads(b"[" + b",".join(chunk) + b"]")  # type: ignore[arg-type]
            except (ValueError, TypeError):
                events = []
                for line in chunk:
                    if not line.strip():
                        continue
                    try:
                        events.append(loads(line))
                    except (ValueError, TypeError):
                        self.unreadable += 1
            # the dispatch of _dispatch, inline: this loop is most of the pass's time
            handlers = _HANDLERS
            seen = 0
            for e in events:
                try:
                    t, name = e["t_ns"], e["event"]
                    if type(t) is not int or type(name) is not str:
                        raise TypeError
                except (KeyError, TypeError, IndexError):
                    self.unreadable += 1
                    continue
                seen += 1
                h = handlers.get(name)
                if h is None:
                    continue
                svc = e.get("svc")
                f = h[0] if svc == EXPORTER else h[2] if svc == DEPLOY else h[1]
                if f is not None:
                    try:
                        f(self, e)
                    except (KeyError, TypeError, AttributeError):
                        self.anomalies += 1
            self.seen += seen

    def feed(self, e: dict[str, Any]) -> None:
        self.seen += 1
        h = _HANDLERS.get(e["event"])
        if h is not None:
            self._dispatch(h, e)

    def _dispatch(self, h: tuple[Any, Any, Any], e: dict[str, Any]) -> None:
        svc = e.get("svc")
        try:
            if svc == EXPORTER:
                f = h[0]
            elif svc == DEPLOY:
                f = h[2]
            else:
                f = h[1]
            if f is not None:
                f(self, e)
        except (KeyError, TypeError, AttributeError):
            self.anomalies += 1

    # --- exporter ----------------------------------------------------------------------------

    def x_receive(self, e: dict[str, Any]) -> None:
        c = self._xtick()
        self._join_peer(c, e.get("importer", e.get("peer")), e.get("attachment"))

    def x_receive_unlane(self, e: dict[str, Any]) -> None:
        c = self._xtick()
        self._join_peer(c, e.get("importer", e.get("peer")))

    def x_served(self, e: dict[str, Any]) -> None:
        """map_served / unmap_served: the request's receipt and the reply's send at once."""
        c = self.xc
        c[EXPORTER] += 1
        imp = e["importer"]
        imp = imp if type(imp) is str else str(imp)
        key = self.main_of.get(imp)                       # _join_peer, inline
        if key is not None:
            for k, v in self.vc[key].items():
                if c.get(k, 0) < v:
                    c[k] = v
        if e["event"] == "unmap_served":      # R3: the unmap carries the attachment's ended jobs
            lane = self.att_lane.get((imp, e.get("attachment")))
            if lane is not None:
                done = self._lane_done.get(lane)
                if done:
                    for k, v in done.items():
                        if c.get(k, 0) < v:
                            c[k] = v
        c[EXPORTER] += 1
        if self.early:
            self._send("reply", imp, e["id"], c[EXPORTER])
        else:                                 # _send with no receipt waiting: the common case
            r = self.replies
            rk = (imp, e["id"])
            if rk not in r:
                r[rk] = c[EXPORTER]
                if len(r) > r.cap:
                    r.popitem(last=False)
                    r.dropped += 1

    def x_answered(self, e: dict[str, Any]) -> None:
        self._send("reply", str(e["peer"]), e["id"], self._xtick()[EXPORTER])

    def x_notify(self, e: dict[str, Any]) -> None:
        self._send("notify", str(e["importer"]), e["id"], self._xtick()[EXPORTER])

    def _send(self, kind: str, importer: str, msg_id: Any, epoch: int) -> None:
        """An exporter -> importer send (R2). In a real run the exporter's event may be stamped
        after the importer's receipt (the exporter was descheduled between its send and its
        event): the receipt came first, so what it started learns the send now."""
        jobs = self.early.pop((kind, importer, msg_id), None) if self.early else None
        if jobs is None:
            (self.replies if kind == "reply" else self.notifies).put((importer, msg_id), epoch)
            return
        self._resolve((kind, importer, msg_id), importer, epoch, jobs)

    def _resolve(self, early_key: tuple[Any, ...], importer: str, epoch: int, jobs: list[_Job]) -> None:
        """The exporter's event a receipt or a fence wait already saw has come: the importer's loop
        and the jobs it began since learn it (R2, R6)."""
        q = self.unresolved.get(importer)
        if q is not None and early_key in q:
            q.remove(early_key)
        key = self.main_of.get(importer)
        if key is not None:
            _learn(self._clock(key), epoch)
        for j in jobs:
            if j.begin_exp < epoch:
                j.begin_exp = epoch

    def x_returned(self, e: dict[str, Any]) -> None:
        c = self._xtick()
        op = e.get("move") if e.get("move") is not None else ("revoke", e.get("revoke"))
        sent = self.returns.pop((str(e["importer"]), e["attachment"], op), None)
        if sent is not None:
            _join(c, sent)
        else:
            self._join_peer(c, e["importer"])
        if e["event"] == "invalidate_mappings_returned":
            self._window_part(str(e["importer"]), e["attachment"], e["buffer"], op, "returned", e)

    def x_ack(self, e: dict[str, Any]) -> None:
        c = self._xtick()
        sent = self.acks.pop((str(e["importer"]), e["id"]), None)
        if sent is not None:
            _join(c, sent)
        else:
            self._join_peer(c, e["importer"], e.get("attachment"))

    def x_lock(self, e: dict[str, Any]) -> None:
        self.lock_events += 1
        _join(self._xtick(), self.lock_release.get(e["buffer"]))      # R4

    def x_unlock(self, e: dict[str, Any]) -> None:
        self.lock_events += 1
        self.lock_release[e["buffer"]] = self._snap(EXPORTER)

    def x_wait_begin(self, e: dict[str, Any]) -> None:
        self.fence_events += 1
        c = self._xtick()
        b = e["buffer"]
        rank = USAGE_RANK.get(e.get("usage"), 3)
        # R5: fences signalled before the snapshot, of a usage the wait takes
        for sigs in self._signals_of.get(b, ()):
            for _seq, urank, clock in reversed(sigs):
                if urank <= rank:
                    _join(c, clock)
                    break
        op = e.get("move") if e.get("move") is not None else ("revoke", e.get("revoke"))
        wait = {"usage": e.get("usage"), "fences": e.get("fences") or [], "t": e["t_ns"], "op": op}
        self.waits[(b, op)] = wait
        g = self._gen_of_op(b, op)
        if g is not None:
            g.wait = wait

    def x_wait_end(self, e: dict[str, Any]) -> None:
        self.fence_events += 1
        c = self._xtick()
        b = e["buffer"]
        op = e.get("move") if e.get("move") is not None else ("revoke", e.get("revoke"))
        wait = self.waits.pop((b, op), None)
        forced = set(e.get("forced") or ())
        if wait is not None:
            for f in wait["fences"]:
                imp = str(f.get("importer"))
                if imp in forced:
                    continue
                for seq, _u, clock in self.signals.get((imp, b), ()):
                    if seq >= f.get("seq", 0):
                        _join(c, clock)                                        # R5
                        break
        self._window_fence_end(b, op, e)

    def x_reset_confirmed(self, e: dict[str, Any]) -> None:
        c = self._xtick()
        sigs = self.signals.get((str(e["importer"]), e["buffer"]))
        if sigs:
            _join(c, sigs[-1][2])                                              # R7

    def x_fence_signal(self, e: dict[str, Any]) -> None:
        self.fence_events += 1
        if e.get("usage") == "KERNEL" and not e.get("forced"):
            b = e["buffer"]
            dq = self.kernel.get(b)
            if dq is None:
                dq = self.kernel[b] = deque(maxlen=MAX_SIGNALS)
            seq = e.get("seq") or 0
            if dq and seq < dq[-1][0]:
                self._kernel_unsorted.add(b)
            epoch = self._xtick()[EXPORTER]
            dq.append((seq, epoch))
            waiting = self._kernel_early.get(b)
            if waiting:                                     # R6, a wait that saw it first
                for want, key in list(waiting):
                    if want <= seq:
                        waiting.remove((want, key))
                        jobs = self.early.pop(key, None)
                        if jobs is not None:
                            self._resolve(key, key[1], epoch, jobs)
        else:
            self._xtick()

    def x_importer_lost(self, e: dict[str, Any]) -> None:
        c = self._xtick()
        if e.get("reason") not in NO_EDGE_REASONS:
            self.lost.setdefault(str(e["importer"]), []).append((e["t_ns"], c[EXPORTER]))   # R8
            del self.lost[str(e["importer"])][:-8]

    def x_buffer_created(self, e: dict[str, Any]) -> None:
        self._xtick()
        self._gen(e["buffer"], e.get("gen", 1))

    def x_move_begin(self, e: dict[str, Any]) -> None:
        self._xtick()
        self._gen(e["buffer"], e["from_gen"])
        self._op_gen[(e["buffer"], e["move"])] = e["from_gen"]
        if len(self._op_gen) > MAX_RECENT_MOVES:
            self._op_gen.popitem(last=False)

    def _gen_of_op(self, b: Any, op: Any) -> _Gen | None:
        gen = self._op_gen.get((b, op))
        return None if gen is None else self.gens.get(b, {}).get(gen)

    def x_copy_begin(self, e: dict[str, Any]) -> None:
        g = self._gen(e["buffer"], e["from_gen"])
        if g.copy_begin is None:
            g.copy_begin = _Point("copy_begin", e["t_ns"], self._snap(EXPORTER), e.get("move"), g.wait)
            for lane_jobs in g.ended.values():
                for j in lane_jobs:
                    if j.write:
                        self._pair(j, g, g.copy_begin, "lost_write")
        else:
            self._xtick()

    def x_copy_end(self, e: dict[str, Any]) -> None:
        c = self._xtick()
        g = self._gen(e["buffer"], e["to_gen"])
        g.copy_end_epoch, g.copy_end_t = c[EXPORTER], e["t_ns"]

    def x_free(self, e: dict[str, Any]) -> None:
        g = self._gen(e["buffer"], e["from_gen"])
        if g.free is None:
            g.free = _Point("free", e["t_ns"], self._snap(EXPORTER), e.get("move"), g.wait)
            for lane_jobs in g.ended.values():
                for j in lane_jobs:
                    if j.write and g.copy_begin is None:
                        self._pair(j, g, g.free, "lost_write")
                    elif not j.write:
                        self._pair(j, g, g.free, "stale_read")
            g.ended.clear()             # nothing pairs with this generation any more
        else:
            self._xtick()

    def x_tick(self, e: dict[str, Any]) -> None:
        self._xtick()

    def _gen(self, b: Any, gen: Any) -> _Gen:
        per = self.gens.get(b)
        if per is None:
            per = self.gens[b] = {}
        g = per.get(gen)
        if g is None:
            g = per[gen] = _Gen()
            if len(per) > KEEP_GENERATIONS:
                gone = next(iter(per))
                old = per.pop(gone)
                self.not_examined += sum(len(v) for v in old.ended.values())
                if isinstance(gone, int) and gone > self.dropped.get(b, 0):
                    self.dropped[b] = gone
        return g

    # --- importer loop -----------------------------------------------------------------------

    def i_reply(self, e: dict[str, Any]) -> None:
        svc = e["svc"]
        r = self._main_pid.get(svc)
        if r is None or r[0] != e.get("pid"):
            r = self._loop(e)
        c = r[2]
        c[r[1]] += 1
        epoch = self.replies.pop((svc, e.get("id")), None)
        if epoch is None:
            self._receive(c, "reply", e)
        elif c.get(EXPORTER, 0) < epoch:                       # R2 (_learn)
            c[EXPORTER] = epoch
        name = e["event"]
        if name == "map":
            k = (svc, e.get("attachment"))
            self.serial[k] = self.serial.get(k, 0) + 1
            self.att_usable[k] = (True, None, e["t_ns"])
            if k in self.map_ended:
                del self.map_ended[k]
        elif name == "unmap":
            self.att_usable[(svc, e.get("attachment"))] = (False, "unmap", e["t_ns"])

    def _receive(self, c: Clock, kind: str, e: dict[str, Any]) -> None:
        """R2 at an importer; a receipt whose send is not seen yet waits for it (`_send`)."""
        epoch = (self.replies if kind == "reply" else self.notifies).pop((e["svc"], e.get("id")), None)
        if epoch is not None:
            _learn(c, epoch)
            return
        q0 = self.unresolved.get(e["svc"])
        if q0 is not None and (kind, e["svc"], e.get("id")) in q0:
            return                          # a duplicate receipt of a send still unseen
        key = (kind, e["svc"], e.get("id"))
        self.early.put(key, [])
        q = self.unresolved.get(e["svc"])
        if q is None:
            q = self.unresolved[e["svc"]] = deque(maxlen=16)
        q.append(key)

    def i_notified(self, e: dict[str, Any]) -> None:
        main = self._main(e)
        c = self._tick(main)
        self._receive(c, "notify", e)
        op = e.get("move") if e.get("move") is not None else ("revoke", e.get("revoke"))
        if e["event"] == "move_notify_received":
            self.returns.put((e["svc"], e["attachment"], op), dict(c))
        else:
            k = (e["svc"], e["attachment"])
            key = (k[0], k[1], self.serial.get(k, 0))
            self.bindings.setdefault(key, []).append((e["svc"], e["attachment"], op))
            if len(self.bindings) > MAX_PENDING:
                self.bindings.popitem(last=False)

    def i_returned(self, e: dict[str, Any]) -> None:
        c = self._tick(self._main(e))
        op = e.get("move") if e.get("move") is not None else ("revoke", e.get("revoke"))
        out = dict(c)
        lane = self.att_lane.get((e["svc"], e["attachment"]))
        if lane is not None:
            _join(out, self._lane_done.get(lane))      # R3: the callback looked at its DMA (`stopped`)
        self.returns.put((e["svc"], e["attachment"], op), out)
        if e.get("stopped"):
            self._window((e["svc"], e["attachment"], op))["stopped"] = True

    def i_invalidate(self, e: dict[str, Any]) -> None:
        self._tick(self._main(e))
        self.att_usable[(e["svc"], e.get("attachment"))] = (False, "invalidate", e["t_ns"])

    def i_ack_sent(self, e: dict[str, Any]) -> None:
        c = self._tick(self._main(e))
        out = dict(c)
        lane = self.att_lane.get((e["svc"], e.get("attachment")))
        if lane is not None:
            _join(out, self._lane_done.get(lane))                                 # R3
        self.acks.put((e["svc"], e["id"]), out)

    def i_kernel_wait(self, e: dict[str, Any]) -> None:
        self.fence_events += 1
        r = self._main_pid.get(e["svc"])
        if r is None or r[0] != e.get("pid"):
            r = self._loop(e)
        c = r[2]
        c[r[1]] += 1
        b = e["buffer"]
        dq = self.kernel.get(b)
        want = e.get("seq") or 0
        if not dq or dq[-1][0] < want and b not in self._kernel_unsorted:
            self._kernel_wait_early(e["svc"], b, want)
            return
        found = None                        # the first signal with a seqno >= the wait's
        if b in self._kernel_unsorted:
            for seq, epoch in dq:
                if seq >= want:
                    found = epoch
                    break
        else:                               # seqnos ascending: the first of the suffix >= want
            for seq, epoch in reversed(dq):
                if seq < want:
                    break
                found = epoch
        if found is None:
            self._kernel_wait_early(e["svc"], b, want)
        elif c.get(EXPORTER, 0) < found:
            c[EXPORTER] = found                                                    # R6 (_learn)

    def _kernel_wait_early(self, importer: str, b: Any, want: int) -> None:
        """R6 in a real run: the wait returned, so the KERNEL fence was signalled (the shared
        fence cell), but the exporter's fence_signal event is stamped later (descheduled between
        its signal and its event). The loop and the jobs it begins from now on learn it when it
        comes, as a receipt whose send is stamped late (_receive, _send)."""
        key = ("kernel", importer, (b, want))
        self.early.put(key, [])
        q = self.unresolved.get(importer)
        if q is None:
            q = self.unresolved[importer] = deque(maxlen=16)
        if key not in q:
            q.append(key)
        waiting = self._kernel_early.setdefault(b, deque(maxlen=16))
        if (want, key) not in waiting:
            waiting.append((want, key))

    def i_dma_begin(self, e: dict[str, Any]) -> None:
        svc = e["svc"]
        r = self._main_pid.get(svc)
        if r is None or r[0] != e.get("pid"):
            r = self._loop(e)
        main, mc = r[1], r[2]
        mc[main] += 1
        att = e.get("attachment")
        rogue = bool(e.get("rogue"))
        lane = self._lanes.get((main, att, rogue))
        if lane is None:
            lane = self._lanes[(main, att, rogue)] = f"{main}/{att}" + ("/rogue" if rogue else "")
        sa = (svc, att)
        if not rogue:
            self.att_lane[sa] = lane
        lc = self.vc.get(lane)
        if lc is None:
            lc = self.vc[lane] = {lane: 0}
        for k, v in mc.items():                 # _join(lc, mc), inline
            if lc.get(k, 0) < v:
                lc[k] = v
        lc[lane] += 1
        self.jobs_seen += 1
        if "fence" not in e:
            self.jobs_without_fence_field += 1
        elif e["fence"] is not None:
            self.fenced_jobs += 1
        j = _Job(e, svc, att, rogue, lane, self.serial.get(sa, 0), mc.get(EXPORTER, 0))
        self.jobs[(svc, j.job)] = j
        gen = j.gen
        per = self.gens.get(j.buffer)
        g = per.get(gen) if per is not None else None
        # unfenced_access: the copy_end creating this generation must come before (R1-R6)
        if g is not None and isinstance(gen, int) and gen > 1 and not rogue:
            if g.copy_end_epoch is None:
                self._emit_unfenced(j, g)     # the copy creating it has not even ended
            else:
                j.unf = g                     # judged at its end, when late sends are in (_send)
        q = self.unresolved.get(svc)
        if q:
            early = self.early
            for key in list(q):
                waiting = early.get(key)
                if waiting is None:
                    q.remove(key)             # resolved or forgotten
                else:
                    waiting.append(j)
        usable = self.att_usable.get(sa)
        if usable is not None and not usable[0]:
            j.uau = usable                # judged at its end: a job that touched nothing is no race

    def _emit_uau(self, j: _Job) -> None:
        usable, j.uau = j.uau, None
        if usable is not None:
            self._add({"kind": "use_after_unmap", "buffer": j.buffer, "gen": j.gen, "job": j.brief(),
                       "other": {"event": usable[1], "t_ns": usable[2], "svc": j.svc},
                       "overlapped": True,
                       "why": f"{j.svc} began job {j.job} after it had itself "
                              f"{'unmapped' if usable[1] == 'unmap' else 'invalidated'} attachment {j.att} "
                              f"(t_ns {usable[2]}) with no map since: program order puts the begin after it"},
                      ("uau", j.svc, j.job))

    def i_main_tick(self, e: dict[str, Any]) -> None:
        self._tick(self._main(e))

    def i_start(self, e: dict[str, Any]) -> None:
        key = f"{e['svc']}#{e.get('pid')}"
        self.main_of[e["svc"]] = key
        self._tick(key)
        self._cut(e["svc"], e["t_ns"], exclude_main=key)

    # --- the DMA lane ------------------------------------------------------------------------

    def i_dma_end(self, e: dict[str, Any]) -> None:
        key = (e["svc"], e.get("job"))
        j = self.jobs.pop(key, None)
        if j is None:
            return
        lane = j.lane
        lc = self.vc[lane]
        lc[lane] += 1
        t = e["t_ns"]
        j.end_t = t
        la = e.get("last_access_ns", t)                 # absent: the dma_end; null: no access at all
        j.access_end = la if isinstance(la, int) else None
        j.end_epoch = lc[lane]
        self._lane_done[lane] = dict(lc)
        jl = self.job_lane
        jl[key] = (lane, j.end_epoch)
        if len(jl) > MAX_PENDING:       # unfenced jobs' ends are never signalled
            jl.popitem(last=False)
        status = e.get("status")
        if status == "aborted" and not str(e.get("reason") or "").startswith("fence forced"):
            _join(self._clock(self._main(e)), lc)          # R3: the driver stopped it itself
        if j.access_end is None or (status == "fault" and not e.get("bytes")):
            self._judge_unfenced(j)       # no access to pair; its begin is still judged
            return
        if not j.write:
            j.used = status == "ok" and bool(e.get("bytes")) and not e.get("discarded")
        self._ended(j)

    def i_fence_signal(self, e: dict[str, Any]) -> None:
        self.fence_events += 1
        key = (e["svc"], e.get("job"))
        ended = self.job_lane.pop(key, None)
        j = self.jobs.get(key)
        sk = (e["svc"], e["buffer"])
        sigs = self.signals.get(sk)
        if sigs is None:
            sigs = self.signals[sk] = deque(maxlen=MAX_SIGNALS)
            self._signals_of.setdefault(sk[1], []).append(sigs)
        if j is None and ended is not None and self.vc[ended[0]][ended[0]] == ended[1]:
            # the lane did nothing since the job's end: the signal knows what that end knew (the
            # dma_end's snapshot, never mutated), and an epoch of its own would order nothing more
            sigs.append((e.get("seq") or 0, USAGE_RANK.get(e.get("usage"), 3), self._lane_done[ended[0]]))
            return
        lane = j.lane if j is not None else ended[0] if ended is not None else self._main(e)
        c = self.vc.get(lane)
        if c is None:
            c = self.vc[lane] = {lane: 0}
        c[lane] += 1
        sigs.append((e.get("seq") or 0, USAGE_RANK.get(e.get("usage"), 3), dict(c)))

    def _judge_unfenced(self, j: _Job) -> None:
        g = j.unf
        j.unf = None
        if g is not None and (j.begin_exp < g.copy_end_epoch or j.begin_t < g.copy_end_t):  # type: ignore[operator]
            self._emit_unfenced(j, g)

    def _ended(self, j: _Job) -> None:
        g = j.unf
        if g is not None:                                   # _judge_unfenced, inline
            j.unf = None
            if j.begin_exp < g.copy_end_epoch or j.begin_t < g.copy_end_t:  # type: ignore[operator]
                self._emit_unfenced(j, g)
        if j.uau is not None:
            self._emit_uau(j)
        per = self.gens.get(j.buffer)
        g = per.get(j.gen) if per is not None else None
        if g is None and isinstance(j.gen, int) and j.gen <= self.dropped.get(j.buffer, 0):
            # as the oracle: a generation older than the last KEEP_GENERATIONS was copied away and
            # freed several moves ago (a job on a stale cached mapping)
            kind = "lost_write" if j.write else "stale_read"
            self._add({"kind": kind, "buffer": j.buffer, "gen": j.gen, "job": j.brief(),
                       "other": {"event": "free", "t_ns": None, "svc": EXPORTER}, "overlapped": True,
                       "why": f"its generation was copied away and freed more than {KEEP_GENERATIONS} moves "
                              f"before the job's end: nothing ordered the job before them"},
                      (kind, j.svc, j.job, "dropped"))
            return
        if g is None:
            g = self._gen(j.buffer, j.gen)
        write, free = j.write, g.free
        if free is not None or (write and g.copy_begin is not None):
            if write and g.copy_begin is not None:
                self._pair(j, g, g.copy_begin, "lost_write")
            elif write:
                self._pair(j, g, free, "lost_write")
            else:
                self._pair(j, g, free, "stale_read")
        if free is None:
            q = g.ended.get(j.lane)
            if q is None:
                q = g.ended[j.lane] = deque()
            q.append(j)
            if len(q) > MAX_ENDED:
                q.popleft()
                self.not_examined += 1
        # Linux 7.1 windows of the mapping the job ran under
        if write or j.used:
            k = (j.svc, j.att)
            if self.bindings:               # (none until an invalidate_mappings: Linux 7.1)
                for key in self.bindings.get((j.svc, j.att, j.serial), ()):
                    self._window_pair(j, key)
            q2 = self.map_ended.get(k)
            if q2 is None:
                q2 = self.map_ended[k] = deque(maxlen=MAX_ENDED)
            q2.append(j)

    def _cut(self, svc: str, t: int, exclude_main: str | None = None) -> None:
        """Jobs of `svc` with no dma_end end here (R9: the process died or started again)."""
        for key in [k for k, j in self.jobs.items() if k[0] == svc and not j.lane.startswith(f"{exclude_main}/")]:
            j = self.jobs.pop(key)
            j.end_t = j.access_end = t
            j.end_epoch = self._tick(j.lane)[j.lane]
            self._ended(j)

    # --- deploy ------------------------------------------------------------------------------

    def d_died(self, e: dict[str, Any]) -> None:
        self._tick(DEPLOY)
        self._cut(str(e.get("name")), e["t_ns"])

    def d_tick(self, e: dict[str, Any]) -> None:
        self._tick(DEPLOY)

    # --- Linux 7.1 windows -------------------------------------------------------------------

    def _window_part(self, imp: str, att: Any, b: Any, op: Any, part: str, e: dict[str, Any]) -> None:
        w = self._window((imp, att, op))
        w[part] = True
        w["buffer"] = b
        if part == "returned" and not (w.get("stopped") or (b, op) in self._waits_ended):
            self._returned.setdefault((b, op), []).append((imp, att, op))
            if len(self._returned) > MAX_PENDING:
                self._returned.pop(next(iter(self._returned)))
            return
        self._window_open(imp, att, op, e)

    def _window(self, key: tuple[str, Any, Any]) -> dict[str, Any]:
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = {"n": self.windows_made}     # its place in the making order
            self.windows_made += 1
        return w

    def _window_fence_end(self, b: Any, op: Any, e: dict[str, Any]) -> None:
        self._waits_ended[(b, op)] = True
        if len(self._waits_ended) > MAX_RECENT_MOVES:
            self._waits_ended.popitem(last=False)
        keys = self._returned.pop((b, op), ())
        if len(keys) > 1:                   # in the order the windows were made
            keys = sorted(set(keys), key=lambda k: self.windows.get(k, {}).get("n", -1))
        for key in keys:
            w = self.windows.get(key)
            if w is not None and w.get("buffer") == b and w.get("returned") and "open" not in w:
                self._window_open(key[0], key[1], op, e)

    def _window_open(self, imp: str, att: Any, op: Any, e: dict[str, Any]) -> None:
        w = self.windows[(imp, att, op)]
        if "open" in w:
            return
        w["open"] = _Point(e["event"], e["t_ns"], dict(self.vc[EXPORTER]), op, None)
        for j in list(self.map_ended.get((imp, att), ())):
            if (imp, att, op) in self.bindings.get((imp, att, j.serial), ()):
                self._window_pair(j, (imp, att, op))
        if len(self.windows) > MAX_PENDING:
            self.windows.popitem(last=False)

    def _window_pair(self, j: _Job, key: tuple[str, Any, Any]) -> None:
        w = self.windows.get(key)
        if not w or "open" not in w:
            return
        p: _Point = w["open"]
        kind = "write_after_invalidate" if j.write else "stale_read"
        self._pair(j, None, p, kind, window=True)

    # --- candidates --------------------------------------------------------------------------

    def _ordered(self, j: _Job, p: _Point) -> str | None:
        """The rule that orders the job's end before p, or None."""
        if p.clock.get(j.lane, 0) >= j.end_epoch:
            return "R1-R7"
        end = j.access_end if j.access_end is not None else j.end_t
        if end is not None:
            for t, epoch in self.lost.get(j.svc, ()):
                if j.begin_t <= t and end <= t and epoch <= p.clock.get(EXPORTER, 0):
                    return "R8"
        return None

    def _pair(self, j: _Job, g: _Gen | None, p: _Point, kind: str, window: bool = False) -> None:
        end = j.access_end if j.access_end is not None else j.end_t
        overlapped = end is None or end > p.t
        # an overlap in time is a candidate even when the rules order it (a real run's clocks
        # stamp some events late): every race the oracle reports, judged on times, is one
        if not overlapped and (p.clock.get(j.lane, 0) >= j.end_epoch or self._ordered(j, p)):
            return                      # (the first test is _ordered's R1-R7, inline: most pairs)
        key = (kind, j.svc, j.job, p.event, p.t)
        if key in self.seen_pairs:
            return
        self._add({"kind": kind, "buffer": j.buffer, "gen": j.gen, "job": j.brief(),
                   "other": {"event": p.event, "t_ns": p.t, "svc": EXPORTER, "move": _jsonable(p.move)},
                   "overlapped": overlapped, "why": self._why(j, p, window)}, key)

    def _emit_unfenced(self, j: _Job, g: _Gen) -> None:
        key = ("unfenced_access", j.svc, j.job)
        if key in self.seen_pairs:
            return
        why = ("the copy creating this generation had not ended when the job began"
               if g.copy_end_epoch is None or g.copy_end_t > j.begin_t else
               f"no message, fence or lock hand-off leads from the exporter's copy_end "
               f"(t_ns {g.copy_end_t}) to {j.svc}'s dma_begin: the job's map reply and kernel fence "
               f"wait (R2, R6) carried only what the exporter knew before the copy ended")
        self._add({"kind": "unfenced_access", "buffer": j.buffer, "gen": j.gen, "job": j.brief(),
                   "other": {"event": "copy_end", "t_ns": g.copy_end_t, "svc": EXPORTER},
                   "overlapped": g.copy_end_t is None or g.copy_end_t > j.begin_t, "why": why}, key)

    def _why(self, j: _Job, p: _Point, window: bool) -> str:
        head = (f"no chain of messages (R2), completions passed on (R3), lock hand-offs (R4) or fence "
                f"signals (R5-R7) leads from {j.svc}'s job {j.job} ending to the exporter's {p.event}")
        if j.rogue:
            return head + ": a rogue device's job, which no one is told of"
        wait = p.wait
        if window:
            return head + " opening the attachment's invalidation window: the wait did not take the job's fence"
        if wait is None:
            tail = "; the move waited for no fence"
        elif j.fence is None:
            tail = "; the job was unfenced, so the move's fence wait could not take it"
        else:
            listed = [f for f in wait["fences"] if str(f.get("importer")) == j.svc]
            if USAGE_RANK.get("WRITE" if j.write else "READ", 3) > USAGE_RANK.get(wait.get("usage"), 3):
                tail = (f"; the move waited with usage {wait.get('usage')}, which does not take the job's "
                        f"{'WRITE' if j.write else 'READ'} fence")
            elif j.begin_t > wait["t"]:
                tail = "; the job began after the move's fence wait had taken its snapshot"
            elif not listed:
                tail = "; the job's fence was not in the wait's snapshot (it read as signalled then)"
            else:
                tail = "; the job's fence was forced or signalled before the job's last access"
        return head + tail + " (and no lease expiry (R8) covers it)"

    def _add(self, item: dict[str, Any], key: tuple[Any, ...]) -> None:
        self.seen_pairs.add(key)
        if len(self.seen_pairs) > MAX_PENDING * 4:
            self.seen_pairs.clear()
        self.count += 1
        self.by_kind[item["kind"]] = self.by_kind.get(item["kind"], 0) + 1
        if item.get("overlapped"):
            self.overlapped += 1
        if len(self.cands) < MAX_ITEMS:
            self.cands.append(item)

    # --- the result --------------------------------------------------------------------------

    def finish(self) -> None:
        """Jobs still running at the end of the history: their ends are ordered before nothing."""
        for key in list(self.jobs):
            j = self.jobs.pop(key)
            j.end_t = None
            j.access_end = None
            j.end_epoch = 1 << 62
            self._ended(j)

    def refusal(self) -> str | None:
        """One line when the history cannot be predicted from, else None."""
        if self.jobs_seen == 0:
            return "cannot predict: the history has no DMA job (dma_begin), so there is no access to pair"
        if self.jobs_without_fence_field:
            return (f"cannot predict: {self.jobs_without_fence_field} of {self.jobs_seen} dma_begin events carry no "
                    f"`fence` field (a run recorded before fences were events): a job's fence cannot be "
                    f"matched to the exporter's wait, so the fence rule (R5) cannot order anything")
        if self.fenced_jobs and not self.fence_events:
            return ("cannot predict: the history's jobs are fenced but it has no fence_signal or fence_wait "
                    "event (an old run): the fence rule (R5) cannot order any job before a copy")
        return None

    def result(self) -> dict[str, Any]:
        self.finish()
        return {"candidates": self.count, "by_kind": dict(sorted(self.by_kind.items())),
                "overlapped": self.overlapped, "items": self.cands, "not_examined": self.not_examined,
                "events": self.seen, "unreadable_lines": self.unreadable, "anomalies": self.anomalies,
                "fence_events": self.fence_events, "lock_events": self.lock_events}


def _jsonable(x: Any) -> Any:
    return list(x) if isinstance(x, tuple) else x


P = Predictor
# event name -> (exporter's handler, importer's handler, deploy's handler)
_HANDLERS: dict[str, tuple[Any, Any, Any]] = {
    "map_served": (P.x_served, None, None),
    "unmap_served": (P.x_served, None, None),
    "map_deferred": (P.x_receive_unlane, None, None),
    "op_received": (P.x_receive_unlane, None, None),
    "op_answered": (P.x_answered, None, None),
    "hello": (P.x_receive_unlane, None, None),
    "bye": (P.x_receive_unlane, None, None),
    "attach": (P.x_receive_unlane, P.i_reply, None),
    "detach": (P.x_receive, P.i_reply, None),
    "pin": (P.x_receive, None, None),
    "unpin": (P.x_receive, None, None),
    "move_notify_sent": (P.x_notify, None, None),
    "invalidate_mappings_sent": (P.x_notify, None, None),
    "move_notify_returned": (P.x_returned, None, None),
    "invalidate_mappings_returned": (P.x_returned, P.i_returned, None),
    "move_notify_received": (None, P.i_notified, None),
    "invalidate_mappings_received": (None, P.i_notified, None),
    "ack": (P.x_ack, None, None),
    "ack_sent": (None, P.i_ack_sent, None),
    "resv_lock": (P.x_lock, None, None),
    "resv_unlock": (P.x_unlock, None, None),
    "fence_wait_begin": (P.x_wait_begin, None, None),
    "fence_wait_end": (P.x_wait_end, None, None),
    "reset_confirmed": (P.x_reset_confirmed, None, None),
    "fence_signal": (P.x_fence_signal, P.i_fence_signal, None),
    "importer_lost": (P.x_importer_lost, None, None),
    "buffer_created": (P.x_buffer_created, None, None),
    "move_begin": (P.x_move_begin, None, None),
    "copy_begin": (P.x_copy_begin, None, None),
    "copy_end": (P.x_copy_end, None, None),
    "free": (P.x_free, None, None),
    "map": (None, P.i_reply, None),
    "unmap": (None, P.i_reply, None),
    "invalidate": (None, P.i_invalidate, None),
    "kernel_fence_wait": (None, P.i_kernel_wait, None),
    "dma_begin": (None, P.i_dma_begin, None),
    "dma_end": (None, P.i_dma_end, None),
    "service_start": (None, P.i_start, None),
    "lease_expired": (None, P.i_main_tick, None),
    "rejoin": (None, P.i_main_tick, None),
    "service_died": (None, None, P.d_died),
    "service_restarted": (None, None, P.d_tick),
    "fault": (None, None, P.d_tick),
}


def predict_lines(lines: Iterable[bytes | str | dict[str, Any]]) -> dict[str, Any]:
    """The prediction of one history (lines in history order); raises PredictRefused."""
    p = Predictor().run(lines)
    why = p.refusal()
    if why is not None:
        raise PredictRefused(why)
    return p.result()


def predict_history(history_path: Any) -> dict[str, Any]:
    """The prediction of a merged history file (one streaming pass); raises PredictRefused, or
    HistoryError when there is no history."""
    from pathlib import Path

    from checker.history import open_history
    with open_history(Path(history_path)) as fh:
        return predict_lines(fh)


def summary_line(pred: dict[str, Any]) -> str:
    """One line for the CLI: how many candidates, of which kinds, how many raced this time."""
    kinds = ", ".join(f"{k} {v}" for k, v in pred["by_kind"].items())
    line = (f"could have raced: {pred['candidates']} candidate(s)" + (f" ({kinds})" if kinds else "")
            + f", {pred['overlapped']} of them overlapped in this run (a candidate is never counted as a race)")
    if pred.get("unreadable_lines"):
        line += f"; {pred['unreadable_lines']} unreadable line(s) of {pred['events'] + pred['unreadable_lines']} skipped"
    return line
