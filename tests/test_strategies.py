"""The strategies' sans-IO halves, driven in one process: their rules, and the orders that
make the unsafe ones hand out what they should not, step by step.

Whether an order is a race is the checker's verdict, not this file's: tests/test_sim_races.py
asks it about the same strategies run by the real services in the simulator (move-notify's copy
under running DMA, move-notify-ack's crossing map, unmap-hint's broken promise, resv-fence under
every fault), with seeded schedules in place of the random walk that used to be here."""

from __future__ import annotations

import pytest

from protocol.machine import TransitionError
from protocol.strategies import STRATEGIES
from tests.world import World


def joined(strategy: str, **kw) -> World:
    w = World(strategy, **kw)
    w.join_all()
    assert w.ready == set(w.peers), "every importer attached every buffer"
    return w


def moving_under_a_write(strategy: str) -> tuple[World, int]:
    """importer-1 writing a vram buffer when the memory manager decides to move it; every message
    delivered. Returns the world and the buffer."""
    w = joined(strategy)
    buffer = vram_buffer(w)
    w.job("importer-1", 1, buffer, "write")
    w.settle()
    w.pressure()
    w.settle()
    return w, buffer


def placement(w: World, buffer: int):
    return w.exporter.placement_of(buffer)


def vram_buffer(w: World) -> int:
    """A buffer in the scarce heap: the first the memory manager will evict."""
    return next(b for b in range(w.buffers) if placement(w, b).heap == "vram")


def run_job(w: World, name: str, job: int, buffer: int, access: str = "write") -> None:
    """A whole job with nothing in between: map, DMA, unmap."""
    w.job(name, job, buffer, access)
    w.settle()
    w.check_kernel_fences()
    w.settle()
    w.dma_done(name, job)
    w.settle()


# ---------------------------------------------------------------------------------- every strategy

@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_job_maps_dmas_and_unmaps(strategy: str) -> None:
    w = joined(strategy)
    run_job(w, "importer-1", 1, 0)
    job = w.jobs[("importer-1", 1)]
    assert job.start.placement == placement(w, 0)
    assert w.finished and w.finished[-1].ok
    names = w.event_names("importer-1")
    if strategy == "revoke":  # a dynamic importer of 7.1 keeps its mapping until it is invalidated
        assert "map" in names and "unmap" not in names
        assert w.peers["importer-1"]._atts[0].state.value == "mapped"
        return
    assert names.index("map") < names.index("unmap")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_unknown_handles_get_clear_errors_and_change_nothing(strategy: str) -> None:
    from protocol import wire
    w = joined(strategy)
    before = w.exporter.placement_of(0)
    mine = w.peers["importer-1"]._atts[0]
    for msg, code in ((wire.Map(id=900, attachment=999, token="0" * 32), "no_such_attachment"),
                      (wire.Attach(id=901, buffer=77, token="0" * 32), "no_such_buffer"),
                      (wire.Unmap(id=902, attachment=mine.id, token=mine.token), "bad_state")):
        out = w.exporter.handle_request(b"importer-1", msg, 0)
        reply = out[-1].message
        assert isinstance(reply, wire.ErrorReply) and reply.code == code, reply
        assert str(msg.id) not in reply.message or True
    stranger = w.exporter.handle_request(b"nobody", wire.Map(id=903, attachment=1, token=mine.token), 0)[-1].message
    assert stranger.code == "no_such_importer"
    assert w.exporter.placement_of(0) == before


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_another_importers_attachment_is_access_denied(strategy: str) -> None:
    from protocol import wire
    w = joined(strategy, importers=2)
    theirs = next(iter(w.peers["importer-2"]._by_id.values()))
    out = w.exporter.handle_request(b"importer-1", wire.Map(id=5, attachment=theirs.id, token=theirs.token), 0)
    reply = out[-1].message
    assert isinstance(reply, wire.ErrorReply) and reply.code == "access_denied"
    denied = [a.fields for a in out if getattr(a, "event", "") == "access_denied"]
    assert denied == [{"op": "map", "peer": "importer-1", "reason": "another importer's attachment",
                       "attachment": theirs.id}]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_leaving_detaches_everything(strategy: str) -> None:
    w = joined(strategy, importers=2)
    for name, imp in w.peers.items():
        w._apply(name, imp.shutdown(w.now))
    w.settle()
    assert all(imp.has_left for imp in w.peers.values())
    assert w.event_names("exporter").count("detach") == 2 * w.buffers


# ---------------------------------------------------------------------------------- pin

def test_pin_refuses_every_move_of_an_attached_buffer() -> None:
    w = joined("pin")
    for _ in range(5):
        w.pressure()
    refused = [f for s, e, f in w.events if e == "move_refused"]
    assert len(refused) == 5 and {f["reason"] for f in refused} == {"pinned"}
    assert "move_begin" not in w.event_names()


