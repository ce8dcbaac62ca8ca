"""Shared helpers for the checker's tests: a tiny builder for hand-written histories, and
whole histories recorded from the simulator (the real services on virtual time)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Iterable

from checker import judge_history
from checker.model import RACE_KINDS

BUF_SIZE = 0x10000


class H:
    """A history under construction: events in any order, written sorted by t_ns (stable)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def ev(self, t: int, svc: str, event: str, **fields: Any) -> "H":
        self.events.append({"t_ns": t, "svc": svc, "pid": 100, "event": event, **fields})
        return self

    # --- exporter -------------------------------------------------------------------------

    def created(self, t: int, buffer: int = 0, heap: str = "vram", offset: int = 0) -> "H":
        return self.ev(t, "exporter", "buffer_created", buffer=buffer, heap=heap, offset=offset,
                       size=BUF_SIZE, gen=1)

    def move(self, buffer: int, from_gen: int, move: int, *, begin: int, copy_begin: int | None = None,
             copy_end: int | None = None, free: int | None = None, end: int | None = None,
             src: tuple[str, int] = ("vram", 0), dst: tuple[str, int] = ("sys", 0x1000)) -> "H":
        to_gen = from_gen + 1
        place = lambda p, g: {"heap": p[0], "offset": p[1], "size": BUF_SIZE, "gen": g}  # noqa: E731
        self.ev(begin, "exporter", "move_begin", buffer=buffer, move=move, reason="evict",
                **{"from": place(src, from_gen), "to": place(dst, to_gen)}, from_gen=from_gen, to_gen=to_gen)
        ids = dict(buffer=buffer, move=move, from_gen=from_gen, to_gen=to_gen)
        if copy_begin is not None:
            self.ev(copy_begin, "exporter", "copy_begin", **ids)
        if copy_end is not None:
            self.ev(copy_end, "exporter", "copy_end", **ids, bytes=BUF_SIZE)
        if free is not None:
            self.ev(free, "exporter", "free", **ids, heap=src[0], offset=src[1], size=BUF_SIZE)
        if end is not None:
            self.ev(end, "exporter", "move_end", **ids, latency_ns=end - begin)
        return self

    # --- importer -------------------------------------------------------------------------

    def attach(self, t: int, svc: str = "importer-1", buffer: int = 0, att: int = 1) -> "H":
        return self.ev(t, svc, "attach", id=t, buffer=buffer, attachment=att)

    def map(self, t: int, svc: str = "importer-1", buffer: int = 0, att: int = 1, gen: int = 1,
            heap: str = "vram", offset: int = 0, latency_ns: int = 1000, reused: bool = False) -> "H":
        return self.ev(t, svc, "map", id=t, buffer=buffer, attachment=att, heap=heap, offset=offset,
                       size=BUF_SIZE, gen=gen, latency_ns=latency_ns, reused=reused, moved=False)

    def unmap(self, t: int, svc: str = "importer-1", buffer: int = 0, att: int = 1, gen: int = 1,
              latency_ns: int = 1000) -> "H":
        return self.ev(t, svc, "unmap", id=t, buffer=buffer, attachment=att, heap="vram", offset=0,
                       size=BUF_SIZE, gen=gen, latency_ns=latency_ns, kept_iommu=True, will_move=False)

    def invalidate(self, t: int, svc: str = "importer-1", buffer: int = 0, att: int = 1, gen: int = 1) -> "H":
        return self.ev(t, svc, "invalidate", buffer=buffer, attachment=att, gen=gen)

    def job(self, job: int, access: str, begin: int, end: int | None, *, svc: str = "importer-1",
            buffer: int = 0, att: int = 1, gen: int = 1, heap: str = "vram", offset: int = 0) -> "H":
        f = dict(job=job, buffer=buffer, attachment=att, access=access, heap=heap, offset=offset,
                 size=BUF_SIZE, gen=gen)
        self.ev(begin, svc, "dma_begin", **f)
        if end is not None:
            self.ev(end, svc, "dma_end", **f, status="ok", bytes=BUF_SIZE)
        return self

    # --- output ---------------------------------------------------------------------------

    def sorted_events(self) -> list[dict[str, Any]]:
        return sorted(self.events, key=lambda e: e["t_ns"])

    def write(self, path: Path) -> Path:
        write_history(self.sorted_events(), path)
        return path

    def judge(self, tmp_path: Path, name: str = "history.jsonl") -> dict[str, Any]:
        return judge_history(self.write(tmp_path / name))


