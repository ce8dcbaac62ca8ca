"""The history's front end (runtime/eventlog.py): structlog makes the same bytes as the hand-built
line, per EventLog and never from structlog's global configuration; the bench part that measures
it; and a SIGKILLed real service's history that ends with complete lines."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import structlog

from deploy import procs
from deploy.bench import BenchConfig, run_bench
from deploy.bench.eventlog import FIELDS, floor_emit
from deploy.control import ControlClient
from deploy.launcher import Deployment, down, up, wait_ready
from deploy.options import RunParams
from runtime import shm
from runtime.eventlog import EventLog, EventLogger


def _both(*calls: tuple[str, dict]) -> tuple[bytes, bytes]:
    ours, floor = io.BytesIO(), io.BytesIO()
    ticks = iter(range(100, 10_000))
    log = EventLog(None, "importer-2", pid=1002, clock=lambda: next(ticks), sink=ours)
    ticks2 = iter(range(100, 10_000))
    hand = floor_emit(floor.write, "importer-2", 1002, lambda: next(ticks2))
    for event, fields in calls:
        log.emit(event, **fields)
        hand(event, **fields)
    return ours.getvalue(), floor.getvalue()


def test_the_structlog_line_is_the_hand_built_line_byte_for_byte() -> None:
    ours, floor = _both(("map_served", FIELDS),
                        ("odd", {"path": Path("/x"), "none": None, "f": 0.1, "nested": {"a": [1, (2, 3)]}}),
                        ("service_died", {"name": "importer-1", "pid": 77, "how": "killed"}),  # pid overridden in place
                        ("t", {"t_ns": -1, "svc": "other"}))                                   # so are t_ns and svc
    assert ours == floor
    lines = [json.loads(x) for x in ours.splitlines()]
    assert list(lines[0]) == ["svc", "pid", *FIELDS, "event", "t_ns"]
    assert lines[2]["pid"] == 77 and list(lines[2])[:2] == ["svc", "pid"]
    assert lines[3]["t_ns"] == 103 and lines[3]["svc"] == "other"
    assert lines[1]["path"] == "/x"


def test_each_log_is_its_own_structlog_logger_whatever_the_global_configuration_says() -> None:
    a_sink, b_sink = io.BytesIO(), io.BytesIO()
    a = EventLog(None, "exporter", pid=1, clock=lambda: 5, sink=a_sink)
    structlog.configure(processors=[lambda logger, name, ed: "GLOBAL"])
    try:
        b = EventLog(None, "importer-1", pid=2, clock=lambda: 9, sink=b_sink)
        a.emit("x", n=1)
        b.emit("y", n=2)
        structlog.get_logger().msg("not ours")  # the global config's logger prints "GLOBAL"; ours do not see it
    finally:
        structlog.reset_defaults()
    assert isinstance(a.logger, EventLogger)
    assert a_sink.getvalue() == b'{"svc":"exporter","pid":1,"n":1,"event":"x","t_ns":5}\n'
    assert b_sink.getvalue() == b'{"svc":"importer-1","pid":2,"n":2,"event":"y","t_ns":9}\n'


def test_a_line_kept_in_memory_costs_its_size_not_orjsons_working_buffer() -> None:
    """The simulator keeps histories in memory (sim/run.py): a line straight from orjson.dumps
    holds about 4 KiB; the history's lines must hold their own size."""
    import tracemalloc

    kept: list[bytes] = []
    log = EventLog(None, "importer-1", pid=1001, clock=lambda: 1, sink=type("Keep", (), {"write": staticmethod(kept.append)})())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            log.emit("map_served", **{**FIELDS, "id": i})
        per_line = (tracemalloc.get_traced_memory()[0] - before) / 2000
    finally:
        tracemalloc.stop()
    assert per_line < 4 * len(kept[-1]), f"{per_line:.0f} bytes held per {len(kept[-1])}-byte line"


