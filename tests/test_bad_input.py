"""Bad input to a live exporter: every kind gets an error reply with its code, and the service
keeps serving (a valid ping right after is answered)."""

from __future__ import annotations

import json

import msgpack
import pytest
import zmq

from protocol import capability, wire


class Client:
    def __init__(self, endpoint: str, identity: bytes | None = None) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if identity:
            self.sock.setsockopt(zmq.ROUTING_ID, identity)
        self.sock.connect(endpoint)

    def raw(self, *frames: bytes, timeout_s: float = 5.0) -> wire.Message:
        self.sock.send_multipart(list(frames))
        assert self.sock.poll(int(timeout_s * 1000)), "no reply: the service stopped serving?"
        return wire.decode(self.sock.recv())

    def call(self, msg: wire.Message) -> wire.Message:
        return self.raw(wire.encode(msg))

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def pack(**fields) -> bytes:
    return msgpack.packb(fields)


BAD = [
    ("garbage", [b"\xc1\xc1\xc1"], "bad_message"),
    ("not a map", [msgpack.packb("hello")], "bad_message"),
    ("unknown op", [pack(v=1, op="teleport", id=3)], "unknown_op"),
    ("wrong type", [pack(v=1, op="attach", id=4, buffer="zero")], "bad_message"),
    ("wrong version", [pack(v=9, op="ping", id=5)], "bad_version"),
    ("missing field", [pack(v=1, op="map", id=6)], "bad_message"),
    ("extra field", [pack(v=1, op="ping", id=7, please=1)], "bad_message"),
    ("oversize", [b"\x91" + b"\x00" * (wire.MAX_FRAME + 10)], "too_large"),
    ("two frames", [pack(v=1, op="ping", id=8), b"more"], "bad_message"),
    ("op before hello", [wire.encode(wire.Attach(id=9, buffer=0, token="0" * 32))], "no_such_importer"),
    ("hello without the join token", [wire.encode(wire.Hello(id=10, name="importer-1", pid=1, strategy="pin",
                                                             token="0" * 32))], "access_denied"),
]


@pytest.mark.parametrize("label, frames, code", BAD, ids=[b[0] for b in BAD])
def test_bad_frame_gets_error_and_service_keeps_serving(live_exporter, label, frames, code) -> None:
    c = Client(live_exporter["rpc"])
    try:
        reply = c.raw(*frames)
        assert isinstance(reply, wire.ErrorReply), reply
        assert reply.code == code, reply
        assert reply.message, "the error says what was wrong"
        pong = c.call(wire.Ping(id=100))
        assert isinstance(pong, wire.OkReply) and pong.op == "ping"
    finally:
        c.close()


def test_forged_handles_and_unknown_buffers_after_hello(live_exporter) -> None:
    secret = live_exporter["secret"]

    def hello(msg_id: int, name: str, pid: int, strategy: str = "pin") -> wire.Hello:
        return wire.Hello(id=msg_id, name=name, pid=pid, strategy=strategy,
                          token=capability.join_token(secret, name))

    def export(buffer: int) -> str:
        return capability.export_token(secret, buffer)

    me = Client(live_exporter["rpc"], b"tester-1")
    other = Client(live_exporter["rpc"], b"tester-2")
    try:
        assert isinstance(me.call(hello(1, "tester-1", 1)), wire.HelloReply)
        assert isinstance(other.call(hello(1, "tester-2", 2)), wire.HelloReply)
        att = other.call(wire.Attach(id=2, buffer=0, token=export(0)))
        assert isinstance(att, wire.AttachReply)
        cases = [
            (wire.Attach(id=3, buffer=99, token=export(99)), "no_such_buffer"),
            (wire.Attach(id=17, buffer=1, token=export(0)), "access_denied"),           # another buffer's token
            (wire.Attach(id=18, buffer=1, token="f" * 32), "access_denied"),            # forged
            (wire.Map(id=4, attachment=12345, token=att.token), "no_such_attachment"),
            (wire.Map(id=5, attachment=att.attachment, token=att.token), "access_denied"),  # replayed, other peer
            (wire.Unmap(id=6, attachment=att.attachment, token="0" * 32), "access_denied"),
            (hello(8, "tester-3", 1, "resv-fence"), "bad_state"),
            (wire.Hello(id=19, name="tester-2", pid=1, strategy="pin", token=capability.join_token(secret, "tester-1")),
             "access_denied"),                                                           # someone else's name
        ]
        for msg, code in cases:
            reply = me.call(msg)
            assert isinstance(reply, wire.ErrorReply) and reply.code == code, (msg, reply)
        third = Client(live_exporter["rpc"], b"tester-3")
        try:
            reply = third.call(hello(1, "tester-3", 3))
            assert isinstance(reply, wire.ErrorReply) and reply.code == "busy", "only 2 importer slots"
        finally:
            third.close()
        mine = me.call(wire.Attach(id=9, buffer=1, token=export(1)))
        mapped = me.call(wire.Map(id=10, attachment=mine.attachment, token=mine.token))
        assert isinstance(mapped, wire.MapReply) and mapped.placement.size == 64 * 1024
        assert isinstance(me.call(wire.Map(id=11, attachment=mine.attachment, token=mine.token)), wire.ErrorReply)
        assert isinstance(me.call(wire.Detach(id=12, attachment=mine.attachment, token=mine.token)),
                          wire.ErrorReply), "detach while mapped"
        assert isinstance(me.call(wire.Unmap(id=13, attachment=mine.attachment, token=mine.token)), wire.UnmapReply)
        assert isinstance(me.call(wire.Ping(id=14)), wire.OkReply)
        # A second hello under the same name is a rejoin: the old incarnation's handles are gone.
        assert isinstance(me.call(hello(15, "tester-1", 1)), wire.HelloReply)
        gone = me.call(wire.Map(id=16, attachment=mine.attachment, token=mine.token))
        assert isinstance(gone, wire.ErrorReply) and gone.code == "no_such_attachment", gone
    finally:
        me.close()
        other.close()


def test_bad_input_is_recorded_in_the_history(live_exporter) -> None:
    c = Client(live_exporter["rpc"])
    try:
        c.raw(pack(v=1, op="teleport", id=3))
        c.call(wire.Ping(id=4))
    finally:
        c.close()
    events = [json.loads(line) for line in (live_exporter["dir"] / "events" / "exporter.jsonl").read_text().splitlines()]
    bad = [e for e in events if e["event"] == "bad_request"]
    assert bad and bad[0]["code"] == "unknown_op"
    answered = [e for e in events if e["event"] == "op_answered" and e["op"] == "teleport"]
    assert answered and answered[0]["ok"] is False


def test_control_socket_refuses_garbage_and_unknown_ops(live_exporter) -> None:
    c = Client(live_exporter["control"])
    try:
        assert c.raw(b"\xc1").code == "bad_message"  # type: ignore[attr-defined]
        assert c.call(wire.Map(id=2, attachment=1, token="")).code == "bad_state"  # type: ignore[attr-defined]
        status = c.call(wire.Status(id=3))
        assert isinstance(status, wire.StatusReply) and status.svc == "exporter"
    finally:
        c.close()
