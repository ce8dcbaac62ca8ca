"""Streaming: judging a ten times longer history must not need more memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from checker import judge_history
from tests.checker_helpers import simulated_lines

SMALL_S = 0.5               # virtual seconds of the short run: about 7,000 events
GROWTH_BOUND = 512 * 1024   # bytes of peak traced memory a 10x longer history may add (histogram
                            # buckets fill up to their bounded range; a leak per job would add MBs)


def peak_judging(path: Path) -> tuple[int, dict]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        report = judge_history(path)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, report


def history(tmp_path: Path, duration: float) -> Path:
    """A simulated run of the real services (sim.run.simulate_in_memory), `duration` virtual seconds."""
    path = tmp_path / f"h{duration:g}.jsonl"
    path.write_bytes(b"".join(simulated_lines(11, duration=duration)))
    return path


def test_peak_memory_does_not_grow_with_history_length(tmp_path: Path) -> None:
    small, large = history(tmp_path, SMALL_S), history(tmp_path, 10 * SMALL_S)
    judge_history(small)  # warm up: imports and one-time caches are not the judge's state
    peak_small, r_small = peak_judging(small)
    peak_large, r_large = peak_judging(large)
    assert r_large["events"] >= 9 * r_small["events"]
    assert r_large["ops"]["dma_read"] + r_large["ops"]["dma_write"] > 3_000
    assert r_large["moves"]["completed"] > 100
    assert peak_large - peak_small < GROWTH_BOUND, (peak_small, peak_large)