def test_pin_moves_a_buffer_nobody_attached() -> None:
    w = World("pin", buffers=2, vram_buffers=1)   # nobody joined: nothing pinned
    w.pressure()
    assert "move_begin" in w.event_names()


def test_pin_tears_iommu_entries_down_at_unmap() -> None:
    w = joined("pin")
    w.job("importer-1", 1, 0, "read")
    w.settle()
    assert w.iommu["importer-1"], "programmed while mapped"
    w.dma_done("importer-1", 1)
    w.settle()
    assert not w.iommu["importer-1"]


# ---------------------------------------------------------------------------------- move-notify

def test_move_notify_copies_under_dma_in_flight() -> None:
    """The hazard: the exporter notifies and copies at once; the running write goes on."""
    w = joined("move-notify")
    w.job("importer-1", 1, vram_buffer(w), "write")
    w.settle()
    w.pressure()                                   # evict the buffer the device is writing
    assert w.copies, "the copy starts without waiting for anybody"
    assert w.jobs[("importer-1", 1)].ended is None, "while the device's write is still running"
    copy = w.finish_copy()
    assert copy.src == w.jobs[("importer-1", 1)].start.placement, "copied away from under the write"
    w.settle()
    w.dma_done("importer-1", 1)
    assert "invalidate" in w.event_names("importer-1")


# ---------------------------------------------------------------------------------- move-notify-ack

def fatal_crossing(strategy: str) -> World:
    """The order the 2012 thread feared: the importer's map is on the wire when the move starts;
    the exporter notifies, then serves the map; the importer sees the notification first (nothing
    mapped: it acks), then the map reply."""
    w = joined(strategy)
    buffer = vram_buffer(w)
    w.job("importer-1", 1, buffer, "write")      # map request queued towards the exporter
    assert len(w.to_exporter) == 1
    w.pressure()                                   # move_begin; move_notify queued to importer-1
    w.deliver_to_exporter()                        # the map arrives during the move
    w.deliver_to_importer("importer-1")            # move_notify first: it acks (or returns)
    w.settle()                                     # ack reaches the exporter, the map reply the importer
    while w.copies:
        w.finish_copy()
        w.settle()
    w.check_fences()
    w.settle()
    while w.copies:
        w.finish_copy()
        w.settle()
    w.check_kernel_fences()
    w.settle()
    return w


def test_move_notify_ack_hands_out_the_old_placement_when_a_map_crosses_the_notification() -> None:
    w = fatal_crossing("move-notify-ack")
    job = w.jobs[("importer-1", 1)]
    assert job.start.placement.gen == 1, "the device was handed the old placement"
    assert w.exporter.placement_of(job.start.buffer).gen == 2, "while the buffer moved on"
    served = [f for s, e, f in w.events if e == "map_served"][-1]
    begun = [f for s, e, f in w.events if e == "move_begin"][-1]
    assert served["gen"] == begun["from_gen"]
    assert job.ended is None and not w.copies, "the device writes the old placement after the copy"
    assert "ack_sent" in w.event_names("importer-1")


def test_resv_fence_defers_the_crossing_map_until_the_move_is_done() -> None:
    w = fatal_crossing("resv-fence")
    job = w.jobs[("importer-1", 1)]
    assert job.start.placement.gen == 2, "the map waited for the reservation lock"
    served = [f for s, e, f in w.events if e == "map_served"][-1]
    assert served["deferred_ns"] > 0


def test_move_notify_ack_waits_for_the_running_dma_before_copying() -> None:
    w, buffer = moving_under_a_write("move-notify-ack")
    assert not w.copies, "no copy while the device's write is running"
    w.dma_done("importer-1", 1)
    w.settle()
    assert w.copies


def test_move_notify_ack_times_out_and_copies_anyway() -> None:
    w, buffer = moving_under_a_write("move-notify-ack")
    w.fire_timer(("notify", 1))
    assert w.copies and "ack_timeout" in w.event_names("exporter")


# ---------------------------------------------------------------------------------- revalidate

def test_revalidate_refuses_a_mapped_buffer_and_moves_an_unmapped_one() -> None:
    w = joined("revalidate")
    buffer = vram_buffer(w)
    w.job("importer-1", 1, buffer, "read")
    w.settle()
    w.pressure()
    assert [f["reason"] for s, e, f in w.events if e == "move_refused"] == ["mapped"]
    w.dma_done("importer-1", 1)
    w.settle()
    w.pressure()
    assert w.copies


