"""Linux 7.1 in the sans-IO halves (issue 16): revocation, the bounded unmap wait, importer kinds,
and the kref-reinit mutant, each in a fixed order of deliveries; the checker judges the mutant."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol import wire
from protocol.actions import Invalidated, Send, StopDma
from protocol.exporter import MoveState, compile_spec
from protocol.strategies import STRATEGIES, resolve
from tests.checker_helpers import H
from tests.world import World

MUTANT = "revoke+kref-reinit"


def joined(strategy: str = "revoke", **kw) -> World:
    w = World(strategy, **kw)
    w.join_all()
    assert w.ready == set(w.peers)
    return w


def cached(w: World, name: str, job: int, buffer: int, access: str = "write") -> None:
    """A whole job; a dynamic importer of revoke keeps the mapping afterwards."""
    w.job(name, job, buffer, access)
    w.settle()
    w.dma_done(name, job)
    w.settle()


def revoked(w: World, buffer: int = 0) -> None:
    w.revoke(buffer)
    w.settle()
    w.check_fences()
    w.settle()


def fields(w: World, event: str, svc: str | None = None) -> list[dict]:
    return [f for s, e, f in w.events if e == event and (svc is None or s == svc)]


def state(w: World, buffer: int) -> MoveState:
    return w.exporter.state.buffers[buffer].state


# ---------------------------------------------------------------------------------- the tables

def test_only_the_revoking_tables_revoke_and_the_mutant_differs_in_its_rows() -> None:
    assert [n for n, m in STRATEGIES.items() if compile_spec(m.EXPORTER).revokes] == ["revoke"]
    mutant, base = resolve(MUTANT), STRATEGIES["revoke"]
    assert resolve(MUTANT) is mutant and mutant.MUTANT["base"] == "revoke" and "kref" in mutant.MUTANT["source"]
    assert mutant.MUTANT["mutations"] == ["kref-reinit"] and "revoke_incomplete" in mutant.MUTANT["expect"]
    assert compile_spec(mutant.EXPORTER).revokes
    changed = {k for k in base.EXPORTER.table if base.EXPORTER.table[k] != mutant.EXPORTER.table[k]}
    assert changed == {(MoveState.UNMAP_WAIT, wire_event("unmaps_done")), (MoveState.REVOKED, wire_event("unrevoke")),
                       (MoveState.UNREVOKE_FENCE_WAIT, wire_event("fences_signaled"))}
    assert mutant.IMPORTER.table == base.IMPORTER.table


def wire_event(name: str):
    from protocol.exporter import MoveEvent
    return MoveEvent(name)


def test_the_7_1_message_carries_exactly_one_operation() -> None:
    ok = wire.InvalidateMappings(id=1, buffer=0, attachment=2, gen=1, move=0, revoke=3)
    assert wire.decode(wire.encode(ok)) == ok
    for move, revoke in ((0, 0), (4, 3)):
        with pytest.raises(wire.ProtocolError, match="exactly one of 'move' and 'revoke'") as err:
            wire.decode(wire.encode(wire.InvalidateMappings(id=1, buffer=0, attachment=2, gen=1, move=move,
                                                            revoke=revoke)))
        assert err.value.code == "bad_message"
    assert wire.decode(wire.encode(wire.Attach(id=1, buffer=0, token="t", revocable=False))).revocable is False


# ---------------------------------------------------------------------------------- revocation

def test_a_revoked_buffer_refuses_maps_until_it_is_unrevoked() -> None:
    w = joined(importers=2)
    cached(w, "importer-1", 1, 0)
    revoked(w)
    assert state(w, 0) is MoveState.REVOKED
    names = w.event_names("exporter")
    order = [names.index(e) for e in ("resv_lock", "revoke", "invalidate_mappings_sent", "fence_wait_begin",
                                      "fence_wait_end", "resv_unlock", "unmap_wait_begin", "unmap_wait_end")]
    assert order == sorted(order)
    sent = fields(w, "invalidate_mappings_sent")
    assert {f["importer"] for f in sent} == {"importer-1", "importer-2"} and {f["revoke"] for f in sent} == {1}
    assert fields(w, "invalidate_mappings_returned", "importer-1")[0]["stopped"] is True   # nothing was running
    w.job("importer-2", 2, 0, "read")
    w.settle()
    assert "no_device" in fields(w, "job_failed", "importer-2")[-1]["reason"]
    w.unrevoke(0)
    w.settle()
    w.check_fences()
    w.settle()
    assert state(w, 0) is MoveState.IDLE
    assert fields(w, "unrevoke") == [{"buffer": 0, "revoke": 1, "trigger": "fences_signaled"}]
    w.job("importer-2", 3, 0, "read")
    w.settle()
    assert fields(w, "map", "importer-2")[-1]["buffer"] == 0, "maps again after un-revoke"


def test_the_revocation_waits_for_the_fences_of_running_dma_then_for_the_unmap() -> None:
    w = joined()
    w.job("importer-1", 1, 0, "write")
    w.settle()
    revoked(w)
    assert state(w, 0) is MoveState.REVOKE_FENCE_WAIT, "the job's fence holds the revocation under the lock"
    assert fields(w, "invalidate_mappings_returned", "importer-1")[0]["stopped"] is False
    assert w.exporter.state.buffers[0].locked
    w.dma_done("importer-1", 1)     # the job ends under its fence; the importer unmaps at once
    w.check_fences()
    w.settle()
    assert state(w, 0) is MoveState.REVOKED
    assert w.finished[-1].ok, "a job begun before the invalidation completes"


def test_a_revocation_waits_for_a_move_that_holds_the_lock() -> None:
    w = joined()
    w.job("importer-1", 1, 0, "write")
    w.settle()
    w.pressure()                    # the memory manager moves buffer 0 (in vram)
    w.settle()
    assert state(w, 0) is MoveState.FENCE_WAIT
    w.revoke(0)
    assert state(w, 0) is MoveState.FENCE_WAIT and "revoke" not in w.event_names("exporter")
    w.dma_done("importer-1", 1)
    w.check_fences()
    w.finish_copy()
    w.settle()
    w.check_fences()
    w.settle()
    assert state(w, 0) is MoveState.REVOKED
    names = w.event_names("exporter")
    assert names.index("move_end") < names.index("revoke")
    # the memory manager leaves a revoked buffer alone; a move wanted anyway is refused
    w.exporter.moves.dispatch(w.exporter.state.buffers[0], wire_event("move_wanted"), w.now, to="vram", reason="promote")
    w._apply("exporter", w.exporter._take())
    assert fields(w, "move_refused")[-1]["reason"] == "revoked"


def _ignored_revocation(strategy: str) -> World:
    """Buffer 0 revoked while importer-1 holds a mapping of it and drops the invalidate_mappings
    call on the floor: the revocation reaches its unmap wait with that mapping live."""
    w = joined(strategy, importers=2)
    cached(w, "importer-1", 1, 0)
    w.revoke(0)
    w.to_importer["importer-1"].clear()      # importer-1 ignores the call
    w.settle()
    w.fire_timer(("notify", 1))              # the exporter stops waiting for its return
    w.settle()
    w.check_fences()
    w.settle()
    assert state(w, 0) is MoveState.UNMAP_WAIT
    assert fields(w, "unmap_wait_begin")[0]["importers"] == ["importer-1"]
    return w


def test_the_unmap_wait_has_no_bound_and_no_warning() -> None:
    """7.1 as merged: wait_for_completion(), no timeout and no WARN. An importer that keeps its
    mapping holds the revocation (and the un-revoke behind it) until it unmaps."""
    w = _ignored_revocation("revoke")
    assert fields(w, "unmap_wait_begin")[0]["bound_ms"] is None
    assert ("unmap-wait", 1) not in w.timers, "no timer bounds the wait"
    w.unrevoke(0)
    assert state(w, 0) is MoveState.UNMAP_WAIT, "the un-revoke waits for the unmap wait"
    assert fields(w, "unmap_wait_warning") == [] and fields(w, "unmap_wait_end") == []
    w._apply("importer-1", w.peers["importer-1"].shutdown(w.now))   # leaving, it unmaps at last
    w.settle()
    assert fields(w, "unmap_wait_end")[0]["late"] == []
    assert state(w, 0) in (MoveState.UNREVOKING, MoveState.UNREVOKE_FENCE_WAIT, MoveState.IDLE)


def test_v6_unmap_timeout_warns_and_goes_on_with_the_mapping_live() -> None:
    """The posted v5/v6 drafts: past the bound, WARN and return: the revocation is over while
    importer-1 still has the buffer mapped."""
    w = _ignored_revocation("revoke+v6-unmap-timeout")
    assert fields(w, "unmap_wait_begin")[0]["bound_ms"] == 1000.0
    w.fire_timer(("unmap-wait", 1))
    warn = fields(w, "unmap_wait_warning")
    assert [(f["importer"], f["message"]) for f in warn] == [
        ("importer-1", "Timed out waiting for DMABUF unmap, importer has a broken invalidate_mapping()")]
    assert state(w, 0) is MoveState.REVOKED, "it does not wait on"
    assert fields(w, "unmap_wait_end")[0]["late"] == ["importer-1"]
    assert w.exporter.state.buffers[0].mapped, "the mapping is still live"


def _closed_after_revocation(strategy: str) -> World:
    """Buffer 0 revoked (every unmap in, the revocation over), then the device closed."""
    w = joined(strategy, importers=2)
    cached(w, "importer-1", 1, 0)
    revoked(w)
    assert state(w, 0) is MoveState.REVOKED and len(fields(w, "unmap_wait_end")) == 1
    return closed(w)


def closed(w: World, buffer: int = 0) -> World:
    """The `close` fault on `buffer`, and everything it sets going."""
    w.tick()
    w._apply("exporter", w.exporter.close_buffer(buffer, w.now))
    w.settle()
    w.check_fences()
    w.settle()
    return w


def test_closing_the_device_leaves_a_revoked_buffer_alone() -> None:
    """After the May 2026 fix cleanup goes through the revoke path, idempotent on a revoked buffer."""
    w = _closed_after_revocation("revoke")
    assert state(w, 0) is MoveState.REVOKED
    assert fields(w, "revoke") == fields(w, "revoke")[:1] and len(fields(w, "unmap_wait_begin")) == 1
    assert fields(w, "refcount_warning") == []


def test_closing_the_device_revokes_a_buffer_not_revoked() -> None:
    w = joined("revoke", importers=2)
    cached(w, "importer-1", 1, 0)
    closed(w)
    assert state(w, 0) is MoveState.REVOKED
    assert [f["buffer"] for f in fields(w, "revoke")] == [0] and len(fields(w, "unmap_wait_end")) == 1


def test_cleanup_redrain_underflows_and_waits_for_nothing() -> None:
    """1a8a5227f229 as merged: cleanup drains the revoked buffer again: "the second kref_put
    underflowed and the subsequent wait_for_completion() blocked on a completion that the first run
    had already consumed"."""
    w = _closed_after_revocation("revoke+cleanup-redrain")
    assert [f["message"] for f in fields(w, "refcount_warning")] == ["refcount_t: underflow; use-after-free"]
    assert len(fields(w, "unmap_wait_begin")) == 2 and len(fields(w, "unmap_wait_end")) == 1
    assert state(w, 0) is MoveState.UNMAP_WAIT, "the second wait never ends"
    assert not w.exporter.state.buffers[0].mapped, "with no mapping live"


