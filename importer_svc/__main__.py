"""python -m importer_svc: run one importer (a device) by hand (dmabuf-emu up does this for you)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime import watchdog
watchdog.die_with_launcher(sys.argv[1:])  # first, before the slow imports below (runtime/watchdog.py)
from importer_svc.service import ImporterArgs, ImporterService
from importer_svc.workload import WorkloadConfig
from runtime.params import add_service_flags
from runtime.faults import FaultError, decode as decode_faults
from runtime import oplog


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m importer_svc",
        description="A dma-buf importer: an emulated device that says hello to the exporter, attaches "
                    "every buffer, and once started runs DMA jobs (map, chunked reads or writes through "
                    "its IOMMU table, unmap) against the exporter's shared-memory heaps.",
        epilog="Example: python -m importer_svc --name importer-1 --index 1 --out /tmp/demo "
               "--exporter ipc:///tmp/demo/e.rpc --control ipc:///tmp/demo/i1.ctl --strategy pin")
    p.add_argument("--name", required=True, help="importer-N: its routing id and its event file name")
    p.add_argument("--index", required=True, type=int, help="N: stamped as the writer of every line it writes")
    p.add_argument("--out", required=True, type=Path, help="run directory: events/<name>.jsonl, run/<name>.json")
    p.add_argument("--exporter", required=True, help="the exporter's ZeroMQ endpoint")
    p.add_argument("--control", required=True, help="ZeroMQ endpoint for dmabuf-emu's control requests")
    add_service_flags(p, "importer")
    p.add_argument("--chunk-ms", type=float, default=1.0, help="time between a job's chunks")
    p.add_argument("--faults", default="", help="faults as a JSON list of canonical fault dicts (see runtime/faults.py)")
    p.add_argument("--credentials", type=Path, default=None,
                   help="JSON file of mode 0600 with this importer's join token, export tokens and CURVE "
                        "keys (dmabuf-emu writes OUT/secrets/NAME.json); without it hello is refused")
    p.add_argument("--incarnation", type=int, default=0,
                   help="0 for the first start, n for the n-th restart: keeps request and job ids unique")
    p.add_argument("--run-id", default="", help="the run this importer belongs to (lets down --all find it)")
    p.add_argument("--launcher", default="", metavar="PID:START",
                   help="stop when this process is gone (its pid and start time, field 22 of /proc/PID/stat); "
                        "dmabuf-emu run passes its own, up passes none")
    a = p.parse_args(argv)
    try:
        faults = tuple(decode_faults(a.faults))
    except (ValueError, FaultError) as exc:
        p.error(f"--faults: {exc}")
    args = ImporterArgs(name=a.name, index=a.index, out=a.out, exporter=a.exporter, control=a.control,
                        strategy=a.strategy, seed=a.seed, chunk_ms=a.chunk_ms,
                        lease_ms=a.lease_ms, retry_ms=a.retry_ms, faults=faults, incarnation=a.incarnation,
                        credentials=a.credentials, launcher=a.launcher, kind=a.importer_kind,
                        workload=WorkloadConfig(a.queue_depth, a.dma_ms, a.think_ms, a.write_ratio, a.pin_ratio,
                                                  a.dma_stall))
    try:
        service = ImporterService(args)
    except (OSError, ValueError) as exc:
        # stderr, as an argument error would go: the launcher sends both to DIR/logs/<name>.log
        oplog.service_logger(a.name, run_id=a.run_id, incarnation=a.incarnation,
                             stream=sys.stderr).error("cannot start", error=str(exc))
        return 2
    service.oplog = service.oplog.bind(run_id=a.run_id)   # the run's id is a command-line fact here
    return service.run()


if __name__ == "__main__":
    sys.exit(main())