def mapped(h: H | None = None, *, t: int = 10, svc: str = "importer-1", buffer: int = 0, att: int = 1) -> H:
    """Buffer `buffer` created in vram at t=0 (gen 1), attached and mapped by `svc` at t."""
    h = h or H()
    if not any(e["event"] == "buffer_created" and e["buffer"] == buffer for e in h.events):
        h.created(0, buffer=buffer)
    return h.attach(t - 5, svc=svc, buffer=buffer, att=att).map(t, svc=svc, buffer=buffer, att=att)


def race_kinds(report: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in report["races"].items() if k in RACE_KINDS and v}


def crossing_jobs(events: list[dict[str, Any]]) -> set[tuple[str, int]]:
    """The (importer, job) of every driver's job on a generation whose move had begun before
    the exporter served the job's map: the map reply and the move's move_notify crossed."""
    begun = {(e["buffer"], e["from_gen"]): e["t_ns"] for e in events if e["event"] == "move_begin"}
    served = {(e["importer"], e["id"]): e["t_ns"] for e in events if e["event"] == "map_served"}
    mapped: dict[tuple[str, int], dict[str, Any]] = {}
    crossing: set[tuple[str, int]] = set()
    for e in events:
        if e["event"] == "map":
            mapped[(e["svc"], e["attachment"])] = e
        elif e["event"] == "dma_begin" and not e.get("rogue") and (e["buffer"], e["gen"]) in begun:
            m = mapped[(e["svc"], e["attachment"])]
            if served[(e["svc"], m["id"])] > begun[(e["buffer"], e["gen"])]:
                crossing.add((e["svc"], e["job"]))
    return crossing


# --- whole histories from the simulator ---------------------------------------------------------

# A short run of the real services on virtual time: small enough to cost a fraction of a second,
# busy enough (move_rate) that every buffer moves several times.
SIM_RUN = dict(strategy="resv-fence", importers=3, buffers=4, duration=0.5, move_rate=100.0)


def simulated_lines(seed: int, faults: tuple[str, ...] = (), **kw: Any) -> list[bytes]:
    """The history lines of one simulated run (SIM_RUN updated by `kw`), not cached."""
    from deploy.options import RunParams
    from runtime.faults import parse_cli
    from sim.run import simulate_in_memory

    params = RunParams(**{**SIM_RUN, **dict(kw), "seed": seed, "faults": tuple(parse_cli(f) for f in faults)})
    r = simulate_in_memory(params, judge=False)
    assert not r.outcome.crashes and r.outcome.error is None, (r.outcome.crashes, r.outcome.error)
    return r.history


@functools.lru_cache(maxsize=16)
def _simulated_lines(seed: int, faults: tuple[str, ...], kw: tuple[tuple[str, Any], ...]) -> tuple[bytes, ...]:
    return tuple(simulated_lines(seed, faults, **dict(kw)))


def simulated(seed: int = 1, *faults: str, **kw: Any) -> list[dict[str, Any]]:
    """The history of one simulated run (sim.run.simulate_in_memory: SIM_RUN, updated by `kw`,
    with `faults` in the CLI's syntax), merged as history.jsonl is, as fresh event dicts: a test
    may change them. Runs are cached by their parameters: the same seed gives the same history."""
    return [json.loads(line) for line in _simulated_lines(seed, faults, tuple(sorted(kw.items())))]


def write_history(events: Iterable[dict[str, Any]], path: Path) -> int:
    """Events, already in history order, as one history file; returns the number written."""
    n = 0
    with open(path, "w") as fh:
        for e in events:
            fh.write(json.dumps(e) + "\n")
            n += 1
    return n


def write_events_dir(events: Iterable[dict[str, Any]], events_dir: Path) -> int:
    """Events as a run's events/<service>.jsonl files, each service's in its order; returns the
    number written."""
    by_svc: dict[str, list[str]] = {}
    for e in events:
        by_svc.setdefault(e["svc"], []).append(json.dumps(e))
    events_dir.mkdir(parents=True, exist_ok=True)
    for svc, lines in by_svc.items():
        (events_dir / f"{svc}.jsonl").write_text("\n".join(lines) + "\n")
    return sum(map(len, by_svc.values()))
