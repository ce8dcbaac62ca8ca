"""dmabuf-emu bench, smoke only: a tiny subset runs and writes well-formed results. Never asserts
a time or a target (the figures depend on the machine); those are for `dmabuf-emu bench`."""

from __future__ import annotations

import json
from pathlib import Path

from deploy.bench import BenchConfig, run_bench
from runtime import shm


def test_bench_subset_writes_json_and_md_and_leaves_nothing(tmp_path: Path) -> None:
    cfg = BenchConfig(rtt_reps=2, rtt_samples=30, breakdown_calls=100, mem_reps=1, parts=("rtt", "mem"))
    result = run_bench(cfg, tmp_path, command="smoke")
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["figures"].keys() == result["figures"].keys()
    figs = data["figures"]
    for key in ("zmq_rtt_us", "map_rtt_us", "unmap_rtt_us", "map_rtt_ratio", "unmap_rtt_ratio",
                "memcpy_gbps", "dma_write_gbps", "dma_read_verify_gbps", "move_copy_gbps",
                "dma_write_ratio", "dma_read_verify_ratio", "move_copy_ratio"):
        f = figs[key]
        assert f["n"] >= 1 and f["min"] <= f["median"] <= f["max"], (key, f)
        assert f["median"] > 0, (key, f)
    assert figs["map_cpu_breakdown_us"]["real_total"] > 0
    verdicts = {t["figure"]: t["met"] for t in data["targets"]}
    assert verdicts["map_rtt_ratio"] in (True, False) and verdicts["checker_events_per_cpu_s"] is None
    md = (tmp_path / "bench.md").read_text()
    assert "map / zmq" in md and "Targets" in md
    assert [n for n in shm.existing() if n.startswith("dmabuf-bench")] == []


def test_explore_split_gives_each_part_a_share_of_the_same_schedules() -> None:
    from deploy.bench.exploreperf import PARTS, split
    from deploy.bench.report import render_md
    sp = split(20)
    assert tuple(sp["shares"]) == PARTS and tuple(sp["us_per_schedule"]) == PARTS
    assert sp["samples"] > 0 and abs(sum(sp["shares"].values()) - 1) < 0.01, sp
    assert all(v >= 0 for v in sp["shares"].values()), sp
    # every schedule starts its services and runs them: both parts are seen on any machine
    assert sp["shares"]["startup"] > 0 and sp["shares"]["services"] > 0, sp
    assert sp["schedules_per_cpu_s"] > 0 and sp["sim_speedup"] > 0
    md = render_md({"meta": {"date": "-", "cpus": 1, "python": "3", "seconds": 1, "loadavg_at_end": [0, 0, 0]},
                    "figures": {"explore_split": sp}})
    assert "| startup |" in md and "| checker |" in md