# ---------------------------------------------------------------------------------- importer kinds

def test_a_static_importer_is_refused_by_revoke_and_pinned_by_resv_fence() -> None:
    w = joined("revoke", importers=2, kinds={"importer-2": "static"})
    atts = w.peers["importer-2"]._atts
    assert {a.state.value for a in atts.values()} == {"refused"}
    refused = fields(w, "attach_refused", "importer-2")
    assert len(refused) == w.buffers and all(f["reason"].startswith("not_supported") for f in refused)
    assert {f["importer"] for f in fields(w, "attach", "exporter")} == {"importer-1"}
    assert w.peers["importer-2"].idle_buffers() == []

    w = joined("resv-fence", importers=2, kinds={"importer-2": "static"})
    pins = fields(w, "pin", "exporter")
    assert {f["importer"] for f in pins} == {"importer-2"} and len(pins) == w.buffers
    assert [f.get("revocable") for f in fields(w, "attach", "exporter") if f["importer"] == "importer-2"] == \
        [False] * w.buffers
    w.pressure()
    assert [f["reason"] for f in fields(w, "move_refused")] == ["pinned"]


def test_a_pinned_revocable_importer_stops_its_dma_before_its_revoke_callback_returns() -> None:
    w = joined(kinds={"importer-1": "pinned-revocable"})
    assert len(fields(w, "pin", "exporter")) == w.buffers, "it pins every buffer it attaches"
    w.pressure()
    assert [f["reason"] for f in fields(w, "move_refused")] == ["pinned"]
    w.job("importer-1", 1, 0, "write")
    w.settle()
    w.revoke(0)
    frame = w.to_importer["importer-1"].popleft()
    actions = w.peers["importer-1"].handle_request(wire.decode(frame), w.now)
    kinds = [type(a).__name__ if not isinstance(a, Send) else type(a.message).__name__ for a in actions]
    assert kinds.index("StopDma") < kinds.index("OkReply") < kinds.index("Invalidated") < kinds.index("Unmap")
    stop = next(a for a in actions if isinstance(a, StopDma))
    assert stop.job == 1 and "revoke callback" in stop.reason
    returned = [a.fields for a in actions if getattr(a, "event", "") == "invalidate_mappings_returned"]
    assert returned[0]["stopped"] is True and returned[0]["revoke"] == 1
    assert any(isinstance(a, Invalidated) for a in actions)
    w._apply("importer-1", actions)
    w.settle()
    w.check_fences()
    w.settle()
    assert state(w, 0) is MoveState.REVOKED
    assert not w.finished[-1].ok, "the job was stopped"


