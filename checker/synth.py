"""Synthetic histories of a correct (race-free) serial schedule, for the benchmark and the tests.

This is not the emulator: it is a small, single-threaded model of what a correct run's history
looks like, so the oracle can be exercised on long, realistic histories without starting
processes. Rules it keeps (each a reason the oracle must find no race in its output):
- An importer DMAs only through a usable mapping (mapped, not invalidated), at most one job per
  importer and buffer at a time, on the generation it was handed at map time.
- A map waits while its buffer is moving (the reservation lock), so a mapping always names a
  generation whose copy has ended.
- A move (`fenced` style): resv_lock, move_begin, a move_notify to every importer mapping the
  buffer, which invalidates its mapping (no new job on it) and acks; then the exporter waits until
  every job on the buffer has ended (fence wait, listing the fences it awaits), copies
  (copy_begin..copy_end, kernel fence), switches, frees the old range, ends the move and releases
  the lock. In `idle` style it only moves buffers nobody has mapped and refuses the others (`mapped`).
- Freed ranges are reused, a destination heap without room refuses the move (`no_space`).
- Time advances by a random step per action and sometimes not at all, so different services tie
  on t_ns (the oracle must judge ties as "not a race"). Each service's own events are in order.
Events carry the fields of docs/events.md (plus the request-id flows), so the trace writer has
messages to draw.

Faults (all off by default, so a default history is unchanged; each draws randomness only when on):
- `msg_fault_prob`: a request is dropped (the importer retries it), duplicated (the exporter
  dedups it) or delayed: `fault`, `retry`, `dedup` events; nothing else changes.
- `kill` (importer, step): at that step the importer (given a write job in flight if it can) is
  SIGKILLed: deploy's `fault` and `service_died`; its job never ends (half its lines written). The
  exporter's fence wait blocks on it until the lease (`lease_ns`) runs out: `importer_lost`,
  `attachment_revoked`, forced `fence_signal`; then it moves the job's buffer. With
  `restart_after` (steps), deploy restarts it: `service_restarted`, a new `service_start`, job ids
  from incarnation << 24, new attachments.
- `pause` (importer, step): SIGSTOP; its jobs stop (last access then). The lease runs out as above
  and the exporter moves a paused job's buffer; the importer resumes after that copy began: its
  `lease_expired`, the job's dma_end `aborted` with `last_access_ns` (before the copy: no race),
  `rejoin`.
- `rogue` (importer, step): the importer unmaps a buffer B and its device keeps writing B's old
  range (a rogue job: a real race); the exporter moves B away and then moves another buffer C
  into that range; the rogue write ends after C arrived, so C's final bytes hold B's lines.
- `final_content` (on by default): the exporter reports each buffer's stamps at stop, from a
  per-line model of the heaps (writes stamp, copies copy, partial writes stamp part).
  `tamper` ((buffer, "lose" | "foreign"), ...) damages a buffer's reported bytes (half its last
  write replaced by the initial stamp / three lines of another buffer), for the bytes check's tests.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

from checker.jsonio import dumps

Event = dict[str, Any]


@dataclass
class SynthConfig:
    importers: int = 3
    buffers: int = 8
    buffer_size: int = 0x10000
    vram_slots: int = 6            # buffers that fit in vram at once
    sys_slots: int = 64
    steps: int = 2000              # importer/exporter actions before the orderly shutdown
    max_events: int | None = None  # or stop acting once about this many events were emitted
    seed: int = 0
    style: str = "fenced"          # "fenced" or "idle"
    move_prob: float = 0.05
    job_prob: float = 0.7
    write_prob: float = 0.4
    tie_prob: float = 0.1
    max_moves: int = 2
    strategy: str = "resv-fence"
    final_content: bool = True
    msg_fault_prob: float = 0.0
    kill: tuple[int, int] | None = None
    restart_after: int | None = None
    pause: tuple[int, int] | None = None
    rogue: tuple[int, int] | None = None
    tamper: tuple[tuple[int, str], ...] = ()
    lease_ns: int = 3_000_000


@dataclass
class _Buf:
    id: int
    heap: str
    offset: int
    gen: int = 1
    moving: int | None = None


@dataclass
class _Att:
    id: int
    state: str = "none"            # none / mapped / invalid
    gen: int | None = None
    job: int | None = None         # the job in flight on it, if any
    access: str = "read"           # that job's access


@dataclass
class _Imp:
    index: int
    atts: dict[int, _Att] = field(default_factory=dict)
    next_req: int = 1
    next_job: int = 1
    alive: bool = True
    lost: bool = False             # the exporter gave up on this incarnation (lease, restart)
    incarnation: int = 0
    stalled: list[tuple[_Att, dict[str, Any], int]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"importer-{self.index}"


class SerialSchedule:
    """Iterate over `events()` for the history, in t_ns order."""

    T_BASE = 1_000_000_000_000

    def __init__(self, cfg: SynthConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.t = self.T_BASE
        self._out: list[Event] = []
        self._ends: list[tuple[int, int, Callable[[], None]]] = []
        self._end_seq = 0
        self.free_slots = {"vram": list(range(cfg.vram_slots)), "sys": list(range(cfg.sys_slots))}
        self.bufs: dict[int, _Buf] = {}
        self.imps = [_Imp(i) for i in range(1, cfg.importers + 1)]
        self.next_att = 1
        self.next_move = 1
        self.next_exp_req = 1
        self.moves: list[Generator[None, None, None]] = []
        self.emitted = 0
        self.step_no = 0
        self.lines = cfg.buffer_size // 64
        self.mem: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
        self.last_writer: dict[int, tuple[int, int]] = {}  # buffer -> (writer, job) of its last ok write
        self.faults_sched: list[dict[str, Any]] = []
        if cfg.kill is not None:
            self.faults_sched.append({"kind": "restart" if cfg.restart_after is not None else "kill",
                                      "target": f"importer-{cfg.kill[0]}", "at": 0.0, "for": None, "p": 1.0,
                                      "op": None})
        if cfg.pause is not None:
            self.faults_sched.append({"kind": "pause", "target": f"importer-{cfg.pause[0]}", "at": 0.0,
                                      "for": 1.0, "p": 1.0, "op": None})
        if cfg.rogue is not None:
            self.faults_sched.append({"kind": "rogue", "target": f"importer-{cfg.rogue[0]}", "at": 0.0,
                                      "for": None, "p": 1.0, "op": None, "ms": 20.0, "access": "write"})
        if cfg.msg_fault_prob:
            for kind in ("drop", "dup", "delay"):
                self.faults_sched.append({"kind": kind, "target": "importers", "at": 0.0, "for": None,
                                          "p": cfg.msg_fault_prob, "op": None})

    # ------------------------------------------------------------------ plumbing

    def _emit(self, svc: str, event: str, **fields: Any) -> None:
        pid = 1000 if svc == "exporter" else 999 if svc == "deploy" else 1000 + int(svc.rsplit("-", 1)[1])
        self._out.append({"t_ns": self.t, "svc": svc, "pid": pid, "event": event, **fields})

    def _tick(self, lo: int = 2_000, hi: int = 30_000) -> None:
        self.t += self.rng.randint(lo, hi)

    def _advance(self) -> None:
        dt = 0 if self.rng.random() < self.cfg.tie_prob else self.rng.randint(1_000, 100_000)
        target = self.t + dt
        while self._ends and self._ends[0][0] <= target:
            end_t, _, fn = heapq.heappop(self._ends)
            self.t = max(self.t, end_t)
            fn()
        self.t = max(self.t, target)

    def _alloc(self, heap: str) -> int | None:
        slots = self.free_slots[heap]
        if not slots:
            return None
        slot = slots.pop(self.rng.randrange(len(slots)))
        return slot * self.cfg.buffer_size

    def _release(self, heap: str, offset: int) -> None:
        self.free_slots[heap].append(offset // self.cfg.buffer_size)

    def _place(self, b: _Buf) -> dict[str, Any]:
        return {"heap": b.heap, "offset": b.offset, "size": self.cfg.buffer_size, "gen": b.gen}

    # ------------------------------------------------------------------ the run

    def events(self) -> Iterator[Event]:
        cfg = self.cfg
        self._emit("deploy", "run_start", run_id="synth", strategy=cfg.strategy,
                   params={"strategy": cfg.strategy, "seed": cfg.seed, "importers": cfg.importers,
                           "buffers": cfg.buffers, "buffer_size": cfg.buffer_size,
                           "vram_size": cfg.vram_slots * cfg.buffer_size, "duration_s": None,
                           "move_rate": cfg.move_prob, "transport": "synthetic", "hint_policy": None,
                           "faults": self.faults_sched, "lease_ms": cfg.lease_ns / 1e6, "retry_ms": 1.0})
        self._tick()
        self._emit("exporter", "service_start", run_id="synth", strategy=cfg.strategy,
                   heaps={"vram": {"shm": "vram", "size": cfg.vram_slots * cfg.buffer_size},
                          "sys": {"shm": "sys", "size": cfg.sys_slots * cfg.buffer_size}},
                   fences_shm="fences", buffers=cfg.buffers, buffer_size=cfg.buffer_size,
                   move_rate=cfg.move_prob)
        for i in range(cfg.buffers):
            heap = "vram" if self.free_slots["vram"] else "sys"
            off = self._alloc(heap)
            assert off is not None, "not enough room for the initial buffers"
            self.bufs[i] = _Buf(i, heap, off)
            self._tick(100, 1_000)
            self._emit("exporter", "buffer_created", buffer=i, heap=heap, offset=off,
                       size=cfg.buffer_size, gen=1)
            self.mem[(heap, off)] = [(i, 0, 0)] * self.lines
        for imp in self.imps:
            self._tick()
            self._emit(imp.name, "service_start", index=imp.index, strategy=cfg.strategy,
                       endpoint="ipc://synth")
            self._tick()
            self._emit("exporter", "hello", importer=imp.name, slot=imp.index, peer_pid=1000 + imp.index)
        self._emit("deploy", "workload_start")
        yield from self._drain()
        # Leave room for the shutdown's unmaps and detaches when aiming at an event count.
        budget = None if cfg.max_events is None else cfg.max_events - 16 * cfg.importers * cfg.buffers
        for _ in range(cfg.steps):
            if budget is not None and self.emitted >= budget:
                break
            self._step()
            yield from self._drain()
        yield from self._shutdown()

    def _drain(self) -> Iterator[Event]:
        out, self._out = self._out, []
        self.emitted += len(out)
        yield from out

    def _step(self) -> None:
        self._advance()
        for mv in list(self.moves):
            try:
                next(mv)
            except StopIteration:
                self.moves.remove(mv)
        self.step_no += 1
        cfg = self.cfg
        if cfg.kill is not None and self.step_no == cfg.kill[1]:
            self._kill(self.imps[cfg.kill[0] - 1])
            return
        if (cfg.kill is not None and cfg.restart_after is not None
                and self.step_no == cfg.kill[1] + cfg.restart_after):
            self._restart(self.imps[cfg.kill[0] - 1])
            return
        if cfg.pause is not None and self.step_no == cfg.pause[1]:
            self._pause(self.imps[cfg.pause[0] - 1])
            return
        if cfg.rogue is not None and self.step_no == cfg.rogue[1]:
            self._rogue(self.imps[cfg.rogue[0] - 1])
            return
        if self.rng.random() < self.cfg.move_prob and len(self.moves) < self.cfg.max_moves:
            self._start_move()
        else:
            alive = [i for i in self.imps if i.alive]
            if not alive:
                return
            imp = self.rng.choice(alive) if len(alive) < len(self.imps) else self.rng.choice(self.imps)
            # Devices mostly keep working on what they have mapped: bias towards it.
            mapped = [b for b, a in imp.atts.items() if a.state == "mapped" and a.job is None]
            if mapped and self.rng.random() < 0.7:
                self._importer_action(imp, self.rng.choice(mapped))
            else:
                self._importer_action(imp, self.rng.choice(list(self.bufs)))

    def _shutdown(self) -> Iterator[Event]:
        self._emit("deploy", "workload_stop")
        while self.moves or self._ends:
            self._advance()
            for mv in list(self.moves):
                try:
                    next(mv)
                except StopIteration:
                    self.moves.remove(mv)
            yield from self._drain()
        if self.cfg.final_content:
            self._final_content()
        for imp in self.imps:
            if not imp.alive:
                continue
            for b, att in sorted(imp.atts.items()):
                self._advance()
                if att.state != "none":
                    self._unmap(imp, b, att)
                self._detach(imp, b, att)
            self._tick()
            self._emit(imp.name, "service_stop", reason="done", jobs=imp.next_job - 1)
            yield from self._drain()
        self._tick()
        self._emit("exporter", "service_stop", reason="done")
        self._tick()
        self._emit("deploy", "run_stop")
        yield from self._drain()

    # ------------------------------------------------------------------ importer side

    def _request(self, imp: _Imp, op: str, fields: dict[str, Any], served: Callable[[], None]) -> tuple[int, int]:
        rid = imp.next_req
        imp.next_req += 1
        sent = self.t
        fault = None
        if self.cfg.msg_fault_prob and self.rng.random() < self.cfg.msg_fault_prob:
            fault = self.rng.choice(("drop", "dup", "delay"))
            extra = {"ms": 1.0} if fault == "delay" else {}
            self._emit(imp.name, "fault", kind=fault, target=imp.name, op=op, id=rid, **extra)
            if fault == "drop":
                self._tick(50_000, 100_000)
                self._emit(imp.name, "retry", op=op, id=rid, attempt=2)
        self._tick()
        self._emit("exporter", "op_received", op=op, id=rid, peer=imp.name)
        served()
        self._emit("exporter", "op_answered", op=op, id=rid, peer=imp.name, ok=True)
        if fault == "dup":
            self._emit("exporter", "dedup", op=op, id=rid, peer=imp.name)
        self._tick()
        return rid, self.t - sent

    def _importer_action(self, imp: _Imp, b: int) -> None:
        buf = self.bufs[b]
        att = imp.atts.get(b)
        if att is None:
            att = _Att(self.next_att)
            self.next_att += 1
            rid, _ = self._request(imp, "attach", {}, lambda: self._emit(
                "exporter", "attach", importer=imp.name, buffer=b, attachment=att.id))
            imp.atts[b] = att
            self._emit(imp.name, "attach", id=rid, buffer=b, attachment=att.id)
            return
        if att.job is not None:
            return  # one job per importer and buffer at a time: wait for it
        if att.state == "mapped":
            if self.rng.random() < self.cfg.job_prob:
                self._dma(imp, buf, att)
            else:
                self._unmap(imp, b, att)
        elif buf.moving is None:  # the map waits while the buffer moves (reservation lock)
            if att.state == "none" and self.rng.random() < 0.05:
                self._detach(imp, b, att)
            else:
                self._map(imp, buf, att)
        elif att.state == "invalid":
            self._unmap(imp, b, att)

    def _map(self, imp: _Imp, buf: _Buf, att: _Att) -> None:
        moved = att.gen is not None and att.gen != buf.gen
        rid, lat = self._request(imp, "map", {}, lambda: self._emit(
            "exporter", "map_served", id=imp.next_req - 1, importer=imp.name, buffer=buf.id,
            attachment=att.id, **self._place(buf), moved=moved, deferred_ns=0))
        reused = att.gen == buf.gen and att.state == "none" and self.rng.random() < 0.5
        if not reused:
            self._emit(imp.name, "iommu_program", buffer=buf.id, attachment=att.id, **self._place(buf))
        self._emit(imp.name, "map", id=rid, buffer=buf.id, attachment=att.id, **self._place(buf),
                   latency_ns=lat, reused=reused, moved=moved)
        att.state, att.gen = "mapped", buf.gen

    def _unmap(self, imp: _Imp, b: int, att: _Att) -> None:
        buf = self.bufs[b]
        rid, lat = self._request(imp, "unmap", {}, lambda: self._emit(
            "exporter", "unmap_served", importer=imp.name, buffer=b, attachment=att.id, will_move=False))
        place = {"heap": buf.heap, "offset": buf.offset, "size": self.cfg.buffer_size, "gen": att.gen}
        self._emit(imp.name, "unmap", id=rid, buffer=b, attachment=att.id, **place, latency_ns=lat,
                   kept_iommu=False, will_move=False)
        self._emit(imp.name, "iommu_teardown", buffer=b, attachment=att.id, **place)
        att.state = "none"

    def _detach(self, imp: _Imp, b: int, att: _Att) -> None:
        rid, _ = self._request(imp, "detach", {}, lambda: self._emit(
            "exporter", "detach", importer=imp.name, buffer=b, attachment=att.id))
        self._emit(imp.name, "detach", id=rid, buffer=b, attachment=att.id)
        del imp.atts[b]

    def _dma(self, imp: _Imp, buf: _Buf, att: _Att) -> None:
        jid = imp.next_job
        imp.next_job += 1
        access = "write" if self.rng.random() < self.cfg.write_prob else "read"
        fields = {"job": jid, "buffer": buf.id, "attachment": att.id, "access": access,
                  "heap": buf.heap, "offset": buf.offset, "size": self.cfg.buffer_size, "gen": att.gen}
        self._emit(imp.name, "dma_begin", **fields)
        att.job, att.access = jid, access
        rng = (buf.heap, buf.offset)

        def end() -> None:
            if att.job != jid or not imp.alive:
                return  # killed or paused: the job ends elsewhere, or never
            self._emit(imp.name, "dma_end", **fields, status="ok", bytes=self.cfg.buffer_size,
                       last_access_ns=self.t)
            self._emit(imp.name, "fence_signal", buffer=buf.id, usage=access.upper(), seq=jid, job=jid)
            att.job = None
            if access == "write":
                self.mem[rng] = [(buf.id, imp.index, jid)] * self.lines
                self.last_writer[buf.id] = (imp.index, jid)

        self._end_seq += 1
        heapq.heappush(self._ends, (self.t + self.rng.randint(20_000, 1_500_000), self._end_seq, end))

    # ------------------------------------------------------------------ faults

    def _later(self, dt: int, fn: Callable[[], None]) -> None:
        self._end_seq += 1
        heapq.heappush(self._ends, (self.t + dt, self._end_seq, fn))

    def _write_in_flight(self, imp: _Imp) -> None:
        """Give the importer a write job in flight, if it has a mapping free for one."""
        if any(a.job is not None for a in imp.atts.values()):
            return
        for b, att in sorted(imp.atts.items()):
            if att.state == "mapped" and self.bufs[b].moving is None:
                saved = self.cfg.write_prob
                self.cfg.write_prob = 1.0
                try:
                    self._dma(imp, self.bufs[b], att)
                finally:
                    self.cfg.write_prob = saved
                return

    def _partial_write(self, imp: _Imp, att: _Att, b: int) -> dict[str, Any]:
        """The job in flight on `att` stops half way: a write has stamped half its lines."""
        buf = self.bufs[b]
        rng = (buf.heap, buf.offset)
        half = self.lines // 2
        if att.access == "write":
            self.mem[rng][:half] = [(b, imp.index, att.job or 0)] * half  # type: ignore[index]
        return {"job": att.job, "buffer": b, "attachment": att.id, "access": att.access, "heap": buf.heap,
                "offset": buf.offset, "size": self.cfg.buffer_size, "gen": att.gen}

    def _kill(self, imp: _Imp) -> None:
        self._write_in_flight(imp)
        self._tick()
        kind = "restart" if self.cfg.restart_after is not None else "kill"
        self._emit("deploy", "fault", kind=kind, target=imp.name, at=0.0)
        for b, att in imp.atts.items():
            if att.job is not None:
                self._partial_write(imp, att, b)
        imp.alive = False
        self._tick(100, 1_000)
        self._emit("deploy", "service_died", name=imp.name, pid=1000 + imp.index + 100 * imp.incarnation,
                   how="killed by fault")
        inc = imp.incarnation
        self._later(self.cfg.lease_ns, lambda: self._lease_expired(imp, "lease expired", inc))

    def _lease_expired(self, imp: _Imp, reason: str, inc: int) -> None:
        """The exporter's side: revoke everything the silent importer held, force its fences, and
        move the buffers its jobs were on (nothing holds them any more)."""
        if imp.lost or imp.incarnation != inc:
            return
        imp.lost = True
        self._emit("exporter", "importer_lost", importer=imp.name, slot=imp.index, reason=reason)
        busy = []
        for b, att in sorted(imp.atts.items()):
            self._emit("exporter", "attachment_revoked", importer=imp.name, buffer=b, attachment=att.id,
                       reason=reason, was_mapped=att.state != "none")
            if att.job is not None:
                self._emit("exporter", "fence_signal", buffer=b, usage=att.access.upper(), seq=att.job, move=None,
                           importer=imp.name, error="lease expired", forced=True)
                busy.append(b)
                att.job = None
        imp.atts = {}
        for b in busy:
            buf = self.bufs[b]
            if buf.moving is None:
                self._start_move(buf)

    def _restart(self, imp: _Imp) -> None:
        self._lease_expired(imp, "restarted", imp.incarnation)  # if its lease had not run out yet
        imp.lost = False
        imp.incarnation += 1
        imp.alive = True
        imp.next_job = (imp.incarnation << 24) + 1
        imp.atts = {}
        self._tick()
        pid = 1000 + imp.index + 100 * imp.incarnation
        self._emit("deploy", "service_restarted", name=imp.name, pid=pid, incarnation=imp.incarnation)
        self._tick()
        self._emit(imp.name, "service_start", index=imp.index, strategy=self.cfg.strategy,
                   endpoint="ipc://synth", incarnation=imp.incarnation)
        self._tick()
        self._emit("exporter", "hello", importer=imp.name, slot=imp.index, peer_pid=pid)

    def _pause(self, imp: _Imp) -> None:
        self._write_in_flight(imp)
        self._tick()
        self._emit("deploy", "fault", kind="pause", target=imp.name, at=0.0, **{"for": 1.0})
        paused_at = self.t
        for b, att in imp.atts.items():
            if att.job is not None:
                imp.stalled.append((att, self._partial_write(imp, att, b), paused_at))
        imp.alive = False

        def expired() -> None:
            moved = [self.bufs[f["buffer"]] for _, f, _ in imp.stalled]
            self._lease_expired(imp, "lease expired", imp.incarnation)
            self._later(self.cfg.lease_ns // 2, lambda: self._resume(imp, paused_at, moved))

        self._later(self.cfg.lease_ns, expired)

    def _resume(self, imp: _Imp, paused_at: int, moved: list[_Buf]) -> None:
        if any(b.moving is not None for b in moved):  # resume once the exporter has moved them
            self._later(50_000, lambda: self._resume(imp, paused_at, moved))
            return
        self._emit("deploy", "fault", kind="resume", target=imp.name, at=1.0)
        imp.alive = True
        imp.lost = False
        self._tick()
        self._emit(imp.name, "lease_expired", since_ns=self.t - paused_at)
        for _att, f, last in imp.stalled:
            self._emit(imp.name, "dma_end", **f, status="aborted", bytes=self.cfg.buffer_size // 2,
                       last_access_ns=last)
            self._emit(imp.name, "fence_signal", buffer=f["buffer"], usage=f["access"].upper(), seq=f["job"],
                       job=f["job"])
        imp.stalled = []
        self._tick()
        self._emit(imp.name, "rejoin", reason="lease expired")
        self._tick()
        self._emit("exporter", "hello", importer=imp.name, slot=imp.index, peer_pid=1000 + imp.index)

    def _rogue(self, imp: _Imp) -> None:
        """Unmap a buffer, keep writing its old range (rogue), and have another buffer moved there."""
        cands = [b for b, a in sorted(imp.atts.items())
                 if a.state == "mapped" and a.job is None and self.bufs[b].moving is None]
        if not cands:
            return
        b = cands[0]
        att, buf = imp.atts[b], self.bufs[b]
        gen = att.gen
        self._unmap(imp, b, att)
        jid = imp.next_job
        imp.next_job += 1
        fields = {"job": jid, "buffer": b, "attachment": att.id, "access": "write", "heap": buf.heap,
                  "offset": buf.offset, "size": self.cfg.buffer_size, "gen": gen}
        self._tick()
        self._emit(imp.name, "fault", kind="rogue", target=imp.name, buffer=b, job=jid, ms=20.0)
        self._emit(imp.name, "dma_begin", **fields, rogue=True)
        self.moves.append(self._rogue_chain(imp, buf, fields))

    def _rogue_chain(self, imp: _Imp, buf: _Buf, fields: dict[str, Any]) -> Generator[None, None, None]:
        home = (buf.heap, buf.offset)
        other = "sys" if buf.heap == "vram" else "vram"
        dst = self._alloc(other)
        if dst is not None:
            mv = self._move(buf, other, dst, "evict")
            next(mv)
            self.moves.append(mv)
            while buf.moving is not None:
                yield
            tenant = next((c for c in self.bufs.values() if c.heap == other and c.moving is None
                           and c.id != buf.id), None)
            if tenant is not None and home[1] // self.cfg.buffer_size in self.free_slots[home[0]]:
                self.free_slots[home[0]].remove(home[1] // self.cfg.buffer_size)
                mv = self._move(tenant, home[0], home[1], "promote")
                next(mv)
                self.moves.append(mv)
                while tenant.moving is not None:
                    yield
        self._tick()
        self._emit(imp.name, "dma_end", **fields, rogue=True, status="ok", bytes=self.cfg.buffer_size,
                   last_access_ns=self.t)
        self.mem[home] = [(buf.id, imp.index, fields["job"])] * self.lines

    def _final_content(self) -> None:
        tamper = dict(self.cfg.tamper)
        for b, buf in sorted(self.bufs.items()):
            lines = list(self.mem.get((buf.heap, buf.offset), []))
            how = tamper.get(b)
            if how == "lose":
                lw = self.last_writer.get(b)
                for i, st in enumerate(lines[: self.lines // 2]):
                    if lw is not None and st == (b, lw[0], lw[1]):
                        lines[i] = (b, 0, 0)
            elif how == "foreign":
                other = (b + 1) % max(2, len(self.bufs))
                lines[:3] = [(other, 0, 0)] * 3
            counts: dict[tuple[int, int, int], int] = {}
            for st in lines:
                counts[st] = counts.get(st, 0) + 1
            self._tick(100, 1_000)
            self._emit("exporter", "final_content", buffer=b, heap=buf.heap, offset=buf.offset,
                       size=self.cfg.buffer_size, gen=buf.gen,
                       stamps=[[sb, w, sq, n] for (sb, w, sq), n in sorted(counts.items())])

    # ------------------------------------------------------------------ exporter side

    def _users(self, b: int) -> list[tuple[_Imp, _Att]]:
        return [(imp, imp.atts[b]) for imp in self.imps if b in imp.atts]

    def _start_move(self, forced: _Buf | None = None) -> None:
        idle = [b for b in self.bufs.values() if b.moving is None]
        if not idle:
            return
        buf = forced if forced is not None else self.rng.choice(idle)
        if self.cfg.style == "idle" and forced is None:
            unused = [b for b in idle
                      if all(a.state == "none" and a.job is None for _, a in self._users(b.id))]
            if not unused:
                self._emit("exporter", "move_refused", buffer=buf.id, from_gen=buf.gen, to_gen=buf.gen + 1,
                           reason="mapped", to_heap="sys" if buf.heap == "vram" else "vram")
                return
            buf = self.rng.choice(unused)
        to_heap = "sys" if buf.heap == "vram" else "vram"
        reason = "evict" if to_heap == "sys" else "promote"
        dst = self._alloc(to_heap)
        if dst is None:
            self._emit("exporter", "move_refused", buffer=buf.id, from_gen=buf.gen, to_gen=buf.gen + 1,
                       reason="no_space", to_heap=to_heap)
            return
        self.moves.append(self._move(buf, to_heap, dst, reason))
        next(self.moves[-1])

    def _move(self, buf: _Buf, to_heap: str, dst: int, reason: str) -> Generator[None, None, None]:
        cfg = self.cfg
        m = self.next_move
        self.next_move += 1
        began = self.t
        src: dict[str, Any] = self._place(buf)
        to: dict[str, Any] = {"heap": to_heap, "offset": dst, "size": cfg.buffer_size, "gen": buf.gen + 1}
        buf.moving = m
        self._emit("exporter", "resv_lock", buffer=buf.id, move=m)
        self._emit("exporter", "move_begin", buffer=buf.id, move=m, reason=reason,
                   **{"from": src, "to": to}, from_gen=src["gen"], to_gen=to["gen"])
        yield
        notified: list[tuple[_Imp, _Att, int, int]] = []
        for imp, att in self._users(buf.id):
            if att.state != "mapped" or not imp.alive:
                continue
            rid = self.next_exp_req
            self.next_exp_req += 1
            self._emit("exporter", "move_notify_sent", id=rid, buffer=buf.id, move=m, importer=imp.name,
                       attachment=att.id, gen=src["gen"])
            notified.append((imp, att, rid, self.t))
            yield
        for imp, att, rid, sent in notified:
            if not imp.alive:
                self._emit("exporter", "ack_timeout", buffer=buf.id, move=m, importers=[imp.name],
                           attachments=[att.id])
                continue
            self._emit(imp.name, "move_notify_received", id=rid, buffer=buf.id, attachment=att.id,
                       move=m, gen=src["gen"], state=att.state)
            if att.state == "mapped":
                self._emit(imp.name, "invalidate", buffer=buf.id, attachment=att.id, gen=att.gen)
                att.state = "invalid"
            self._tick()
            self._emit("exporter", "move_notify_returned", buffer=buf.id, move=m, importer=imp.name,
                       attachment=att.id)
            aid = imp.next_req
            imp.next_req += 1
            self._emit(imp.name, "ack_sent", id=aid, buffer=buf.id, attachment=att.id, move=m)
            yield
            self._emit("exporter", "ack", id=aid, buffer=buf.id, move=m, importer=imp.name,
                       attachment=att.id, latency_ns=self.t - sent)
        fences = [{"importer": imp.name, "slot": imp.index, "seq": a.job, "usage": a.access.upper()}
                  for imp, a in self._users(buf.id) if a.job is not None]
        self._emit("exporter", "fence_wait_begin", buffer=buf.id, move=m, usage="BOOKKEEP", fences=fences)
        waited_from = self.t
        while any(a.job is not None for _, a in self._users(buf.id)):
            yield
        self._emit("exporter", "fence_wait_end", buffer=buf.id, move=m, usage="BOOKKEEP",
                   waited_ns=self.t - waited_from, forced=[])
        self._emit("exporter", "copy_begin", buffer=buf.id, move=m, from_gen=src["gen"], to_gen=to["gen"])
        for _ in range(self.rng.randint(1, 3)):
            yield
        self._emit("exporter", "copy_end", buffer=buf.id, move=m, from_gen=src["gen"], to_gen=to["gen"],
                   bytes=cfg.buffer_size)
        self.mem[(to_heap, dst)] = list(self.mem.get((src["heap"], src["offset"]), []))
        self._emit("exporter", "fence_signal", buffer=buf.id, usage="KERNEL", seq=m, move=m)
        buf.heap, buf.offset, buf.gen = to_heap, dst, src["gen"] + 1
        yield
        self._emit("exporter", "free", buffer=buf.id, move=m, from_gen=src["gen"], to_gen=to["gen"],
                   heap=src["heap"], offset=src["offset"], size=cfg.buffer_size)
        self._release(src["heap"], src["offset"])
        self._tick(100, 2_000)
        self._emit("exporter", "move_end", buffer=buf.id, move=m, from_gen=src["gen"], to_gen=to["gen"],
                   latency_ns=self.t - began)
        self._emit("exporter", "resv_unlock", buffer=buf.id, move=m)
        buf.moving = None


def generate(cfg: SynthConfig) -> list[Event]:
    return list(SerialSchedule(cfg).events())


def write_events_dir(events: Iterator[Event] | list[Event], events_dir: Path) -> int:
    """Write events as a run's `events/<service>.jsonl` files; returns the number written."""
    events_dir = Path(events_dir)
    events_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    n = 0
    try:
        for ev in events:
            fh = files.get(ev["svc"])
            if fh is None:
                fh = files[ev["svc"]] = open(events_dir / f"{ev['svc']}.jsonl", "wb", buffering=1 << 20)
            fh.write(dumps(ev) + b"\n")
            n += 1
    finally:
        for fh in files.values():
            fh.close()
    return n


def write_history(events: Iterator[Event] | list[Event], path: Path) -> int:
    """Write events, already in t_ns order, as one history file; returns the number written."""
    n = 0
    with open(path, "wb", buffering=1 << 20) as fh:
        for ev in events:
            fh.write(dumps(ev) + b"\n")
            n += 1
    return n
