"""Load: 32 importers and 256 buffers for 60 seconds under resv-fence with 200 moves wanted per
second. Zero races, zero errors, the exporter's memory flat (RSS at the end within 10% of its RSS
10 s in), nothing left in /dev/shm. Slow (about two minutes on a 2-core machine, most of it the
checker reading a history of a million events): not in the default run.

    python -m pytest -m slow tests/test_load.py -s

Last measured (2-core machine, 2026-11-25): passes in 83 s: zero races, zero errors, 8192
attaches for 8192, 1154 moves, 54,226 maps; exporter VmRSS 132,724 KiB after 10 s and 132,796 KiB
at the end (+0.05%). Two fixes made it pass: importers keep at most 16 requests out and resend on
an adaptive timeout (runtime/reliable.py), so joining no longer floods the exporter with copies of
8192 attaches; and the reply cache holds 512 answers per peer, not 4096.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from deploy.options import RunParams
from deploy.run import run
from tests.test_e2e import assert_nothing_left

# lease_ms 3000: 33 busy processes on 2 cores leave a process without CPU for longer than the
# default 500 ms lease now and then; the exporter rightly declares such an importer lost (with
# 500 ms: about 9000 attachments revoked in 60 s, no race). The lease is not what this test measures.
PARAMS = RunParams(strategy="resv-fence", importers=32, buffers=256, duration=60.0, move_rate=200.0, seed=3,
                   lease_ms=3000.0)
EARLY_S = 10.0


def _memory(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssShmem in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssShmem"):
            out[key] = int(value.split()[0])
    return out


def _sample(out: Path, samples: dict[str, dict[str, int]], stop: threading.Event) -> None:
    events = out / "events" / "deploy.jsonl"
    while not stop.is_set() and not (events.exists() and "workload_start" in events.read_text()):
        time.sleep(0.1)
    began = time.monotonic()
    pid = json.loads((out / "deploy.json").read_text())["exporter"]["pid"]
    if stop.wait(EARLY_S):
        return
    samples["early"] = _memory(pid)
    if stop.wait(max(0.0, began + PARAMS.duration - 1.0 - time.monotonic())):
        return
    samples["late"] = _memory(pid)


@pytest.mark.slow
def test_32_importers_256_buffers_60_s_leak_nothing(short_dir: Path) -> None:
    samples: dict[str, dict[str, int]] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(short_dir, samples, stop), daemon=True)
    sampler.start()
    try:
        report = run(PARAMS, short_dir, quiet=True)
    finally:
        stop.set()
        sampler.join(10)
    assert_nothing_left(short_dir)
    print(f"load: ops {report['ops']}, moves {report['moves']}, exporter memory (KiB) after {EARLY_S:g} s "
          f"{samples.get('early')} and at the end {samples.get('late')}")

    assert report["races"]["total"] == 0 and report["corruption"]["jobs"] == 0
    assert report["services_died"] == 0 and report["history_errors"] == 0 and report["iommu_faults"] == 0
    assert report["attachments_revoked"] == 0 and report["fences_forced"] == 0
    assert report["ops"]["attach"] == PARAMS.importers * PARAMS.buffers
    assert report["moves"]["completed"] > 0
    events = [json.loads(line) for line in (short_dir / "history.jsonl").read_text().splitlines()]
    bad = [e for e in events if e["event"] in ("internal_error", "busy", "access_denied", "bad_request",
                                               "service_died", "lease_expired", "importer_lost", "retry_gave_up")]
    assert not bad, bad[:5]
    refused = [e for e in events if e["event"] == "op_answered" and not e["ok"]
               and e.get("code") not in ("no_such_attachment",)]
    assert not refused, refused[:5]

    early, late = samples["early"]["VmRSS"], samples["late"]["VmRSS"]
    assert late <= 1.10 * early, f"exporter RSS grew from {early} KiB to {late} KiB"
