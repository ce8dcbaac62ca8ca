"""python -m exporter_svc: run the exporter by hand (dmabuf-emu up does this for you)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime import watchdog
watchdog.die_with_launcher(sys.argv[1:])  # first, before the slow imports below (runtime/watchdog.py)
from runtime.units import parse_size
from runtime.faults import FaultError, decode as decode_faults
from exporter_svc.service import ExporterArgs, ExporterService, heap_sizes
from runtime.params import add_service_flags
from runtime import oplog


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m exporter_svc",
        description="The dma-buf exporter: creates the vram and sys heaps as shared-memory segments "
                    "(dmabuf-<run id>-*), serves attach/map/unmap/pin on a ZeroMQ ROUTER socket, and "
                    "moves buffers between heaps under memory pressure according to --strategy.",
        epilog="Example: python -m exporter_svc --run-id demo --out /tmp/demo "
               "--endpoint ipc:///tmp/demo/e.rpc --control ipc:///tmp/demo/e.ctl --strategy pin")
    p.add_argument("--run-id", required=True, help="names the segments: dmabuf-<run id>-vram, -sys, -fences")
    p.add_argument("--out", required=True, type=Path, help="run directory: events/exporter.jsonl, run/exporter.json")
    p.add_argument("--endpoint", required=True, help="ZeroMQ endpoint importers connect to (ipc://PATH or tcp://127.0.0.1:PORT, port * for any)")
    p.add_argument("--control", required=True, help="ZeroMQ endpoint for dmabuf-emu's control requests")
    add_service_flags(p, "exporter")
    p.add_argument("--faults", default="", help="faults as a JSON list of canonical fault dicts (see runtime/faults.py)")
    p.add_argument("--credentials", type=Path, default=None,
                   help="JSON file of mode 0600 with the run's secret (and CURVE keys); default: make a "
                        "secret and write it to OUT/secrets/exporter.json")
    p.add_argument("--max-attachments", type=int, default=None, help="per importer (default: twice --buffers)")
    p.add_argument("--max-mappings", type=int, default=256, help="per importer: mapped or waiting to be")
    p.add_argument("--max-in-flight", type=int, default=128, help="per importer: maps waiting for the reservation lock")
    p.add_argument("--launcher", default="", metavar="PID:START",
                   help="stop when this process is gone (its pid and start time, field 22 of /proc/PID/stat); "
                        "dmabuf-emu run passes its own, up passes none")
    a = p.parse_args(argv)
    vram, sys_size = heap_sizes(a.buffers, a.buffer_size, a.vram_size)
    try:
        faults = tuple(decode_faults(a.faults))
    except (ValueError, FaultError) as exc:
        p.error(f"--faults: {exc}")
    args = ExporterArgs(run_id=a.run_id, out=a.out, endpoint=a.endpoint, control=a.control,
                        strategy=a.strategy, buffers=a.buffers, buffer_size=a.buffer_size,
                        vram_size=vram, sys_size=sys_size, max_importers=a.importers,
                        move_rate=a.move_rate, ack_timeout_s=a.ack_timeout_ms / 1000,
                        fence_timeout_s=a.fence_timeout_ms / 1000, unmap_wait_s=a.unmap_wait_ms / 1000,
                        reset_grace_s=a.reset_grace_ms / 1000,
                        hint_policy=a.hint_policy,
                        lease_s=a.lease_ms / 1000, retry_s=a.retry_ms / 1000, faults=faults, seed=a.seed,
                        credentials=a.credentials, max_attachments=a.max_attachments,
                        max_mappings=a.max_mappings, max_in_flight=a.max_in_flight, launcher=a.launcher)
    try:
        service = ExporterService(args)
    except (OSError, ValueError) as exc:
        # stderr, as an argument error would go: the launcher sends both to DIR/logs/exporter.log
        oplog.service_logger("exporter", run_id=a.run_id, stream=sys.stderr).error("cannot start", error=str(exc))
        return 2
    return service.run()


if __name__ == "__main__":
    sys.exit(main())
