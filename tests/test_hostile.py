"""A hostile client on the exporter's socket while a real resv-fence run goes on.

Two hostile peers send 10,000 messages between them: random bytes, truncated and oversized
frames, several frames at once, msgpack of wrong shapes and types, unknown ops and versions,
control ops and replies nobody asked for, and well-formed requests with forged tokens and other
importers' attachments. One is an outsider (it never joins: no join token); the other an insider,
let in under its own name (it holds a join token) but granted no buffer. Every message the
exporter can read as a request gets exactly one answer, an error (pings excepted); replies it
never asked for are dropped. Meanwhile the run's importers keep working: no service dies, no race,
no internal error, and the history shows no buffer touched by either hostile peer.

The same run is its own control: the hostile client starts QUIET_S into the workload, and the
rate of operations while it floods is compared with the rate before (one run, not two: half the
time, and the same machine load on both sides of the comparison).
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import zmq

from deploy import launcher
from deploy.options import RunParams
from deploy.run import run
from protocol import capability, wire
from runtime import transport
from tests.test_e2e import assert_nothing_left, history

TOTAL = 10_000
BATCH = 50
INSIDER = b"mallory"
QUIET_S = 1.5
# The workload ends AFTER_S after the last of the 10,000 messages went out (run's `until`), or at
# the duration, a ceiling: they take about 7 s on a 2-core machine running the suite, and over
# 11.5 s when other suites ran beside it; 20 s was once too short under heavy load.
PARAMS = RunParams(strategy="resv-fence", importers=2, buffers=8, duration=60.0, seed=11)
AFTER_S = 0.5
# The flood itself costs CPU time the devices share on a 2-core machine: the workload may slow,
# not stall. Measured: about two thirds of the quiet rate (dma_begin 475/s before, 312/s during).
MIN_RATE = 0.4


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    dropped: int = 0            # unsolicited replies: nothing to answer
    pings: int = 0
    disconnected: int = 0       # frames over the socket's MAXMSGSIZE: libzmq drops the connection
    unexpected: list = field(default_factory=list)
    began_ns: int = 0
    done_ns: int = 0


def _forged(rng: random.Random) -> str:
    return rng.choice(["", "0" * 32, "%032x" % rng.getrandbits(128), "A" * 32, "x" * 4096,
                       "%031x" % rng.getrandbits(124), "\u00e9" * 32])


def _requests(rng: random.Random, ids, insider: bool) -> list[bytes]:
    """Well-formed messages that must be refused. The insider sends no bye and no valid hello."""
    att = rng.randint(0, 40)
    buffer = rng.choice([0, 1, 7, 8, 99, 2**40])
    msgs: list[wire.Message] = [
        wire.Hello(id=next(ids), name=rng.choice(["importer-1", "importer-2", "mallory", "eve"]), pid=rng.randint(1, 9),
                   strategy=rng.choice(["resv-fence", "pin"]), token=_forged(rng)),
        wire.Attach(id=next(ids), buffer=buffer, token=_forged(rng)),
        wire.Map(id=next(ids), attachment=att, token=_forged(rng)),
        wire.Unmap(id=next(ids), attachment=att, token=_forged(rng)),
        wire.Pin(id=next(ids), attachment=att, token=_forged(rng)),
        wire.Unpin(id=next(ids), attachment=att, token=_forged(rng)),
        wire.Detach(id=next(ids), attachment=att, token=_forged(rng)),
        wire.Ack(id=next(ids), attachment=att, move=rng.randint(0, 50)),
        wire.MoveNotify(id=next(ids), buffer=buffer, attachment=att, move=1, gen=1),
        rng.choice([wire.Start, wire.Stop, wire.Shutdown, wire.Status])(id=next(ids)),
        wire.OkReply(id=next(ids), op=rng.choice(["move_notify", "map", "nope"])),            # dropped
        wire.ErrorReply(id=next(ids), op="move_notify", code="busy", message="x"),          # dropped
        wire.MapReply(id=next(ids), placement=wire.Placement("vram", 0, 64, 1), moved=False, fence=0),  # dropped
        wire.Ping(id=next(ids)),
    ]
    if not insider:
        msgs += [wire.Bye(id=next(ids)), wire.Heartbeat(id=next(ids))]
    return [wire.encode(rng.choice(msgs))]


def _junk(rng: random.Random, ids) -> list[bytes]:
    kind = rng.randrange(9)
    if kind == 0:
        return [rng.randbytes(rng.randint(0, 300))]
    if kind == 1:   # truncated
        frame = wire.encode(wire.Map(id=next(ids), attachment=rng.randint(1, 20), token="0" * 32))
        return [frame[:rng.randint(0, len(frame) - 1)]]
    if kind == 2:   # oversized, but under the socket's limit: too_large
        return [b"\x81\xa1v\x01" + b"\x00" * rng.randint(wire.MAX_FRAME, transport.SOCKET_MAXMSGSIZE - 8)] \
            if rng.random() < 0.05 else [b"\xc1" * rng.randint(1, 64)]
    if kind == 3:   # several frames
        return [wire.encode(wire.Ping(id=next(ids)))] * rng.randint(2, 4)
    if kind == 4:   # wrong shapes
        return [msgpack.packb(rng.choice([[1, 2, 3], 7, "hello", None, 1.5, b"\x00", {"v": [1]}, {1: 2},
                                          {"v": 1, "op": "map", "id": next(ids), "attachment": {"a": 1}, "token": "t"},
                                          {"v": 1, "op": "attach", "id": next(ids), "buffer": -1, "token": "t"},
                                          {"v": 1, "op": "map", "id": 2**64 - 1, "attachment": 1, "token": "t"},
                                          {"v": 1, "op": ["map"], "id": next(ids)}]))]
    if kind == 5:   # unknown op, wrong version
        return [msgpack.packb({"v": rng.choice([1, 0, 2, 2**63 - 1, "1", True]), "op": rng.choice(["teleport", "MAP", "", "x" * 100]),
                               "id": next(ids)})]
    if kind == 6:   # missing and extra fields
        return [msgpack.packb({"v": 1, "op": rng.choice(sorted(wire.ALL_OPS)), "id": next(ids),
                               rng.choice(["extra", "token", "attachment"]): rng.choice([1, "x", None])})]
    if kind == 7:   # a failed reply with a bad error map
        return [msgpack.packb({"v": 1, "op": "move_notify", "id": next(ids), "ok": False, "error": rng.choice([None, {}, {"code": 1}])})]
    return [msgpack.packb({"v": 1, "op": "map", "id": next(ids), "attachment": rng.randint(0, 10),
                           "token": rng.choice([1, None, b"x", ["t"], True])})]


def _expect(frames: list[bytes]) -> str:
    """What the exporter must do with it, by the wire format's own rules."""
    if len(frames) != 1:
        return "error"
    try:
        msg = wire.decode(frames[0])
    except wire.ProtocolError:
        return "error"
    if msg.REPLY:
        return "drop"
    return "ok" if isinstance(msg, wire.Ping) else "error"


