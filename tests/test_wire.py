"""The wire format: round trips, and a clear, stable error for every kind of bad frame."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from protocol import wire

SAMPLES = [
    wire.Hello(id=1, name="importer-1", pid=42, strategy="pin", token="1f" * 16),
    wire.Bye(id=2), wire.Attach(id=3, buffer=7, token="ab" * 16), wire.Detach(id=4, attachment=9, token="cd" * 16),
    wire.Map(id=5, attachment=9, token="ef" * 16), wire.Unmap(id=6, attachment=9, token="01" * 16),
    wire.Pin(id=7, attachment=9, token="23" * 16), wire.Unpin(id=8, attachment=9, token="45" * 16),
    wire.Ack(id=9, attachment=9, move=3), wire.Heartbeat(id=10),
    wire.Ping(id=11), wire.MoveNotify(id=12, buffer=1, attachment=2, move=3, gen=4),
    wire.Start(id=13), wire.Stop(id=14), wire.Shutdown(id=15), wire.Status(id=16),
    wire.OkReply(id=17, op="ping"), wire.ErrorReply(id=18, op="map", code="bad_state", message="no"),
    wire.HelloReply(id=19, slot=1, strategy="pin", heaps=[wire.HeapInfo("vram", "dmabuf-x-vram", 4096)],
                    fences_shm="dmabuf-x-fences", fence_slots=3, buffers=[wire.BufferInfo(0, 4096)]),
    wire.AttachReply(id=20, attachment=1, buffer=0, size=4096, token="67" * 16),
    wire.MapReply(id=21, placement=wire.Placement("vram", 64, 4096, 2), moved=True, fence=3),
    wire.UnmapReply(id=22, will_move=False), wire.PinReply(id=23, pins=1),
    wire.StatusReply(id=24, svc="exporter", state="ready", pid=1),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: wire.Message) -> None:
    assert wire.decode(wire.encode(msg)) == msg


def frame(**fields) -> bytes:
    return msgpack.packb(fields)


@pytest.mark.parametrize("raw, code, words", [
    (b"\xc1", "bad_message", "not a msgpack"),
    (msgpack.packb([1, 2]), "bad_message", "must be a map"),
    (frame(op="map", id=1, attachment=1), "bad_message", "'v'"),
    (frame(v="1", op="map", id=1, attachment=1), "bad_message", "'v'"),
    (frame(v=2, op="map", id=1, attachment=1), "bad_version", "version 2"),
    (frame(v=1, id=1), "bad_message", "'op'"),
    (frame(v=1, op="map", attachment=1), "bad_message", "'id'"),
    (frame(v=1, op="teleport", id=1), "unknown_op", "teleport"),
    (frame(v=1, op="map", id=1), "bad_message", "missing field 'attachment'"),
    (frame(v=1, op="map", id=1, attachment="7"), "bad_message", "'attachment' must be an integer, got str"),
    (frame(v=1, op="map", id=1, attachment=True), "bad_message", "'attachment' must be an integer, got bool"),
    (frame(v=1, op="map", id=1, attachment=-1), "bad_message", "'attachment' must be in"),
    (frame(v=1, op="map", id=1, attachment=1, token="t", extra=0), "bad_message", "unexpected field 'extra'"),
    (frame(v=1, op="map", id=1, attachment=1), "bad_message", "missing field 'token'"),
    (frame(v=1, op="attach", id=1, buffer=1, token=b"\x00" * 16), "bad_message", "'token' must be a string, got bytes"),
    (frame(v=1, op="map", id=1, attachment=1, token="t" * (wire.MAX_STR + 1)), "bad_message", "'token' is longer than"),
    (frame(v=1, op="hello", id=1, name=5, pid=1, strategy="pin"), "bad_message", "'name' must be a string"),
    (frame(v=1, op="map", id=1, ok=True), "bad_message", "missing field 'placement'"),
    (frame(v=1, op="map", id=1, ok=False), "bad_message", "'error' map"),
    (frame(v=1, op="map", id=1, ok=True, placement={"heap": "vram"}, moved=False, fence=0), "bad_message", "missing field 'offset'"),
    (b"\x80" * 10 + b"x" * (wire.MAX_FRAME), "too_large", "over the"),
])
def test_bad_frames_get_a_stable_code_and_a_message_naming_the_fault(raw: bytes, code: str, words: str) -> None:
    with pytest.raises(wire.ProtocolError) as err:
        wire.decode(raw)
    assert err.value.code == code
    assert words in err.value.message


def test_an_error_keeps_the_request_op_and_id_when_they_were_readable() -> None:
    with pytest.raises(wire.ProtocolError) as err:
        wire.decode(frame(v=1, op="map", id=77, attachment="x"))
    reply = wire.error_reply(err.value)
    assert (reply.op, reply.id, reply.code) == ("map", 77, "bad_message")
    assert wire.decode(wire.encode(reply)) == reply


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_decode_or_raise_protocol_error(raw: bytes) -> None:
    try:
        assert isinstance(wire.decode(raw), wire.Message)
    except wire.ProtocolError:
        pass


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=20), st.binary(max_size=20))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({"v": st.sampled_from([1, 1, 2, "1"]), "op": st.sampled_from(sorted(wire.ALL_OPS) + ["nope"]),
                              "id": st.one_of(st.integers(0, 10), st.text(max_size=3))},
                             optional={"ok": st.booleans(), "attachment": _values, "buffer": _values,
                                       "placement": _values, "error": _values, "name": _values}))
def test_well_shaped_maps_with_any_values_decode_or_raise_protocol_error(body: dict) -> None:
    try:
        wire.decode(msgpack.packb(body, use_bin_type=True))
    except wire.ProtocolError:
        pass


_frames = st.sampled_from([wire.encode(m) for m in SAMPLES])
_edits = st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 10**6),
                            st.binary(min_size=1, max_size=8)), min_size=1, max_size=6)


def _mutate(frame: bytes, edits) -> bytes:
    out = bytearray(frame)
    for kind, at, data in edits:
        i = at % (len(out) + 1)
        if kind == "flip" and out:
            out[i % len(out)] ^= data[0] or 1
        elif kind == "cut":
            del out[i:]
        elif kind == "insert":
            out[i:i] = data
        elif kind == "delete":
            del out[i:i + len(data)]
    return bytes(out)


@settings(max_examples=500, deadline=None)
@given(_frames, _edits)
def test_mutated_real_frames_decode_to_valid_messages_or_raise_protocol_error(frame: bytes, edits) -> None:
    """Near misses of real frames (tokens included) reach deeper into the decoder than random
    bytes do. Whatever decodes is a message the encoder would write back the same way."""
    raw = _mutate(frame, edits)
    try:
        msg = wire.decode(raw)
    except wire.ProtocolError as err:
        assert err.code in {"bad_message", "unknown_op", "bad_version", "too_large"} and err.message
        assert wire.decode(wire.encode(wire.error_reply(err))) == wire.error_reply(err)
        return
    assert isinstance(msg, wire.Message)
    assert wire.decode(wire.encode(msg)) == msg


@settings(max_examples=50, deadline=None)
@given(_frames, st.integers(1, 4 * wire.MAX_FRAME), st.binary(max_size=16))
def test_any_frame_over_the_limit_is_too_large_before_it_is_unpacked(frame: bytes, extra: int, fill: bytes) -> None:
    raw = frame + (fill or b"\x00") * (wire.MAX_FRAME // len(fill or b"\x00") + 1)
    raw = raw[:wire.MAX_FRAME + extra]
    with pytest.raises(wire.ProtocolError) as err:
        wire.decode(raw)
    assert err.value.code == "too_large"