def test_revalidate_keeps_iommu_entries_and_remaps_when_told_moved() -> None:
    w = joined("revalidate")
    buffer = vram_buffer(w)
    run_job(w, "importer-1", 1, buffer)
    old = placement(w, buffer)
    assert w.iommu["importer-1"], "entries kept after unmap"
    w.pressure()
    while w.copies:
        w.finish_copy()
    w.settle()
    stale_entry = next(iter(w.iommu["importer-1"].values()))
    assert stale_entry == old and placement(w, buffer) != old, "the hole in the IOMMU fence"
    run_job(w, "importer-1", 2, buffer)
    maps = [f for s, e, f in w.events if s == "importer-1" and e == "map"]
    assert maps[-1]["moved"] and not maps[-1]["reused"] and maps[-1]["gen"] == old.gen + 1


def test_revalidate_reuses_entries_when_nothing_moved() -> None:
    w = joined("revalidate")
    run_job(w, "importer-1", 1, 0)
    run_job(w, "importer-1", 2, 0)
    maps = [f for s, e, f in w.events if s == "importer-1" and e == "map"]
    assert [m["reused"] for m in maps] == [False, True]


# ---------------------------------------------------------------------------------- unmap-hint

def test_unmap_hint_optimistic_breaks_its_promise_and_the_cache_goes_stale() -> None:
    w = joined("unmap-hint")
    buffer = vram_buffer(w)
    run_job(w, "importer-1", 1, buffer, "write")
    unmaps = [f for s, e, f in w.events if s == "importer-1" and e == "unmap"]
    assert unmaps[-1]["will_move"] is False and unmaps[-1]["kept_iommu"]
    w.pressure()                                   # pressure: move it anyway
    begun = [f for s, e, f in w.events if e == "move_begin"][-1]
    assert begun["broke_promise"]
    while w.copies:
        w.finish_copy()
    w.settle()
    run_job(w, "importer-1", 2, buffer, "write")
    job = w.jobs[("importer-1", 2)]
    assert job.start.placement.gen == 1 and placement(w, buffer).gen >= 2, "a write into the freed range"


def test_unmap_hint_conservative_always_says_will_move_and_every_map_remaps() -> None:
    w = joined("unmap-hint", hint_policy="conservative")
    buffer = vram_buffer(w)
    run_job(w, "importer-1", 1, buffer)
    w.pressure()
    while w.copies:
        w.finish_copy()
    w.settle()
    run_job(w, "importer-1", 2, buffer)
    maps = [f for s, e, f in w.events if s == "importer-1" and e == "map"]
    assert [m["reused"] for m in maps] == [False, False]
    assert all(f["will_move"] for s, e, f in w.events if e == "unmap")
    assert w.jobs[("importer-1", 2)].start.placement == placement(w, buffer), "the new placement"


def test_unmap_hint_queues_a_move_of_a_mapped_buffer_until_the_last_unmap() -> None:
    w = joined("unmap-hint")
    buffer = vram_buffer(w)
    w.job("importer-1", 1, buffer, "write")
    w.settle()
    w.pressure()
    assert "move_queued" in w.event_names() and not w.copies
    w.dma_done("importer-1", 1)
    w.settle()
    assert w.copies, "the last unmap started the move"
    unmap = [f for s, e, f in w.events if s == "importer-1" and e == "unmap"][-1]
    assert unmap["will_move"] is True


# ---------------------------------------------------------------------------------- resv-fence

def test_resv_fence_waits_for_the_fence_of_running_dma() -> None:
    w = joined("resv-fence")
    buffer = vram_buffer(w)
    w.job("importer-1", 1, buffer, "write")
    w.settle()
    assert w.jobs[("importer-1", 1)].start.fenced
    w.pressure()
    w.settle()                                     # the callback returned: now the fence wait
    assert w.fence_waits and not w.copies
    w.check_fences()
    assert not w.copies, "the write's fence has not signaled"
    w.dma_done("importer-1", 1)
    w.settle()
    w.check_fences()
    assert w.copies
    w.finish_copy()
    w.settle()
    names = w.event_names("exporter")
    # The copy is pipelined: the lock is released once the copy has started, the old range
    # freed when it ends.
    assert names.index("resv_lock") < names.index("fence_wait_begin") < names.index("resv_unlock") < names.index("free")


def test_resv_fence_forces_a_hung_importers_fences_and_revokes_it() -> None:
    w, buffer = moving_under_a_write("resv-fence")
    w.time_out_fences(1)                           # importer-1 is alive (heard from just now)
    forced = [f for s, e, f in w.events if e == "fence_signal" and f.get("forced")]
    assert forced and forced[0]["error"] == "timeout"
    assert "attachment_revoked" in w.event_names("exporter")
    w.check_fences()
    assert not w.copies, "forced is not stopped: a chunk under way may still be writing"
    assert [f["importers"] for s, e, f in w.events if e == "reset_wait_begin"] == [["importer-1"]]
    w.reset_devices()                              # the device aborts the job and signals: stopped
    w.check_fences()
    assert "reset_confirmed" in w.event_names("exporter")
    assert w.copies, "the move goes on once the device confirmed"
    assert ("reset", 1) not in w.timers, "the grace timer was cancelled"