# ---------------------------------------------------------------------------------- the mutant

def kref_story(strategy: str) -> World:
    """Revoke; un-revoke with a map arriving while the un-revoke holds the lock; map again; revoke
    again with the importer's unmap held back until the exporter's wait is over (or not)."""
    w = joined(strategy)
    cached(w, "importer-1", 1, 0)
    revoked(w)
    w.unrevoke(0)                                  # under the lock: invalidate_mappings out
    w.job("importer-1", 2, 0, "write")             # its map reaches the exporter first
    w.deliver_to_exporter()
    w.settle()
    w.check_fences()
    w.settle()
    assert state(w, 0) is MoveState.IDLE
    cached(w, "importer-1", 3, 0)                  # mapped again, and kept
    w.revoke(0)
    w.deliver_to_importer("importer-1")            # it returns and sends its unmap...
    w.deliver_to_exporter()                        # ...the return arrives; the unmap not yet
    w.check_fences()
    w.settle()
    return w


def judged(w: World, tmp_path: Path) -> dict:
    h = H()
    h.events = list(w.history)
    return h.judge(tmp_path)


def test_kref_reinit_ends_a_revocation_with_a_mapping_live_and_the_checker_catches_it(tmp_path: Path) -> None:
    w = kref_story(MUTANT)
    warnings = [f["message"] for f in fields(w, "refcount_warning")]
    assert "refcount_t: addition on 0; use-after-free" in warnings
    ends = [i for i, (s, e, f) in enumerate(w.events) if e == "unmap_wait_end"]
    served = [i for i, (s, e, f) in enumerate(w.events) if e == "unmap_served"]
    assert len(ends) == 2 and served[-1] > ends[-1], "the second wait ended before the last unmap came"
    r = judged(w, tmp_path)
    items = r["findings"]["revoke_incomplete"]["items"]
    assert r["findings"]["revoke_incomplete"]["count"] == 1 and items[0]["importer"] == "importer-1"
    assert "ended its unmap wait" in items[0]["sentence"] and "unmap_served" in items[0]["sentence"]


def test_revoke_counts_the_map_served_at_un_revoke_and_waits_for_its_unmap(tmp_path: Path) -> None:
    w = kref_story("revoke")
    assert fields(w, "refcount_warning") == []
    assert "no_device" in fields(w, "job_failed", "importer-1")[0]["reason"], "the map came while still revoked"
    r = judged(w, tmp_path)
    assert r["findings"]["revoke_incomplete"]["count"] == 0 and r["findings"]["total"] == 0
    ends = [i for i, (s, e, f) in enumerate(w.events) if e == "unmap_wait_end"]
    served = [i for i, (s, e, f) in enumerate(w.events) if e == "unmap_served"]
    assert len(ends) == 2 and served[-1] < ends[-1], "the second wait ended with the last unmap"
