"""Capabilities and limits in the sans-IO exporter: every token is checked, every refusal is an
`access_denied` (or `busy`) event and an error reply, and a refused request changes nothing."""

from __future__ import annotations

import copy

import pytest

from protocol import capability, wire
from protocol.strategies import STRATEGIES
from tests.world import World

FORGED = "0123456789abcdef" * 2


def joined(strategy: str = "resv-fence", **kw) -> World:
    w = World(strategy, **kw)
    w.join_all()
    assert w.ready == set(w.peers)
    return w


def state(w: World) -> tuple:
    """What a request could change: attachments, mappings, pins, importers, buffers."""
    e = w.exporter
    return (copy.deepcopy(e._attachments), copy.deepcopy(e._buffers),
            {s: (i.name, i.alive, set(i.attachments), set(i.mapped), set(i.waiting)) for s, i in e._importers.items()},
            e.session.next_attachment)


def ask(w: World, peer: str, msg: wire.Message) -> tuple[wire.Message, list[dict]]:
    out = w.exporter.handle_request(peer.encode(), msg, w.now)
    replies = [a.message for a in out if hasattr(a, "message")]
    assert len(replies) == 1
    return replies[0], [dict(a.fields, event=a.event) for a in out if hasattr(a, "event")]


def att_of(w: World, importer: str, buffer: int):
    return w.peers[importer]._atts[buffer]


def test_tokens_are_deterministic_distinct_and_bound_to_what_they_name() -> None:
    s = b"k" * 32
    assert capability.export_token(s, 1) == capability.export_token(s, 1)
    tokens = {capability.export_token(s, 1), capability.export_token(s, 2), capability.join_token(s, "importer-1"),
              capability.attachment_token(s, 1, b"importer-1"), capability.attachment_token(s, 1, b"importer-2"),
              capability.attachment_token(s, 2, b"importer-1"), capability.export_token(b"j" * 32, 1)}
    assert len(tokens) == 7 and all(len(t) == capability.TOKEN_HEX for t in tokens)
    assert not capability.matches("", capability.export_token(s, 1))
    assert not capability.matches("\udcff" * 3, capability.export_token(s, 1))


def test_the_exporter_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="secret must be at least 16 bytes"):
        World("pin", secret=b"short")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_bad_token_is_access_denied_logged_and_changes_nothing(strategy: str) -> None:
    w = joined(strategy, importers=2)
    mine, theirs = att_of(w, "importer-1", 0), att_of(w, "importer-2", 0)
    secret = w.secret
    cases = [
        ("hello", wire.Hello(id=901, name="importer-2", pid=7, strategy=strategy,
                             token=capability.join_token(secret, "importer-1")), "bad join token"),
        ("attach", wire.Attach(id=902, buffer=1, token=capability.export_token(secret, 0)), "bad export token"),
        ("attach", wire.Attach(id=903, buffer=1, token=FORGED), "bad export token"),
        ("map", wire.Map(id=904, attachment=mine.id, token=FORGED), "bad attachment token"),
        ("map", wire.Map(id=905, attachment=mine.id, token=theirs.token), "bad attachment token"),
        ("map", wire.Map(id=906, attachment=theirs.id, token=theirs.token), "another importer's attachment"),
        ("unmap", wire.Unmap(id=907, attachment=mine.id, token=""), "bad attachment token"),
        ("pin", wire.Pin(id=908, attachment=mine.id, token=mine.token.upper()), "bad attachment token"),
        ("unpin", wire.Unpin(id=909, attachment=mine.id, token=mine.token[:-1]), "bad attachment token"),
        ("detach", wire.Detach(id=910, attachment=mine.id, token=mine.token + "0"), "bad attachment token"),
        # The right attachment token for this attachment, minted for another connection: a replay.
        ("map", wire.Map(id=911, attachment=mine.id,
                         token=capability.attachment_token(secret, mine.id, b"importer-2")), "bad attachment token"),
    ]
    for op, msg, reason in cases:
        before = state(w)
        reply, events = ask(w, "importer-1", msg)
        assert isinstance(reply, wire.ErrorReply) and reply.code == "access_denied", (msg, reply)
        assert (reply.op, reply.id) == (op, msg.id)
        denied = [e for e in events if e["event"] == "access_denied"]
        assert len(denied) == 1 and denied[0]["op"] == op and denied[0]["reason"] == reason
        assert denied[0]["peer"] == "importer-1"
        assert state(w) == before, f"{op} ({reason}) changed the exporter's state"
    # The importers' own requests, with their own tokens, still work.
    reply, _ = ask(w, "importer-1", wire.Map(id=950, attachment=mine.id, token=mine.token))
    assert isinstance(reply, wire.MapReply)