def test_resv_fence_revokes_a_device_that_does_not_confirm_its_reset() -> None:
    w, buffer = moving_under_a_write("resv-fence")
    w.time_out_fences(1)
    w.check_fences()
    assert not w.copies and ("reset", 1) in w.timers
    w.fire_timer(("reset", 1))                     # the grace is over: importer-1 never confirmed
    silent = [f for s, e, f in w.events if e == "reset_unconfirmed"]
    assert [f["importer"] for f in silent] == ["importer-1"]
    lost = [f for s, e, f in w.events if e == "importer_lost"]
    assert lost and lost[0]["reason"] == "reset unconfirmed"
    w.check_fences()
    assert w.copies, "the wait goes on without it"


LEASE_NS = int(0.5e9)


def test_resv_fence_leaves_a_silent_importer_to_its_lease() -> None:
    """A paused device may resume mid-DMA: its fences are not forced at the fence timeout, only
    when its lease expires (by which time it has stopped its DMA itself)."""
    w, buffer = moving_under_a_write("resv-fence")
    w.tick(LEASE_NS // 2 + 1)                      # silent for more than half a lease
    w.time_out_fences(1)
    assert not [f for s, e, f in w.events if e == "fence_signal" and f.get("forced")]
    w.check_fences()
    assert not w.copies, "no copy under a device that may still be running"
    w.check_leases()
    assert not w.copies and "importer_lost" not in w.event_names()
    w.tick(LEASE_NS)
    w.check_leases()
    lost = [f for s, e, f in w.events if e == "importer_lost"]
    assert lost and lost[0]["reason"] == "lease expired"
    w.check_fences()
    assert w.copies, "the lease bounded the wait"


def test_resv_fence_revokes_an_importer_whose_callback_never_returns() -> None:
    w = joined("resv-fence")
    w.pressure()
    w.to_importer["importer-1"].clear()            # the notification is lost: no return
    w.fire_timer(("notify", 1))                    # importer-1 is alive: it is ignoring us
    assert "attachment_revoked" in w.event_names("exporter")
    assert "fence_wait_begin" in w.event_names("exporter")


def test_resv_fence_waits_for_the_lease_of_an_importer_that_went_silent() -> None:
    w = joined("resv-fence")
    w.pressure()
    w.to_importer["importer-1"].clear()
    w.tick(LEASE_NS // 2 + 1)
    w.fire_timer(("notify", 1))
    assert "attachment_revoked" not in w.event_names("exporter") and "fence_wait_begin" not in w.event_names()
    w.tick(LEASE_NS)
    w.check_leases()
    assert "attachment_revoked" in w.event_names("exporter") and "fence_wait_begin" in w.event_names()


def test_a_hello_under_a_known_name_replaces_the_previous_incarnation() -> None:
    from protocol import wire
    w = joined("resv-fence")
    w.job("importer-1", 1, vram_buffer(w), "write")
    w.settle()
    reply = w.exporter.handle_request(b"importer-1", wire.Hello(id=99, name="importer-1", pid=4242, strategy="resv-fence",
                                                                         token=w.peers["importer-1"].join_token), w.now)
    assert isinstance(reply[-1].message, wire.HelloReply)
    emitted = [(a.event, a.fields) for a in reply if hasattr(a, "event")]
    lost = [f for e, f in emitted if e == "importer_lost"]
    assert lost and lost[0]["reason"] == "restarted"
    assert [e for e, f in emitted].count("attachment_revoked") == w.buffers


def test_resv_fence_does_not_notify_or_move_a_pinned_buffer() -> None:
    from protocol import wire
    w = joined("resv-fence")
    buffer = vram_buffer(w)
    att = w.peers["importer-1"]._atts[buffer]
    pinned = w.exporter.handle_request(b"importer-1", wire.Pin(id=77, attachment=att.id, token=att.token), 0)
    assert isinstance(pinned[-1].message, wire.PinReply)
    w.pressure()
    assert [f["reason"] for s, e, f in w.events if e == "move_refused"] == ["pinned"]
    assert "move_notify_sent" not in w.event_names()


# ---------------------------------------------------------------------------------- tables

@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_violation_names_strategy_state_and_event(strategy: str) -> None:
    w = joined(strategy)
    w.job("importer-1", 1, 0, "read")
    with pytest.raises(TransitionError) as err:
        w.job("importer-1", 2, 0, "read")          # the attachment is busy
    assert strategy in str(err.value) and "job" in str(err.value)
