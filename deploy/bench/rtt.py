"""Control-plane round trips: the transport floor (zmq_rtt_us) and a real map / unmap against a
real pin exporter, measured in interleaved repetitions so that noise from the shared machine
lands on both sides of each ratio alike.

One repetition = N raw round trips to the echo server, then N map+unmap pairs to the exporter,
from this process (the client) to the other (the server). Each repetition's figure is the
median of its N samples; a ratio is taken per repetition (map median / zmq median), and the
figure reported is the median over repetitions with min and max.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

import msgpack
import zmq

from deploy.bench import services
from deploy.bench.stats import summary
from protocol import capability, wire
from runtime import transport


def _zmq_batch(sock: zmq.Socket, n: int, start_id: int) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for i in range(start_id, start_id + n):
        t0 = clock()
        sock.send(msgpack.packb({"v": 1, "op": "map", "id": i, "attachment": 1}, use_bin_type=True))
        reply = msgpack.unpackb(sock.recv(), raw=False)
        t1 = clock()
        if reply["id"] != i:
            raise RuntimeError(f"echo: reply to {reply['id']}, expected {i}")
        samples.append((t1 - t0) / 1000)
    return samples


def _timed(sock: Any, msg: wire.Message, reply_type: type) -> float:
    """One request's round trip in us; the reply must be `reply_type` with the request's id."""
    clock = time.perf_counter_ns
    t0 = clock()
    sock.send(wire.encode(msg))
    r = wire.decode(sock.recv())
    t1 = clock()
    if type(r) is not reply_type or r.id != msg.id:
        raise RuntimeError(f"{msg.OP} got {r}")
    return (t1 - t0) / 1000


def _map_batch(client: services.WireClient, attachment: int, n: int) -> tuple[list[float], list[float]]:
    maps, unmaps = [], []
    sock, ids, token = client.sock, client.ids, client.tokens[attachment]
    for _ in range(n):
        maps.append(_timed(sock, wire.Map(id=next(ids), attachment=attachment, token=token), wire.MapReply))
        unmaps.append(_timed(sock, wire.Unmap(id=next(ids), attachment=attachment, token=token), wire.UnmapReply))
    return maps, unmaps


def measure(reps: int, n: int, warmup: int = 200) -> dict[str, Any]:
    per_rep: list[dict[str, float]] = []
    ctx = zmq.Context()
    try:
        with services.echo_server() as echo_ep, services.exporter(buffers=2, max_importers=2) as exp:
            echo = transport.dealer(ctx, echo_ep, identity=b"bench-rtt")
            echo.setsockopt(zmq.RCVTIMEO, services.RECV_TIMEOUT_MS)
            client = services.WireClient(ctx, exp.rpc, "importer-1", exp.secret)
            try:
                att = client.join(0)
                _zmq_batch(echo, warmup, 0)
                _map_batch(client, att, warmup)
                next_id = warmup
                for _ in range(reps):
                    gc.collect()
                    gc.disable()
                    try:
                        z = _zmq_batch(echo, n, next_id)
                        next_id += n
                        m, u = _map_batch(client, att, n)
                    finally:
                        gc.enable()
                    zm, mm, um = statistics.median(z), statistics.median(m), statistics.median(u)
                    per_rep.append({"zmq": zm, "map": mm, "unmap": um})
            finally:
                echo.close(linger=0)
                client.close()
    finally:
        ctx.destroy(linger=0)
    return {
        "zmq_rtt_us": summary((r["zmq"] for r in per_rep), "us"),
        "map_rtt_us": summary((r["map"] for r in per_rep), "us"),
        "unmap_rtt_us": summary((r["unmap"] for r in per_rep), "us"),
        "map_rtt_ratio": summary(r["map"] / r["zmq"] for r in per_rep),
        "unmap_rtt_ratio": summary(r["unmap"] / r["zmq"] for r in per_rep),
        "rtt_samples_per_rep": n,
    }


def breakdown(number: int = 5000, repeat: int = 5) -> dict[str, Any]:
    """Where a map round trip's time goes beyond the floor: the CPU cost of each step the real
    client and exporter take per map request, measured in this process (best of `repeat`, us).
    `floor_*` are the steps the echo baseline takes instead. The rest of a round trip is the two
    wake-ups and the kernel's socket work, the same for both."""
    import tempfile
    import timeit
    from pathlib import Path

    from protocol.exporter import Exporter, ExporterConfig, HeapConfig
    from protocol.strategies import get
    from runtime.eventlog import EventLog

    def cost(fn: Any) -> float:
        return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6

    secret = bytes(range(32))
    engine = Exporter(get("pin").EXPORTER, ExporterConfig(
        buffers=1, buffer_size=65536, heaps=(HeapConfig("vram", "-", 65536), HeapConfig("sys", "-", 131072)),
        fences_shm="-", fence_slots=2, secret=secret))
    engine.boot(0)
    peer = b"importer-1"
    engine.handle_request(peer, wire.Hello(id=1, name="importer-1", pid=1, strategy="pin",
                                           token=capability.join_token(secret, "importer-1")), 1)
    reply = next(a.message for a in engine.handle_request(
        peer, wire.Attach(id=2, buffer=0, token=capability.export_token(secret, 0)), 2) if hasattr(a, "message"))
    att, tok = reply.attachment, reply.token
    ids = iter(range(10, 1 << 62))

    def engine_map_unmap() -> None:
        engine.handle_request(peer, wire.Map(id=next(ids), attachment=att, token=tok), time.monotonic_ns())
        engine.handle_request(peer, wire.Unmap(id=next(ids), attachment=att, token=tok), time.monotonic_ns())

    req = wire.Map(id=7, attachment=att, token=tok)
    reply = wire.MapReply(id=7, placement=wire.Placement("vram", 0, 65536, 1), moved=False, fence=0)
    req_b, reply_b = wire.encode(req), wire.encode(reply)
    raw_req = {"v": 1, "op": "map", "id": 7, "attachment": 1}
    raw_reply = msgpack.unpackb(reply_b)
    ctx = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="dmb-bd-") as tmp:
        log = EventLog(Path(tmp) / "e.jsonl", "exporter")
        sock = ctx.socket(zmq.ROUTER)
        sock.bind(f"ipc://{tmp}/s")

        def drain_again() -> None:
            try:
                sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                pass

        try:
            out = {
                "floor_server_unpack_pack": cost(lambda: msgpack.packb(msgpack.unpackb(msgpack.packb(raw_req)))),
                "floor_client_pack_unpack": cost(lambda: msgpack.unpackb(msgpack.packb(raw_reply))),
                "server_wire_decode_map": cost(lambda: wire.decode(req_b)),
                "server_engine_map": cost(engine_map_unmap) / 2,
                "server_wire_encode_map_reply": cost(lambda: wire.encode(reply)),
                # one event line per map served at once (map_served; see exporter_svc/service.py)
                "server_event_log_1_line": cost(lambda: log.emit("map_served", id=7, importer="importer-1", buffer=0,
                                                                 attachment=1, heap="vram", offset=0, size=65536,
                                                                 gen=1, moved=False, deferred_ns=0)),
                # the read loop asks EVENTS before each recv; zmq.Again (what it used to catch) for comparison
                "server_read_loop_events_check": cost(lambda: sock.getsockopt(zmq.EVENTS)),
                "recv_again_instead": cost(drain_again),
                "client_wire_encode_map": cost(lambda: wire.encode(req)),
                "client_wire_decode_map_reply": cost(lambda: wire.decode(reply_b)),
                "getsockopt_events": cost(lambda: sock.getsockopt(zmq.EVENTS)),
            }
        finally:
            log.close()
            sock.close(linger=0)
            ctx.destroy(linger=0)
    real = sum(v for k, v in out.items() if k.startswith(("server_", "client_")))
    floor = out["floor_server_unpack_pack"] + out["floor_client_pack_unpack"]
    return {"map_cpu_breakdown_us": {**{k: round(v, 2) for k, v in out.items()},
                                     "real_total": round(real, 2), "floor_total": round(floor, 2),
                                     "added_by_protocol": round(real - floor, 2)}}