def test_a_stranger_is_named_by_its_routing_id() -> None:
    w = joined()
    reply, events = ask(w, "mallory", wire.Hello(id=1, name="importer-1", pid=6, strategy="resv-fence", token=FORGED))
    assert reply.code == "access_denied"
    assert [e["peer"] for e in events if e["event"] == "access_denied"] == ["?" + b"mallory".hex()]
    assert "importer_lost" not in w.event_names("exporter"), "a forged hello must not unseat importer-1"


def test_a_token_dies_with_its_attachment() -> None:
    w = joined("pin")
    old = att_of(w, "importer-1", 0)
    assert isinstance(ask(w, "importer-1", wire.Detach(id=1, attachment=old.id, token=old.token))[0], wire.OkReply)
    again = wire.Attach(id=2, buffer=0, token=capability.export_token(w.secret, 0))
    new = ask(w, "importer-1", again)[0]
    assert new.attachment != old.id and new.token != old.token, "attachment ids are never reused"
    reply, _ = ask(w, "importer-1", wire.Map(id=3, attachment=old.id, token=old.token))
    assert reply.code == "no_such_attachment"
    reply, _ = ask(w, "importer-1", wire.Map(id=4, attachment=new.attachment, token=old.token))
    assert reply.code == "access_denied"


def test_importers_attach_only_the_buffers_they_were_granted() -> None:
    w = World("resv-fence", importers=3, buffers=4, vram_buffers=2,
              grants={"importer-1": [0, 2], "importer-2": [3]})
    w.join_all()
    assert w.ready == {"importer-1", "importer-2", "importer-3"}, "no grant: ready with nothing attached"
    attached = {(f["importer"], f["buffer"]) for s, e, f in w.events if e == "attach" and s == "exporter"}
    assert attached == {("importer-1", 0), ("importer-1", 2), ("importer-2", 3)}
    assert sorted(w.peers["importer-1"].idle_buffers()) == [0, 2] and w.peers["importer-3"].idle_buffers() == []
    reply, _ = ask(w, "importer-2", wire.Attach(id=99, buffer=0, token=capability.export_token(b"guess" * 4, 0)))
    assert reply.code == "access_denied"


def test_attachments_past_the_limit_are_busy() -> None:
    w = joined("pin", buffers=2, limits={"max_attachments": 3})
    before = state(w)
    ok, _ = ask(w, "importer-1", wire.Attach(id=50, buffer=0, token=capability.export_token(w.secret, 0)))
    assert isinstance(ok, wire.AttachReply)
    before = state(w)
    reply, events = ask(w, "importer-1", wire.Attach(id=51, buffer=1, token=capability.export_token(w.secret, 1)))
    assert reply.code == "busy" and "limit 3" in reply.message
    assert [e for e in events if e["event"] == "busy"] == [
        {"event": "busy", "op": "attach", "importer": "importer-1", "limit": "attachments", "count": 3, "max": 3}]
    assert state(w) == before


def test_mappings_past_the_limit_are_busy() -> None:
    w = joined("pin", buffers=3, limits={"max_mappings": 2})
    atts = [att_of(w, "importer-1", b) for b in range(3)]
    for i, a in enumerate(atts[:2]):
        assert isinstance(ask(w, "importer-1", wire.Map(id=60 + i, attachment=a.id, token=a.token))[0], wire.MapReply)
    before = state(w)
    reply, events = ask(w, "importer-1", wire.Map(id=62, attachment=atts[2].id, token=atts[2].token))
    assert reply.code == "busy" and [e["limit"] for e in events if e["event"] == "busy"] == ["mappings"]
    assert state(w) == before
    assert isinstance(ask(w, "importer-1", wire.Unmap(id=63, attachment=atts[0].id, token=atts[0].token))[0],
                      wire.UnmapReply)
    assert isinstance(ask(w, "importer-1", wire.Map(id=64, attachment=atts[2].id, token=atts[2].token))[0],
                      wire.MapReply), "room again after an unmap"


def test_maps_waiting_past_the_limit_are_busy() -> None:
    # move-notify copies at once: a map during the copy waits (deferred) until it is done.
    w = joined("move-notify", buffers=4, vram_buffers=2, limits={"max_in_flight": 1})
    w.pressure()
    w.pressure()
    moving = [b for b in range(4) if w.exporter._buffers[b].move is not None]
    assert len(moving) == 2 and len(w.copies) == 2
    a, b = (att_of(w, "importer-1", m) for m in moving)
    out = w.exporter.handle_request(b"importer-1", wire.Map(id=70, attachment=a.id, token=a.token), w.now)
    assert not [x for x in out if hasattr(x, "message")], "deferred: no answer yet"
    before = state(w)
    reply, events = ask(w, "importer-1", wire.Map(id=71, attachment=b.id, token=b.token))
    assert reply.code == "busy" and [e["limit"] for e in events if e["event"] == "busy"] == ["in_flight"]
    assert state(w) == before
    w.settle()
    w.finish_copy()
    w.finish_copy()
    assert w.exporter._importers[1].waiting == set(), "the deferred map was served and forgotten"
