"""Synthetic histories of a correct (race-free) serial schedule, for the benchmark and the tests.

This is not the emulator: it is a small, single-threaded model of what a correct run's history
looks like, so the oracle can be exercised on long, realistic histories without starting
processes. Rules it keeps (each a reason the oracle must find no race in its output):
- An importer DMAs only through a usable mapping (mapped, not invalidated), at most one job per
  importer and buffer at a time, on the generation it was handed at map time.
- A map waits while its buffer is moving (the reservation lock), so a mapping always names a
  generation whose copy has ended.
- A move (`fenced` style): move_begin, a move_notify to every importer mapping the buffer, which
  invalidates its mapping (no new job on it) and acks; then the exporter waits until every job on
  the buffer has ended (fence wait), copies (copy_begin..copy_end, kernel fence), switches, frees
  the old range and ends the move. In `idle` style it only moves buffers nobody has mapped and
  refuses the others (`mapped`).
- Freed ranges are reused, a destination heap without room refuses the move (`no_space`).
- Time advances by a random step per action and sometimes not at all, so different services tie
  on t_ns (the oracle must judge ties as "not a race"). Each service's own events are in order.
Events carry the fields of docs/events.md (plus the request-id flows), so the trace writer has
messages to draw.
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


@dataclass
class _Imp:
    index: int
    atts: dict[int, _Att] = field(default_factory=dict)
    next_req: int = 1
    next_job: int = 1

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
                           "move_rate": cfg.move_prob, "transport": "synthetic", "hint_policy": None})
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
        if self.rng.random() < self.cfg.move_prob and len(self.moves) < self.cfg.max_moves:
            self._start_move()
        else:
            imp = self.rng.choice(self.imps)
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
        for imp in self.imps:
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
        self._tick()
        self._emit("exporter", "op_received", op=op, id=rid, peer=imp.name)
        served()
        self._emit("exporter", "op_answered", op=op, id=rid, peer=imp.name, ok=True)
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
        att.job = jid

        def end() -> None:
            self._emit(imp.name, "dma_end", **fields, status="ok", bytes=self.cfg.buffer_size)
            self._emit(imp.name, "fence_signal", buffer=buf.id, usage=access.upper(), seq=jid, job=jid)
            att.job = None

        self._end_seq += 1
        heapq.heappush(self._ends, (self.t + self.rng.randint(20_000, 1_500_000), self._end_seq, end))

    # ------------------------------------------------------------------ exporter side

    def _users(self, b: int) -> list[tuple[_Imp, _Att]]:
        return [(imp, imp.atts[b]) for imp in self.imps if b in imp.atts]

    def _start_move(self) -> None:
        idle = [b for b in self.bufs.values() if b.moving is None]
        if not idle:
            return
        buf = self.rng.choice(idle)
        if self.cfg.style == "idle":
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
        self._emit("exporter", "move_begin", buffer=buf.id, move=m, reason=reason,
                   **{"from": src, "to": to}, from_gen=src["gen"], to_gen=to["gen"])
        yield
        notified: list[tuple[_Imp, _Att, int, int]] = []
        for imp, att in self._users(buf.id):
            if att.state != "mapped":
                continue
            rid = self.next_exp_req
            self.next_exp_req += 1
            self._emit("exporter", "move_notify_sent", id=rid, buffer=buf.id, move=m, importer=imp.name,
                       attachment=att.id, gen=src["gen"])
            notified.append((imp, att, rid, self.t))
            yield
        for imp, att, rid, sent in notified:
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
        self._emit("exporter", "fence_wait_begin", buffer=buf.id, move=m, usage="BOOKKEEP")
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
        self._emit("exporter", "fence_signal", buffer=buf.id, usage="KERNEL", seq=m, move=m)
        buf.heap, buf.offset, buf.gen = to_heap, dst, src["gen"] + 1
        yield
        self._emit("exporter", "free", buffer=buf.id, move=m, from_gen=src["gen"], to_gen=to["gen"],
                   heap=src["heap"], offset=src["offset"], size=cfg.buffer_size)
        self._release(src["heap"], src["offset"])
        self._tick(100, 2_000)
        self._emit("exporter", "move_end", buffer=buf.id, move=m, from_gen=src["gen"], to_gen=to["gen"],
                   latency_ns=self.t - began)
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
