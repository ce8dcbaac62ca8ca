"""Load: 32 importers and 256 buffers for 60 seconds under resv-fence with 200 moves wanted per
second. Zero races, zero errors, the exporter's memory flat (RSS at the end within 10% of its RSS
10 s in), nothing left in /dev/shm. Slow (about two minutes on a 2-core machine, most of it the
checker reading a history of a million events): not in the default run.

    python -m pytest -m slow tests/test_load.py -s

Last measured (2-core machine shared with other runs): zero races, 1200 moves, 55,941 maps, but
it FAILS on two counts that belong to the lease and dedup layers, not to this test: importers
lost their leases under the load (3584 attachments revoked, 11,776 attaches for 8192), and the
exporter's RSS grew from 142.7 MB at 10 s to 164.1 MB at 59 s (RssAnon 56.6 -> 78.0 MB), which
is about what runtime/reliable.py's ReplyCache fills to (4096 cached replies per peer, 33 peers)
before it stops growing. See the issue for the follow-up.
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

# lease_ms 3000: with the default 500 ms lease, 32 importers attaching 256 buffers each at once
# (8192 attaches) keep a loaded 2-core exporter from answering heartbeats within two leases, and
# the importers give it up as lost before the workload starts (main does the same). The lease is
# not what this test measures.
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