def _hostile(out: Path, tally: Tally, stop: threading.Event) -> None:
    deploy_events = out / "events" / "deploy.jsonl"
    while not stop.is_set():
        if deploy_events.exists() and "workload_start" in deploy_events.read_text():
            break
        time.sleep(0.02)
    if stop.wait(QUIET_S):
        return
    dep = json.loads((out / "deploy.json").read_text())
    secret = bytes.fromhex(json.loads((out / "secrets" / "exporter.json").read_text())["secret"])
    ctx = zmq.Context()
    rng = random.Random(1234)
    ids = iter(range(10**9, 10**10))
    try:
        socks = {}
        for name, identity in (("outsider", b"\xff" + rng.randbytes(7)), ("insider", INSIDER)):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.ROUTING_ID, identity)
            s.connect(dep["exporter"]["endpoint"])
            socks[name] = s
        # The insider is let in: it holds a join token for its own name, and no export token.
        s = socks["insider"]
        s.send(wire.encode(wire.Hello(id=1, name="mallory", pid=666, strategy="resv-fence",
                                      token=capability.join_token(secret, "mallory"))))
        assert s.poll(5000) and isinstance(wire.decode(s.recv()), wire.HelloReply)
        tally.began_ns = time.monotonic_ns()
        while tally.sent < TOTAL and not stop.is_set():
            name = "insider" if (tally.sent // BATCH) % 2 else "outsider"
            sock = socks[name]
            want = 0
            for _ in range(min(BATCH, TOTAL - tally.sent)):
                frames = _requests(rng, ids, name == "insider") if rng.random() < 0.5 else _junk(rng, ids)
                expect = _expect(frames)
                sock.send_multipart(frames)
                tally.sent += 1
                if expect == "drop":
                    tally.dropped += 1
                else:
                    want += 1
            deadline = time.monotonic() + 10
            while want and time.monotonic() < deadline:
                if not sock.poll(100):
                    continue
                reply = wire.decode(sock.recv())
                want -= 1
                tally.answered += 1
                if isinstance(reply, wire.ErrorReply):
                    tally.errors[reply.code] = tally.errors.get(reply.code, 0) + 1
                elif isinstance(reply, wire.OkReply) and reply.op == "ping":
                    tally.pings += 1
                else:
                    tally.unexpected.append(reply)
            if want:
                tally.unexpected.append(f"{want} messages of a batch from the {name} got no answer")
            if sock.poll(20):   # nothing more may come: one answer per message
                tally.unexpected.append(("extra answer", wire.decode(sock.recv())))
        # Over the socket's MAXMSGSIZE: libzmq drops the connection before the exporter sees it.
        big = ctx.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(dep["exporter"]["endpoint"])
        big.send(b"\x00" * (transport.SOCKET_MAXMSGSIZE + 1))
        tally.disconnected += 1
        tally.done_ns = time.monotonic_ns()
        # ... and the exporter still answers.
        socks["outsider"].send(wire.encode(wire.Ping(id=next(ids))))
        assert socks["outsider"].poll(5000), "the exporter stopped answering"
        socks["outsider"].recv()
    finally:
        ctx.destroy(linger=0)


def _rate(events: list[dict], names: tuple[str, ...], t0: int, t1: int) -> float:
    return sum(1 for e in events if e["event"] in names and t0 <= e["t_ns"] < t1) / ((t1 - t0) / 1e9)


def test_a_hostile_client_changes_nothing_in_a_resv_fence_run(short_dir: Path, monkeypatch) -> None:
    # One importer slot more than the run's importers, for the insider.
    argv = launcher._exporter_argv
    monkeypatch.setattr(launcher, "_exporter_argv",
                        lambda *a: argv(*a) + ["--max-importers", str(PARAMS.importers + 1)])
    tally, stop = Tally(), threading.Event()
    thread = threading.Thread(target=_hostile, args=(short_dir, tally, stop), daemon=True)
    thread.start()
    try:
        report = run(PARAMS, short_dir, quiet=True,
                     until=lambda: tally.done_ns > 0 and time.monotonic_ns() > tally.done_ns + AFTER_S * 1e9)
    finally:
        stop.set()
        thread.join(30)
    assert_nothing_left(short_dir)

    # Every message got its error (or was dropped: replies nobody asked for, the oversized frame).
    assert tally.sent == TOTAL and not tally.unexpected, tally.unexpected[:5]
    assert tally.answered + tally.dropped == TOTAL
    assert tally.answered == sum(tally.errors.values()) + tally.pings
    assert {"access_denied", "no_such_importer", "bad_message", "unknown_op", "bad_state",
            "too_large", "bad_version"} <= set(tally.errors), tally.errors

    events = history(short_dir)
    deploy = [e for e in events if e["svc"] == "deploy"]
    start = next(e for e in deploy if e["event"] == "workload_start")["t_ns"]
    stop = next(e for e in deploy if e["event"] == "workload_stop")
    assert tally.done_ns and tally.done_ns < stop["t_ns"], "all 10,000 went out while the workload ran"
    assert not stop["died"] and not stop["errors"], "every service stayed up"
    assert not [e for e in events if e["event"] in ("service_died", "internal_error")]
    run_stop = next(e for e in deploy if e["event"] == "run_stop")
    assert sorted(run_stop["graceful"]) == ["exporter", "importer-1", "importer-2"]

    # No buffer touched by a hostile peer: every buffer op the exporter served was a real importer's.
    real = {"importer-1", "importer-2"}
    touched = [e for e in events if e["svc"] == "exporter" and e["event"] in (
        "attach", "detach", "map_served", "unmap_served", "pin", "unpin", "ack", "attachment_revoked")]
    assert touched and {e["importer"] for e in touched} <= real
    denied = [e for e in events if e["event"] == "access_denied"]
    assert denied and all(e["peer"] == "mallory" or e["peer"].startswith("?") for e in denied)
    assert not {e["peer"] for e in denied} & real, "no real importer was ever refused"
    assert {e["svc"] for e in events if e["event"].startswith("dma_")} <= real

    # The run itself: clean, and doing under the flood what it did before it.
    assert report["races"]["total"] == 0 and report["corruption"]["jobs"] == 0
    assert report["ops"]["attach"] == report["ops"]["detach"] == PARAMS.importers * PARAMS.buffers
    quiet = (start + int(0.3e9), tally.began_ns)
    flood = (tally.began_ns, tally.done_ns)
    rates = {names: (_rate(events, names, *quiet), _rate(events, names, *flood))
             for names in (("dma_begin",), ("map_served", "unmap_served"), ("move_end",))}
    print(f"hostile: {tally.sent} sent in {(tally.done_ns - tally.began_ns) / 1e9:.1f} s, {tally.answered} answered "
          f"({tally.errors}, {tally.pings} pings), {tally.dropped} unsolicited replies dropped, "
          f"{tally.disconnected} oversized frame disconnected; per second before / during: "
          + ", ".join(f"{'+'.join(n)} {a:.0f} / {b:.0f}" for n, (a, b) in rates.items()))
    for names, (before, during) in rates.items():
        assert before > 0 and during >= MIN_RATE * before, (names, before, during)