def test_a_file_log_is_flushed_per_line(tmp_path: Path) -> None:
    path = tmp_path / "events" / "exporter.jsonl"
    log = EventLog(path, "exporter", clock=lambda: 1)
    try:
        log.emit("a", k=1)
        assert path.read_bytes() == f'{{"svc":"exporter","pid":{os.getpid()},"k":1,"event":"a","t_ns":1}}\n'.encode()
    finally:
        log.close()


def test_the_bench_eventlog_part_reports_both_paths_and_their_ratio(tmp_path: Path) -> None:
    result = run_bench(BenchConfig(eventlog_reps=2, eventlog_events=200, parts=("eventlog",)), tmp_path)
    figs = result["figures"]
    assert set(figs) == {"eventlog_ns_per_event", "eventlog_floor_ns_per_event", "eventlog_ratio"}
    for f in figs.values():
        assert f["n"] == 2 and 0 < f["min"] <= f["median"] <= f["max"], f
    ours, floor, ratio = (figs[k]["values"] for k in ("eventlog_ns_per_event", "eventlog_floor_ns_per_event",
                                                      "eventlog_ratio"))
    assert all(abs(r - o / f) < 1e-3 * r for o, f, r in zip(ours, floor, ratio)), "the ratio is taken per repetition"
    verdict = {t["figure"]: t for t in result["targets"]}["eventlog_ratio"]
    assert verdict["target"] == "<= 2.5" and verdict["met"] in (True, False)
    assert "structlog line / hand-built line" in (tmp_path / "bench.md").read_text()


def _lines(path: Path, at_least: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        n = path.read_bytes().count(b"\n") if path.exists() else 0
        if n >= at_least or time.monotonic() > deadline:
            return n
        time.sleep(0.02)


def test_a_sigkilled_service_leaves_a_history_of_complete_lines(short_dir: Path) -> None:
    dep = up(RunParams(strategy="move-notify", importers=2, buffers=8), short_dir)
    import zmq
    ctx = zmq.Context()
    try:
        wait_ready(dep)
        for name, last in (("exporter", "service_start"), ("importer-1", "ready"), ("importer-2", "ready")):
            # a few hundred bytes each: on disk only because each line is flushed as it is written
            on_disk = [json.loads(x)["event"] for x in (short_dir / "events" / f"{name}.jsonl").read_bytes().splitlines()]
            assert last in on_disk, (name, on_disk)
        for info in dep.services:
            client = ControlClient(ctx, info.control, info.name)
            try:
                client.start(5.0)
            finally:
                client.close()
        busy = short_dir / "events" / "importer-1.jsonl"
        assert _lines(busy, 300, 20.0) >= 300, "the workload did not get going"
        for svc in dep.services:           # mid-workload, every service writing
            os.kill(svc.pid, signal.SIGKILL)
        assert procs.wait_gone({s.pid: s.marker for s in dep.services}, 10) == {}
    finally:
        ctx.destroy(linger=0)
        down(short_dir)
    for svc in dep.services:
        raw = (short_dir / "events" / f"{svc.name}.jsonl").read_bytes()
        assert raw.endswith(b"\n"), f"{svc.name}'s history ends mid-line: {raw[-80:]!r}"
        events = [json.loads(line) for line in raw.splitlines()]
        assert events and all(e["svc"] == svc.name and "event" in e and "t_ns" in e for e in events)
        assert not any(e["event"] == "service_stop" for e in events), "SIGKILL: no goodbye"
        # the service's own lines; after a SIGKILLed exporter, Python's resource tracker (a child
        # process) adds its warning about the segments it then unlinks, in plain text
        log = [json.loads(x) for x in (short_dir / "logs" / f"{svc.name}.log").read_text().splitlines()
               if x.startswith("{")]
        assert log and all(e["level"] and e["svc"] == svc.name for e in log), log
    assert shm.existing(Deployment.read(short_dir).run_id) == []
