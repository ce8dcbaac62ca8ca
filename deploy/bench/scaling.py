"""Aggregate map+unmap operations per second against one real pin exporter, with 1, 2, 4, 8 and
16 importer processes at once, each speaking the real wire protocol on its own DEALER (its own
name, its own buffer), one request in flight per importer as a device driver would have.

The client processes are started once (multiprocessing, spawn) and reused. For each round the
parent names how many take part and a common window on CLOCK_MONOTONIC (shared by all processes
on Linux); the chosen ones (re)join the exporter under their name before the window opens, run
map/unmap back to back, and count the operations completed inside it. The counts of a window
over its length is that round's throughput. Rounds are interleaved (1, 2, 4, 8, 16, then again),
and each figure is the median over repetitions with min and max.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any, Callable

from deploy.bench import services
from deploy.bench.stats import summary

COUNTS = (1, 2, 4, 8, 16)
LEAD_S = 0.3     # time given to the importers to rejoin before the window opens


def _worker(index: int, endpoint: str, secret: bytes, commands: Any, results: Any) -> None:
    import zmq

    from protocol import wire
    ctx = zmq.Context()
    client = services.WireClient(ctx, endpoint, f"importer-{index + 1}", secret)
    try:
        results.put(("ready", index, 0))
        while True:
            cmd = commands.get()
            if cmd is None:
                return
            t_open, t_close = cmd
            try:
                att = client.join(index)
                done = 0
                ids, sock = client.ids, client.sock
                while time.monotonic() < t_open:
                    time.sleep(0.001)
                while True:
                    m = wire.Map(id=next(ids), attachment=att, token=client.tokens[att])
                    sock.send(wire.encode(m))
                    if type(wire.decode(sock.recv())) is not wire.MapReply:
                        raise RuntimeError("map refused")
                    u = wire.Unmap(id=next(ids), attachment=att, token=client.tokens[att])
                    sock.send(wire.encode(u))
                    if type(wire.decode(sock.recv())) is not wire.UnmapReply:
                        raise RuntimeError("unmap refused")
                    now = time.monotonic()
                    if now >= t_close:
                        break
                    done += 2
                results.put(("done", index, done))
            except Exception as exc:  # reported to the parent, which fails the benchmark
                results.put(("error", index, f"{type(exc).__name__}: {exc}"))
    finally:
        client.close()
        ctx.destroy(linger=0)


def measure(reps: int, window_s: float, counts: tuple[int, ...] = COUNTS,
            progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    most = max(counts)
    per_count: dict[int, list[float]] = {n: [] for n in counts}
    ratios: list[float] = []
    spawn = mp.get_context("spawn")
    with services.exporter(buffers=most, max_importers=most) as exp:
        results = spawn.Queue()
        queues = [spawn.Queue() for _ in range(most)]
        procs = [spawn.Process(target=_worker, args=(i, exp.rpc, exp.secret, queues[i], results), daemon=True)
                 for i in range(most)]
        for p in procs:
            p.start()
        try:
            for _ in range(most):
                kind, index, _n = results.get(timeout=60)
            for rep in range(reps):
                row = {}
                for n in counts:
                    t_open = time.monotonic() + LEAD_S
                    t_close = t_open + window_s
                    for q in queues[:n]:
                        q.put((t_open, t_close))
                    total = 0
                    for _ in range(n):
                        kind, index, value = results.get(timeout=window_s + 30)
                        if kind == "error":
                            raise RuntimeError(f"importer-{index + 1}: {value}")
                        total += value
                    row[n] = total / window_s
                    per_count[n].append(row[n])
                ratios.append(row[most] / row[min(counts)])
                progress(f"scaling rep {rep + 1}: " + ", ".join(f"{n}: {row[n]:,.0f}/s" for n in counts))
        finally:
            for q in queues:
                q.put(None)
            for p in procs:
                p.join(5)
                if p.is_alive():
                    p.terminate()
                    p.join()
    return {"scaling": {str(n): summary(per_count[n], "ops/s") for n in counts},
            f"scaling_ratio_{most}_to_{min(counts)}": summary(ratios),
            "scaling_window_s": window_s}
