"""A guide built from a real run's history: replay a real race in the simulator.

`dmabuf-emu replay RUN_DIR --race N` (deploy/sim_cmd.py) reads a real run's history.jsonl and
answers the simulated run's decisions from it where it can:

- workload draws (stream `workload:<index>:0`): each importer's jobs in the order of their
  dma_begin, its buffer (the `choice` among the idle buffers, which the guide reconstructs as
  the granted buffers less that importer's jobs still in flight at the real dma_begin), its access
  (the `chance` of a write), its duration (the `random` of the uniform, from dma_end - dma_begin),
  and each think time (the `random` before a job, from the gap between the importer's previous
  dma_end and that job's dma_begin);
- network delays (stream `net:<sender>`): the median real delay of what that sender sent
  (move_notify_sent -> move_notify_received for the exporter, map_request -> map_served for an
  importer), as the exponential's u, clamped to the simulator's range (sim/network.py);
- steps: the actor whose next expected real event (its next job's dma_begin, relative to the
  workload's start) comes first; actors with no expected event are left to the chooser.

The memory manager's moves are not decisions in the simulator: the pressure tick is periodic
(move_rate) and picks its buffer from the exporter's state, so the guide cannot steer them; they
recur only as far as that state does. Measured (5 real move-notify runs, 4 importers, 1 s, seeds
1..5): race 0 recurred on the same buffer and generation in 1 or 2 of 5, not the 4 of 5 asked.
Why: the simulated run does ~2.5x the real run's jobs (real map round trips take ~10 ms under
load, simulated ones ~0.2 ms, and a delay is at most 2 ms: network.py), so past the first moves
the exporter picks other buffers (already move 2 differs: real promoted buffer 5, simulated 6)
and the generations no longer line up.
The real t_ns are CLOCK_MONOTONIC: every time here is made relative to workload_start.
A decision the real history does not answer is left to the chooser and counted as `made`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sim.network import MAX_NS, MEAN_NS, MIN_NS
from sim.scheduler import CHANCE, CHOICE, RANDOM, STEP, Request

ALMOST_ONE = math.nextafter(1.0, 0.0)


@dataclass
class RealJob:
    job: int
    buffer: int
    access: str
    begin_ns: int                   # relative to workload_start
    duration_ns: int
    think_ns: int | None            # gap since this importer's previous dma_end (None: the first jobs)
    busy: frozenset[int]            # this importer's buffers in flight at begin_ns


@dataclass
class _Cursor:
    jobs: list[RealJob]
    next: int = 0                   # the next job a choice draws
    pending: str = ""               # "chance" / "duration" of job next-1 still to draw


@dataclass
class RealGuide:
    """Guide (sim/scheduler.py) answering from a real history. See the module docstring."""

    t0_ns: int
    buffers: int
    dma_ms: float
    think_ms: float
    jobs: dict[int, list[RealJob]]                  # importer index -> its jobs in order
    net_u: dict[str, float]                         # sender -> u of its median delay
    _cursors: dict[str, _Cursor] = field(default_factory=dict)

    @classmethod
    def from_history(cls, path: Path, params: Any) -> "RealGuide":
        events = [orjson.loads(line) for line in open(path, "rb") if line.strip()]
        starts = [e["t_ns"] for e in events if e.get("event") == "workload_start"]
        if not starts:
            raise ValueError(f"{path} has no workload_start: the real run never started its workload")
        t0 = starts[0]
        begins: dict[tuple[str, int], dict] = {}
        per_svc: dict[str, list[tuple[dict, int]]] = {}
        sent: dict[tuple, int] = {}
        delays: dict[str, list[int]] = {}
        for e in events:
            ev, svc = e.get("event"), e.get("svc", "")
            if ev == "dma_begin":
                begins[(svc, e["job"])] = e
            elif ev == "dma_end" and (svc, e["job"]) in begins:
                b = begins[(svc, e["job"])]
                per_svc.setdefault(svc, []).append((b, e["t_ns"]))
            elif ev == "move_notify_sent":
                sent[("mn", e.get("importer"), e.get("id"))] = e["t_ns"]
            elif ev == "move_notify_received":
                t = sent.get(("mn", svc, e.get("id")))
                if t is not None:
                    delays.setdefault("exporter", []).append(e["t_ns"] - t)
            elif ev == "map_request":
                sent[("map", svc, e.get("id"))] = e["t_ns"]
            elif ev == "map" and "latency_ns" in e:
                # the importer's map event carries its latency: request at t_ns - latency_ns
                sent[("map", svc, e.get("id"))] = e["t_ns"] - e["latency_ns"]
        for e in events:                               # map_served comes after the request
            if e.get("event") == "map_served":
                t = sent.get(("map", e.get("importer"), e.get("id")))
                if t is not None and e["t_ns"] >= t:
                    delays.setdefault(e.get("importer", ""), []).append(e["t_ns"] - t)
        jobs: dict[int, list[RealJob]] = {}
        for svc, items in per_svc.items():
            if not svc.startswith("importer-"):
                continue
            index = int(svc.split("-", 1)[1])
            items.sort(key=lambda item: item[0]["t_ns"])
            out: list[RealJob] = []
            for n, (b, end) in enumerate(items):
                earlier_ends = [e2 for b2, e2 in items[:n] if e2 <= b["t_ns"]]
                busy = frozenset(b2["buffer"] for b2, e2 in items[:n] if e2 > b["t_ns"])
                think = b["t_ns"] - max(earlier_ends) if earlier_ends else None
                out.append(RealJob(b["job"], b["buffer"], b["access"], b["t_ns"] - t0, end - b["t_ns"], think, busy))
            jobs[index] = out
        net_u = {}
        for sender, ds in delays.items():
            d = min(MAX_NS, max(MIN_NS, int(statistics.median(ds))))
            net_u[sender] = min(ALMOST_ONE, max(0.0, 1.0 - math.exp(-(d - MIN_NS) / MEAN_NS)))
        return cls(t0, params.buffers, params.dma_ms, params.think_ms, jobs, net_u)

    # ------------------------------------------------------------------ Guide

    def suggest(self, request: Request) -> Any | None:
        if request.kind == STEP:
            return self._step(request)
        stream = request.stream
        if stream.startswith("net:"):
            u = self.net_u.get(stream[4:])
            return u if request.kind == RANDOM and u is not None else None
        if stream.startswith("workload:") and stream.endswith(":0"):
            index = int(stream.split(":")[1])
            cur = self._cursors.get(stream)
            if cur is None:
                cur = self._cursors[stream] = _Cursor(self.jobs.get(index, []))
            return self._workload(cur, request)
        return None

    def _workload(self, cur: _Cursor, request: Request) -> Any | None:
        if request.kind == CHOICE:
            cur.pending = ""
            if cur.next >= len(cur.jobs):
                return None
            job = cur.jobs[cur.next]
            cur.next += 1
            cur.pending = "chance"
            idle = [b for b in range(self.buffers) if b not in job.busy]
            if len(idle) == request.n and job.buffer in idle:
                return idle.index(job.buffer)
            return None
        if request.kind == CHANCE and cur.pending == "chance":
            cur.pending = "duration"
            return cur.jobs[cur.next - 1].access == "write"
        if request.kind == RANDOM and cur.pending == "duration":
            cur.pending = ""
            x = cur.jobs[cur.next - 1].duration_ns / 1e6 / self.dma_ms - 0.5
            return min(ALMOST_ONE, max(0.0, x))
        if request.kind == RANDOM:                      # a think time, before job `next`
            if cur.next >= len(cur.jobs) or cur.jobs[cur.next].think_ns is None or self.think_ms <= 0:
                return None
            x = cur.jobs[cur.next].think_ns / 1e6 / (2 * self.think_ms)
            return min(ALMOST_ONE, max(0.0, x))
        return None

    def _step(self, request: Request) -> int | None:
        best: tuple[int, int] | None = None
        for k, actor in enumerate(request.options or ()):
            t = self._next_expected(actor)
            if t is not None and (best is None or t < best[0]):
                best = (t, k)
        return best[1] if best is not None else None

    def _next_expected(self, actor: str) -> int | None:
        """The real time (relative to workload_start) of the actor's next job, if it is an importer."""
        if not actor.startswith("importer-"):
            return None
        try:
            index = int(actor.split("-", 1)[1].split(".")[0])
        except ValueError:
            return None
        cur = self._cursors.get(f"workload:{index}:0")
        jobs = self.jobs.get(index, [])
        n = cur.next if cur else 0
        return jobs[n].begin_ns if n < len(jobs) else None


def witness_key(kind: str, witness: dict[str, Any]) -> tuple[str, Any, Any]:
    """What "the same race" means: its kind, its buffer and the generation the access used."""
    job = witness.get("job") or {}
    return kind, job.get("buffer"), job.get("gen")


def all_races(history: Path) -> set[tuple[str, Any, Any]]:
    """Every race the checker finds in a history (report.json keeps only the first witnesses of
    each kind), as witness_key's (kind, buffer, gen)."""
    from checker.oracle import Oracle

    found: set[tuple[str, Any, Any]] = set()
    oracle = Oracle(on_race=lambda race: found.add((race.kind, race.job.buffer, race.job.gen)))
    with open(history, "rb") as f:
        oracle.run(f)
    return found
