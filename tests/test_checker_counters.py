"""Counters, latencies, parameters and services of the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from checker.latency import LogHistogram
from tests.checker_helpers import H, mapped


def busy_history() -> H:
    h = mapped(svc="importer-1", att=1)                       # attach + map (remapped)
    h.attach(20, svc="importer-2", att=2).map(25, svc="importer-2", att=2, reused=True)
    h.job(1, "read", 30, 40).job(2, "write", 41, 45).job(3, "read", 46, 48, svc="importer-2", att=2)
    h.unmap(50).unmap(51, svc="importer-2", att=2)
    h.map(60, reused=True)                                    # never unmapped: held at shutdown
    h.move(0, 1, 1, begin=100, copy_begin=120, copy_end=130, free=140, end=150)
    h.ev(90, "exporter", "move_notify_sent", id=1, buffer=0, move=1, importer="importer-1", attachment=1, gen=1)
    h.ev(95, "exporter", "ack", id=7, buffer=0, move=1, importer="importer-1", attachment=1, latency_ns=5)
    h.ev(96, "exporter", "ack_timeout", buffer=0, move=1, importers=["importer-2"])
    for reason in ("pinned", "no_space", "no_space"):
        h.ev(200, "exporter", "move_refused", buffer=0, from_gen=2, to_gen=3, reason=reason)
    h.ev(210, "exporter", "move_queued", buffer=0, from_gen=2, reason="mapped")
    h.ev(220, "exporter", "fence_signal", buffer=0, usage="BOOKKEEP", seq=None, move=1, importer="importer-2",
         error="timeout", forced=True)
    h.ev(221, "exporter", "fence_signal", buffer=0, usage="KERNEL", seq=1, move=1)
    h.ev(222, "importer-1", "fence_signal", buffer=0, usage="READ", seq=1, job=1)
    h.ev(223, "importer-2", "iommu_fault", job=9, buffer=0, attachment=2, access="read", heap="vram", offset=0, size=1)
    h.ev(224, "exporter", "fence_wait_end", buffer=0, move=1, usage="BOOKKEEP", waited_ns=3000, forced=[])
    h.job(4, "read", 230, None)                               # never ends
    return h


def test_counters(tmp_path: Path) -> None:
    r = busy_history().judge(tmp_path)
    assert r["ops"] == {"attach": 2, "detach": 0, "map": 3, "unmap": 2, "dma_read": 3, "dma_write": 1}
    assert r["maps"] == {"reused": 2, "remapped": 1}
    m = r["moves"]
    assert (m["attempted"], m["completed"], m["refused"], m["queued"]) == (4, 1, 3, 1)
    assert m["refused_by_reason"] == {"no_space": 2, "pinned": 1}
    assert r["notify"]["sent"] == 1 and r["notify"]["acked"] == 1 and r["notify"]["ack_timeouts"] == 1
    assert r["fences_forced"] == 1
    assert r["iommu_faults"] == 1
    assert r["mappings_held_at_shutdown"] == 1
    assert r["jobs_unfinished"] == 1
    assert r["latency_us"]["fence_wait"]["n"] == 1 and r["latency_us"]["fence_wait"]["max"] == 3.0
    assert r["latency_us"]["move"]["max"] == 0.05
    assert r["latency_us"]["notify_ack"]["n"] == 1
    assert r["latency_us"]["unmap"]["n"] == 2
    assert r["events"] == len(busy_history().events)
    assert r["t0_ns"] == 0 and r["t1_ns"] == 230 and r["duration_observed_s"] == pytest.approx(230e-9)


def test_mapping_detached_without_unmap_is_held(tmp_path: Path) -> None:
    h = mapped().ev(50, "importer-1", "detach", id=3, buffer=0, attachment=1)
    h.attach(60, att=2).map(61, att=2).unmap(62, att=2).ev(63, "importer-1", "detach", id=4, buffer=0, attachment=2)
    r = h.judge(tmp_path)
    assert r["mappings_held_at_shutdown"] == 1
    assert r["ops"]["detach"] == 2


def test_empty_latencies_are_null(tmp_path: Path) -> None:
    lat = H().created(0).judge(tmp_path)["latency_us"]
    assert set(lat) == {"map", "unmap", "move", "notify_ack", "fence_wait"}
    assert all(v["n"] == 0 and v["p50"] is None and v["p99"] is None for v in lat.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 2, 7, 100, 5000])
def test_latency_percentiles_match_numpy(tmp_path: Path, seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    samples = np.maximum(1, rng.lognormal(mean=11, sigma=1.2, size=n)).astype(np.int64)
    h = mapped()
    for i, v in enumerate(samples):
        h.map(100 + i, latency_ns=int(v))
    lat = h.judge(tmp_path)["latency_us"]["map"]
    assert lat["n"] == n + 1
    allv = np.concatenate([[1000], samples]) / 1000.0  # mapped() itself maps once with 1000 ns
    for q, key in ((50, "p50"), (99, "p99")):
        assert lat[key] == pytest.approx(np.percentile(allv, q), rel=0.02)
    assert lat["max"] == pytest.approx(allv.max(), abs=1e-3)


def test_histogram_memory_is_bounded_by_range_not_count() -> None:
    h = LogHistogram()
    samples = np.random.default_rng(5).integers(1_000, 10_000_000, size=200_000)
    for v in samples:
        h.add(int(v))
    assert h.n == 200_000
    assert len(h.counts) < 1000  # log(1e4)/log(1.01) ~ 926 buckets at most
    for q in (0.001, 0.25, 0.5, 0.9, 0.999):
        assert h.quantile(q) == pytest.approx(np.percentile(samples, 100 * q), rel=0.01)


def test_histogram_handles_zero_and_ties() -> None:
    h = LogHistogram()
    for v in (0, 0, 0, 5, 5):
        h.add(v)
    assert h.quantile(0.5) == 0.0
    assert h.quantile(1.0) == 5.0


def test_params_from_run_start(tmp_path: Path) -> None:
    params = {"strategy": "move-notify", "seed": 7, "importers": 3, "buffers": 16, "buffer_size": 65536,
              "vram_size": 1 << 20, "duration_s": 5.0, "move_rate": 10.0, "transport": "ipc",
              "hint_policy": None, "extra_knob": "x"}
    h = H().ev(0, "deploy", "run_start", run_id="r1", strategy="move-notify", params=params)
    h.ev(1, "exporter", "service_start", run_id="r1", strategy="ignored-when-run_start-says", heaps={})
    r = h.judge(tmp_path)
    assert r["params"] == params
    assert (r["strategy"], r["seed"], r["importers"], r["buffers"], r["duration_s"]) == ("move-notify", 7, 3, 16, 5.0)


def test_params_without_run_start(tmp_path: Path) -> None:
    r = H().ev(1, "exporter", "service_start", run_id="r1", strategy="pin", heaps={}).judge(tmp_path)
    assert r["strategy"] == "pin"
    assert (r["seed"], r["importers"], r["buffers"], r["duration_s"]) == (None, None, None, None)


def test_services(tmp_path: Path) -> None:
    h = H().ev(0, "deploy", "run_start", run_id="r", strategy="pin", params={})
    h.ev(1, "exporter", "service_start", strategy="pin").ev(2, "importer-1", "service_start", index=1)
    h.ev(3, "importer-2", "service_start", index=2).ev(50, "deploy", "service_died", name="importer-2", pid=9,
                                                       how="SIGKILL")
    h.ev(60, "importer-1", "service_stop", reason="done", jobs=0).ev(70, "exporter", "service_stop", reason="done")
    h.ev(80, "deploy", "run_stop")
    s = h.judge(tmp_path)["services"]["by_name"]
    assert s["importer-2"] == {"started": True, "stopped": False, "died": True, "last_t_ns": 3}
    assert s["importer-1"] == {"started": True, "stopped": True, "died": False, "last_t_ns": 60}
    assert s["exporter"]["stopped"] and s["deploy"]["started"] and s["deploy"]["stopped"]
    assert s["deploy"]["last_t_ns"] == 80


def test_duration_is_lifted_from_deploys_duration_key(tmp_path: Path) -> None:
    h = H().ev(0, "deploy", "run_start", run_id="r", strategy="pin", params={"strategy": "pin", "duration": 3.0})
    r = h.judge(tmp_path)
    assert r["duration_s"] == 3.0 and r["params"] == {"strategy": "pin", "duration": 3.0}
