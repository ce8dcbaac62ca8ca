"""The pieces of fault tolerance that need no processes: the lease arithmetic, retries and the
duplicate filter, the seeded schedules."""

from __future__ import annotations

from runtime.process_faults import schedule
from protocol.lease import EXPORTER_LOST_LEASES, STOP_FRACTION, ImporterLease
from runtime import faults
from runtime.msgfaults import MessageFaults
from runtime.reliable import IN_PROGRESS, ReplyCache

MS = 1_000_000
LEASE = 500 * MS


def test_nothing_is_granted_before_the_first_answer() -> None:
    lease = ImporterLease(LEASE)
    lease.sent(1, 0)
    assert lease.deadline() is None and not lease.expired(10 * LEASE)


def test_the_device_stops_before_the_exporters_lease_on_it_can_run_out() -> None:
    lease = ImporterLease(LEASE)
    lease.sent(1, 100 * MS)
    lease.answered(1, 300 * MS)          # a slow answer: the grant counts from the send
    assert lease.deadline() == 100 * MS + int(STOP_FRACTION * LEASE)
    # The exporter heard the request no earlier than it was sent, so its lease runs at least
    # until send + lease: the device's deadline is always before that.
    assert lease.deadline() < 100 * MS + LEASE
    assert not lease.expired(lease.deadline() - 1) and lease.expired(lease.deadline())


def test_a_retried_request_counts_from_its_first_send() -> None:
    lease = ImporterLease(LEASE)
    lease.sent(7, 0)
    lease.sent(7, 200 * MS)              # the retry
    lease.answered(7, 250 * MS)
    assert lease.granted_send == 0


def test_an_error_saying_we_are_not_a_member_renews_nothing() -> None:
    lease = ImporterLease(LEASE)
    lease.sent(1, 0)
    lease.answered(1, 1 * MS, grant=False)
    assert lease.deadline() is None


def test_the_exporter_is_lost_only_after_two_leases_awake_without_an_answer() -> None:
    lease = ImporterLease(LEASE)
    lease.sent(1, 0)
    lease.answered(1, 1 * MS)
    lease.sent(2, 10 * MS)
    limit = EXPORTER_LOST_LEASES * LEASE
    assert not lease.exporter_lost(10 * MS + limit)
    assert lease.exporter_lost(10 * MS + limit + 1)
    lease.woke(10 * MS + limit)          # we were paused: the exporter gets another two leases
    assert not lease.exporter_lost(10 * MS + limit + 1)


def test_the_reply_cache_serves_a_request_once_and_replays_its_answer() -> None:
    cache = ReplyCache(per_peer=2, max_peers=2)
    assert cache.check(b"a", 1) is None
    assert cache.check(b"a", 1) == IN_PROGRESS        # a duplicate while it is served: dropped
    cache.answered(b"a", 1, b"reply-1")
    assert cache.check(b"a", 1) == b"reply-1"
    assert cache.check(b"b", 1) is None                # ids are per peer
    cache.check(b"c", 1)                               # a third peer evicts the oldest (a)
    assert cache.check(b"a", 1) is None


class _Loop:
    def __init__(self) -> None:
        self.later: list = []

    def now_ns(self) -> int:
        return 0

    def call_later(self, s, cb):
        self.later.append((s, cb))
        return len(self.later)

    def cancel(self, h) -> None:
        pass


class _Log:
    def __init__(self) -> None:
        self.events: list = []

    def emit(self, event, **f) -> None:
        self.events.append((event, f))


def _decisions(seed: int) -> list:
    sent: list = []
    log = _Log()
    spec = [faults.parse_cli("drop:p=0.3,target=exporter"), faults.parse_cli("dup:p=0.3,target=exporter")]
    mf = MessageFaults(_Loop(), log, "exporter", spec, seed, lambda peer, frame: sent.append(frame))  # type: ignore[arg-type]
    mf.start_clock()
    for i in range(200):
        mf.submit(b"p", bytes([i % 256]), "map", i)
    return [(e, f["kind"], f["id"]) for e, f in log.events]


def test_the_same_seed_gives_the_same_message_fault_decisions() -> None:
    a, b, c = _decisions(7), _decisions(7), _decisions(8)
    assert a == b and a != c
    kinds = {k for _, k, _ in a}
    assert kinds == {"drop", "dup"}


def test_message_faults_wait_for_the_workload() -> None:
    sent: list = []
    mf = MessageFaults(_Loop(), _Log(), "exporter", [faults.parse_cli("drop:target=exporter")], 1,  # type: ignore[arg-type]
                       lambda peer, frame: sent.append(frame))
    mf.submit(b"p", b"hello", "hello", 1)              # before start: joining always works
    assert sent == [b"hello"]


def test_the_process_fault_schedule_is_seeded_and_expands_targets() -> None:
    spec = [faults.parse_cli("pause:target=importers,at=1,for=0.5"), faults.parse_cli("kill:target=importer-2,at=2,p=0.5")]
    steps = [(s.t, s.action, s.target) for s in schedule(spec, 3, 2)]
    assert steps[:4] == [(1.0, "stop", "importer-1"), (1.0, "stop", "importer-2"),
                         (1.5, "cont", "importer-1"), (1.5, "cont", "importer-2")]
    assert steps == [(s.t, s.action, s.target) for s in schedule(spec, 3, 2)]
    fired = {seed: any(a == "kill" for _, a, _ in [(s.t, s.action, s.target) for s in schedule(spec, seed, 2)])
             for seed in range(20)}
    assert set(fired.values()) == {True, False}, "p=0.5 fires for some seeds and not others"


def test_requests_beyond_the_window_wait_in_order_and_go_out_as_answers_return() -> None:
    from runtime.reliable import Outstanding
    sent: list = []
    out = Outstanding(_Loop(), lambda peer, frame, op, i: sent.append(i), lambda *a: None,  # type: ignore[arg-type]
                      retry_s=0.1, window=2)
    for i in range(1, 6):
        out.send(b"", i, "attach", b"x")
    assert sent == [1, 2] and len(out) == 5
    out.answered(b"", 2)
    assert sent == [1, 2, 3]
    out.answered(b"", 1)
    assert sent == [1, 2, 3, 4]
    out.cancel()
    out.answered(b"", 3)
    assert sent == [1, 2, 3, 4] and len(out) == 0, "cancel forgets the waiting ones too"


def test_the_retransmission_timeout_follows_a_slow_peer() -> None:
    from runtime.reliable import Outstanding
    out = Outstanding(_Loop(), lambda *a: None, lambda *a: None, retry_s=0.1, max_backoff_s=5.0)  # type: ignore[arg-type]
    assert out.rto_s == 0.1
    for _ in range(20):
        out._sample(0.8)                 # answers take 0.8 s: resending after 0.1 s would only flood it
    assert 0.8 <= out.rto_s <= 5.0


def test_a_lease_too_short_for_the_machine_is_said_before_the_run() -> None:
    from deploy.options import RunParams
    from deploy.run import lease_warning
    assert "--lease-ms" in (lease_warning(RunParams(importers=32), 2) or "")
    assert lease_warning(RunParams(importers=4), 2) is None
    assert lease_warning(RunParams(importers=32, lease_ms=3000.0), 2) is None
