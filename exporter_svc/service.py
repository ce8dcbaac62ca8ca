"""The exporter's shell: the heaps and the fence table in shared memory, the ROUTER socket the
importers talk to, the copy engine, fence polling, timers and memory pressure. Every protocol
decision is the strategy's exporter half (protocol/exporter.py); this file only performs actions.

Below the protocol: requests are served once per (peer, id) and answered again from a cache
(runtime/reliable.py), move_notify is resent until answered, the half's timers (notify and fence
timeouts, the lease check) fire after reading whatever the importers sent meanwhile, fences are
polled in shared memory and reported as they signal, message faults act on what we send, and at
stop every buffer's final bytes are summarised (`final_content`) for the checker.

Security (runtime/security.py): the run's secret, which keys every token, comes from the
credentials file (mode 0600) that dmabuf-emu wrote; run by hand without one, the exporter makes a
secret and writes DIR/secrets/exporter.json itself. A tcp endpoint beyond loopback is refused
unless the credentials carry CURVE keys; with them the rpc socket is a CURVE server whose ZAP
handler, served from this loop, admits only the importers' keys.

Seams (runtime/env.py): the loop, the sockets, the segments, the event sink and the random
numbers come from the ServiceEnv, and the secret may be handed in (`credentials`), so that the
simulator runs this very class. The copy engine runs on the loop's `copy` lane.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import zmq

from protocol import wire
from protocol.actions import (CancelTimer, ConfirmStopped, CopyBuffer, ForceCompleteFences, PublishKernelFence,
                              Send, SignalKernelFence, StampBuffer, StartTimer, WaitFences)
from protocol.exporter import Exporter, ExporterConfig, HeapConfig, compile_spec
from protocol.heap import LINE
from protocol.params import default_s
from protocol.strategies import resolve as resolve_strategy
from runtime import memory, security, shm
from runtime.env import ServiceEnv
from runtime.fences import FenceTable, table_bytes
from runtime.msgfaults import MessageFaults
from runtime.reliable import IN_PROGRESS, Outstanding, ReplyCache
from runtime.service import ServiceShell
from runtime.timers import HalfTimers

from exporter_svc import revocations

COPY_CHUNK = 256 * 1024      # bytes copied per loop turn: messages are served between chunks
FENCE_POLL_S = 0.0005


@dataclass
class ExporterArgs:
    run_id: str
    out: Path
    endpoint: str
    control: str
    strategy: str
    buffers: int
    buffer_size: int
    vram_size: int
    sys_size: int
    max_importers: int
    move_rate: float
    ack_timeout_s: float
    fence_timeout_s: float
    hint_policy: str
    unmap_wait_s: float = default_s("unmap_wait_ms")
    reset_grace_s: float = default_s("reset_grace_ms")
    lease_s: float = default_s("lease_ms")
    retry_s: float = default_s("retry_ms")
    faults: tuple[dict[str, Any], ...] = ()
    seed: int = 1
    credentials: Path | None = None     # DIR/secrets/exporter.json (see runtime/security.py)
    max_attachments: int | None = None  # per importer; default: twice the buffers
    max_mappings: int = 256             # per importer
    max_in_flight: int = 128            # per importer
    launcher: str = ""                  # PID:START of the command to stop with (runtime/watchdog.py)
    params: Mapping[str, float] = field(default_factory=dict)  # run parameters by name, as given: what the
                                        # strategy's timers are long (protocol/timers.py; default if absent)


def load_credentials(args: ExporterArgs) -> tuple[bytes, dict[str, Any] | None]:
    """The run's secret and CURVE keys; refuses a tcp endpoint beyond loopback without CURVE.
    Raises ValueError (one line) before anything is created."""
    if args.credentials is not None:
        data = security.read_private(args.credentials)
        try:
            secret = bytes.fromhex(data["secret"])
        except (KeyError, TypeError, ValueError):
            raise security.CredentialsError(f"{args.credentials}: 'secret' must be hex") from None
        curve = data.get("curve")
    else:
        secret, curve = secrets.token_bytes(32), None
        security.write_private(security.secrets_dir(args.out) / "exporter.json", {"secret": secret.hex()})
    if not security.is_local_endpoint(args.endpoint) and curve is None:
        raise ValueError(f"refusing to serve {args.endpoint} beyond loopback without CURVE keys "
                         f"(credentials with a 'curve' section: dmabuf-emu makes them for --bind)")
    if curve is not None and not security.curve_available():
        raise ValueError("CURVE keys given but this libzmq has no CURVE support")
    return secret, curve


@dataclass
class _Copy:
    action: CopyBuffer
    done: int = 0


class ExporterService(ServiceShell):
    def __init__(self, args: ExporterArgs, env: ServiceEnv | None = None,
                 credentials: tuple[bytes, dict[str, Any] | None] | None = None) -> None:
        """`credentials`: (secret, CURVE keys or None) when the caller has them; otherwise they are
        read from args.credentials (load_credentials)."""
        strategy = resolve_strategy(args.strategy)  # a broken strategy stops us before anything exists
        revocations.check(list(args.faults), args.buffers, compile_spec(strategy.EXPORTER).revokes)
        secret, curve = credentials if credentials is not None else load_credentials(args)
        super().__init__("exporter", args.out, args.control, env, launcher=args.launcher,
                         watch_every_s=args.lease_s)
        self.args = args
        self.oplog = self.oplog.bind(run_id=args.run_id, incarnation=0)
        self.segments: dict[str, Any] = {}
        self.views: dict[str, memory.HeapView] = {}
        slots = args.max_importers + 1
        try:
            for heap, size in (("vram", args.vram_size), ("sys", args.sys_size)):
                name = shm.segment_name(args.run_id, heap)
                self.segments[heap] = seg = self.env.memory.create(name, size)
                self.views[heap] = memory.HeapView(heap, seg.buf, size)
            fname = shm.segment_name(args.run_id, "fences")
            self.segments["fences"] = fseg = self.env.memory.create(fname, table_bytes(slots, args.buffers))
            self.fences = FenceTable(fseg.buf, slots, args.buffers)
        except BaseException:
            self.cleanup()
            raise
        self.engine = Exporter(strategy.EXPORTER, ExporterConfig(
            buffers=args.buffers, buffer_size=args.buffer_size,
            heaps=(HeapConfig("vram", self.segments["vram"].name, args.vram_size),
                   HeapConfig("sys", self.segments["sys"].name, args.sys_size)),
            fences_shm=self.segments["fences"].name, fence_slots=slots,
            ack_timeout_s=args.ack_timeout_s, fence_timeout_s=args.fence_timeout_s,
            unmap_wait_s=args.unmap_wait_s, reset_grace_s=args.reset_grace_s, hint_policy=args.hint_policy,
            lease_s=args.lease_s, secret=secret,
            max_attachments=args.max_attachments or max(64, 2 * args.buffers),
            max_mappings=args.max_mappings, max_in_flight=args.max_in_flight, params=dict(args.params)))
        self.curve = curve is not None
        self.mutant = getattr(strategy, "MUTANT", None)   # the rule a mutant breaks, for the checker to quote
        if curve is not None:
            # The ZAP handler first: libzmq asks it about every CURVE handshake on the rpc socket.
            ctx = self.transport.ctx  # type: ignore[attr-defined]  (CURVE: real sockets only)
            self.zap = security.ZapHandler(ctx, list(curve.get("clients", [])),
                                           lambda **f: self.log.emit("curve_auth", **f))
            self.loop.add_reader(self.zap.sock, self.zap.handle)
        self.rpc, self.rpc_endpoint = self.transport.router(
            args.endpoint, handover=True,
            secure=security.curve_server(curve) if curve is not None else None)
        self.replies = ReplyCache()
        self.outstanding = Outstanding(self.loop, self._resend, self._on_retry, args.retry_s,
                                       max_backoff_s=args.lease_s / 2, give_up_s=2 * args.lease_s)
        self.msgfaults = MessageFaults(self.loop, self.log, "exporter", list(args.faults), args.seed,
                                       self._raw_send, self.env.make_rng)
        self.loop.add_reader(self.rpc, self._on_rpc)
        self.handlers.update({
            Send: self._do_send, StampBuffer: self._do_stamp, CopyBuffer: self._do_copy,
            WaitFences: self._do_wait_fences, ForceCompleteFences: self._do_force,
            ConfirmStopped: self._do_confirm_stopped, PublishKernelFence: self._do_publish_kernel, SignalKernelFence: self._do_signal_kernel,
        })
        self.timers = HalfTimers(self.loop, self._timer_fired)
        self.handlers.update({StartTimer: self.timers.start, CancelTimer: self.timers.cancel})
        self.revocations = revocations.Revocations(self.loop, self.log, list(args.faults), args.buffers,
                                                   self._revoke_step)
        self._fence_watch: dict[int, object] = {}   # move -> the WaitFences being polled for it
        self._pressure: int | None = None
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        self.install_signals()      # before begin() publishes our endpoints (runtime/service.py serve)
        self.begin()
        return self.serve()

    def begin(self) -> None:
        """Boot: stamp the buffers, start the half's timers, say where we listen."""
        self.log.emit("service_start", run_id=self.args.run_id, strategy=self.engine.spec.strategy,
                      **({"strategy_source": self.args.strategy} if self.args.strategy != self.engine.spec.strategy else {}),
                      **({"mutant": self.mutant} if self.mutant else {}),
                      heaps={h: {"shm": self.segments[h].name, "size": self.views[h].size} for h in self.views},
                      fences_shm=self.segments["fences"].name, buffers=self.args.buffers,
                      buffer_size=self.args.buffer_size, move_rate=self.args.move_rate,
                      endpoint=self.rpc_endpoint, curve=self.curve,
                      limits={"attachments": self.engine.config.max_attachments,
                              "mappings": self.engine.config.max_mappings,
                              "in_flight": self.engine.config.max_in_flight})
        self.perform(self.engine.boot(self.loop.now_ns()))
        self.state = "ready"
        self.publish_endpoints(rpc=self.rpc_endpoint,
                               shm=[seg.name for seg in self.segments.values()])
        self.oplog.info("service started: heaps created, listening", strategy=self.engine.spec.strategy,
                        endpoint=self.rpc_endpoint, buffers=self.args.buffers, curve=self.curve)

    def cleanup(self) -> None:
        for view in self.views.values():
            view.release()
        if getattr(self, "fences", None) is not None:
            self.fences.release()
        for seg in self.segments.values():
            try:
                seg.close()
            except BufferError:
                pass  # a view still exported: unlink anyway, the mapping dies with the process
            try:
                seg.unlink()
            except FileNotFoundError:
                pass
        self.segments.clear()

    def on_start(self, peer: bytes, msg: wire.Message) -> None:
        """Start memory pressure: one pressure_tick every 1/move_rate seconds."""
        if self._pressure is None and self.args.move_rate > 0:
            self._schedule_pressure()
        self.msgfaults.start_clock()
        self.revocations.start()
        self.state = "running"
        self._control_reply(peer, wire.ok_reply(msg))

    def on_stop(self, peer: bytes, msg: wire.Message) -> None:
        """Stop pressure; answer once no move is in flight."""
        self._stopping = True
        if self._pressure is not None:
            self.loop.cancel(self._pressure)
            self._pressure = None
        self.revocations.stop()
        self.state = "stopping"
        self.defer_control("stop", peer, msg)
        self.perform(self.engine.cancel_queued_moves(self.loop.now_ns()))

    def on_shutdown(self, peer: bytes, msg: wire.Message) -> None:
        self._control_reply(peer, wire.ok_reply(msg))
        self.finish("shutdown")

    def after_actions(self) -> None:
        if self._stopping and self.engine.moves_in_flight == 0 and self.has_deferred("stop"):
            self.state = "stopped"
            self._final_content()
            self.answer_deferred("stop")

    def _final_content(self) -> None:
        """What every buffer's bytes hold once the work is over: the checker's lost-write check."""
        for buffer in range(self.args.buffers):
            p = self.engine.placement_of(buffer)
            stamps, misplaced = memory.census(self.views[p.heap].rows(p.offset, p.size))
            self.log.emit("final_content", buffer=buffer, heap=p.heap, offset=p.offset, size=p.size,
                          gen=p.gen, stamps=stamps, misplaced=misplaced)

    def _timer_fired(self, key: Any) -> None:
        """A timer of the half. Read first: what the importers sent while we were busy (or
        paused) counts (renews their leases, answers the notification) before the half judges."""
        self._on_rpc(drain=True)
        self._guarded("timer", lambda: self.engine.timer_fired(key, self.loop.now_ns()))

    def _schedule_pressure(self) -> None:
        def tick() -> None:
            self._pressure = None
            if self._stopping:
                return
            self._schedule_pressure()
            self._guarded("pressure", lambda: self.engine.pressure_tick(self.loop.now_ns()))
        self._pressure = self.loop.call_later(self.pressure_period_s(), tick)

    def pressure_period_s(self) -> float:
        """How long until the next pressure tick: 1/move_rate (the simulator may steer each wait
        to replay a real run's timing: sim/driver.py steer_moves)."""
        return 1.0 / self.args.move_rate

    def _revoke_step(self, step: str, buffer: int) -> None:
        half = {"revoke": self.engine.revoke_buffer, "unrevoke": self.engine.unrevoke_buffer,
                "close": self.engine.close_buffer}[step]
        self._guarded(step, lambda: half(buffer, self.loop.now_ns()))

    def _guarded(self, where: str, call: Any) -> None:
        try:
            actions = call()
        except Exception as exc:
            self.internal_error(where, exc)
            return
        self.perform(actions)

    # ------------------------------------------------------------------ the importers' socket

    def _on_rpc(self, drain: bool = False) -> None:
        for _ in range(1 << 20 if drain else 256):  # bounded, so timers and copies get their turn
            frames = self.rpc.recv()
            if frames is None:
                return
            self._on_frames(frames)

    def _on_frames(self, frames: list[bytes]) -> None:
        peer = frames[0]
        if len(frames) != 2:
            self._refuse(peer, wire.ProtocolError(wire.ErrorCode.BAD_MESSAGE,
                                                  f"expected one frame per message, got {len(frames) - 1}"))
            return
        try:
            msg = wire.decode(frames[1])
        except wire.ProtocolError as err:
            self._refuse(peer, err)
            return
        now = self.loop.now_ns()
        if msg.REPLY:
            if self.outstanding.answered(peer, msg.id) is None:
                self.log.emit("dedup", op=getattr(msg, "op", msg.OP), id=msg.id, peer=self._peer_label(peer), what="reply")
                return
            self._guarded("reply", lambda: self.engine.handle_reply(peer, msg, now))
            return
        cached = self.replies.check(peer, msg.id)
        if cached is not None:
            self.log.emit("dedup", op=msg.OP, id=msg.id, peer=self._peer_label(peer), what="request")
            if cached != IN_PROGRESS:
                self.msgfaults.submit(peer, cached, msg.OP, msg.id)
            return
        try:
            actions = self.engine.handle_request(peer, msg, now)
        except Exception as exc:
            self.internal_error(f"request {msg.OP}", exc)
            actions = [Send(peer, wire.ErrorReply(id=msg.id, op=msg.OP, code=wire.ErrorCode.INTERNAL,
                                                  message=f"{type(exc).__name__}: {exc}"), self._peer_label(peer))]
        # A reply the half's own event records (map_served, unmap_served) says when the request
        # came and when it was answered: op_received / op_answered would only repeat it, at about
        # 5 us a line on the hottest path (see `dmabuf-emu bench`).
        if not any(type(a) is Send and a.recorded for a in actions):
            self.log.emit("op_received", op=msg.OP, id=msg.id, peer=self._peer_label(peer))
        self.perform(actions)

    def _refuse(self, peer: bytes, err: wire.ProtocolError) -> None:
        label = self._peer_label(peer)
        self.log.emit("bad_request", peer=label, op=err.op, id=err.id, code=err.code, message=err.message)
        self.oplog.warning("bad request refused", peer=label, op=err.op, code=err.code, message=err.message)
        self._raw_send(peer, wire.encode(wire.error_reply(err)))  # never cached: its id is not trusted
        self.log.emit("op_answered", op=err.op, id=err.id, peer=label, ok=False, code=err.code, message=err.message)

    def _peer_label(self, peer: bytes) -> str:
        return self.engine.peer_label(peer)

    # ------------------------------------------------------------------ actions

    def _raw_send(self, peer: bytes, frame: bytes) -> None:
        try:
            self.rpc.send(peer, frame)
        except zmq.ZMQError as exc:
            self.log.emit("send_failed", peer=self._peer_label(peer), error=str(exc))
            self.oplog.warning("send failed", peer=self._peer_label(peer), error=str(exc))

    def _resend(self, peer: bytes, frame: bytes, op: str, msg_id: int) -> None:
        self.msgfaults.submit(peer, frame, op, msg_id)

    def _on_retry(self, peer: bytes, msg_id: int, op: str, attempt: int) -> None:
        if attempt:
            self.log.emit("retry", op=op, id=msg_id, attempt=attempt, peer=self._peer_label(peer))
            self.oplog.info("retry: no answer yet, sending again", op=op, id=msg_id, attempt=attempt,
                            peer=self._peer_label(peer))
        else:
            self.log.emit("retry_gave_up", op=op, id=msg_id, peer=self._peer_label(peer))
            self.oplog.warning("retry: gave up, no answer within two leases", op=op, id=msg_id,
                               peer=self._peer_label(peer))

    def _do_send(self, action: Send) -> None:
        msg = action.message
        frame = wire.encode(msg)
        op = getattr(msg, "op", msg.OP) if msg.REPLY else msg.OP
        if not msg.REPLY:
            self.outstanding.send(action.peer, msg.id, op, frame)  # sent through _resend
            return
        self.replies.answered(action.peer, msg.id, frame)
        self.msgfaults.submit(action.peer, frame, op, msg.id)
        if not action.recorded:  # map_served / unmap_served record those
            fields: dict[str, Any] = dict(op=getattr(msg, "op", msg.OP), id=msg.id, peer=action.peer_name,
                                          ok=not isinstance(msg, wire.ErrorReply))
            if isinstance(msg, wire.ErrorReply):
                fields.update(code=msg.code, message=msg.message)
            self.log.emit("op_answered", **fields)

    def _do_stamp(self, action: StampBuffer) -> None:
        p = action.placement
        memory.stamp(self.views[p.heap].rows(p.offset, p.size), action.buffer, 0, 0, 0)

    def _do_copy(self, action: CopyBuffer) -> None:
        job = _Copy(action)
        self.log.emit("copy_begin", buffer=action.buffer, move=action.move,
                      from_gen=action.src.gen, to_gen=action.dst.gen, **dict(action.trigger))
        self.loop.lane("copy").call_soon(lambda: self._copy_step(job))

    def _copy_step(self, job: _Copy) -> None:
        a = job.action
        n = min(COPY_CHUNK, a.src.size - job.done)
        src = self.views[a.src.heap].rows(a.src.offset + job.done, n)
        dst = self.views[a.dst.heap].rows(a.dst.offset + job.done, n)
        memory.copy(dst, src)
        job.done += n
        if job.done < a.src.size:
            self.loop.lane("copy").call_soon(lambda: self._copy_step(job))
            return
        self.log.emit("copy_end", buffer=a.buffer, move=a.move, from_gen=a.src.gen,
                      to_gen=a.dst.gen, bytes=job.done)
        self._guarded("copy_done", lambda: self.engine.copy_done(a.move, self.loop.now_ns()))

    def _do_wait_fences(self, action: WaitFences) -> None:
        """Poll the fences published on the buffer so far; report the unsignaled slots at first
        and at each change, until none is left or another WaitFences for the move replaces this
        one. How long to wait is the half's (its fence timer)."""
        snapshot = self.fences.snapshot(action.buffer, action.usage, action.confirm)
        first = {s: (q, self.fences.usage_of(s, action.buffer, q)) for s, q in snapshot.items()}
        watch = self._fence_watch[action.move] = object()
        reported: list[tuple[int, ...] | None] = [None]

        def poll() -> None:
            if self._fence_watch.get(action.move) is not watch:
                return
            pending = self.fences.pending(action.buffer, snapshot, action.confirm)
            slots = tuple(sorted(pending))
            if not slots:
                del self._fence_watch[action.move]
            if reported[0] is None:  # the first report says what the wait waits for
                reported[0] = slots
                fences = {s: first[s] for s in slots}
                self._guarded("fences", lambda: self.engine.fences_snapshot(action.move, fences, self.loop.now_ns()))
            elif slots != reported[0]:
                reported[0] = slots
                self._guarded("fences", lambda: self.engine.fences_pending(action.move, slots, self.loop.now_ns()))
            if slots and self._fence_watch.get(action.move) is watch:
                snapshot.clear()
                snapshot.update(pending)
                self.loop.call_later(FENCE_POLL_S, poll)

        self.loop.call_soon(poll)

    def _do_confirm_stopped(self, action: ConfirmStopped) -> None:
        """Poll, every FENCE_POLL_S, until the device of the slot has no access under way (its
        count in the fence table) or its process is gone (env.process_gone: killed, even if not
        yet reaped); then tell the half. No bound: a device paused in mid-access may touch memory
        whenever it resumes, and a timeout would only guess that it will not."""

        def poll() -> None:
            if self._stopping:
                return
            if self.fences.in_access(action.slot) == 0:
                how = "no access under way"
            elif self.env.process_gone(action.pid):
                how = "process gone"
            else:
                self.loop.call_later(FENCE_POLL_S, poll)
                return
            self._guarded("device_stopped",
                          lambda: self.engine.device_stopped(action.slot, action.pid, how, self.loop.now_ns()))

        poll()

    def _do_force(self, action: ForceCompleteFences) -> None:
        if 0 < action.slot < self.fences.slots:
            self.fences.force(action.slot, action.buffer, action.error)

    def _do_publish_kernel(self, action: PublishKernelFence) -> None:
        self.fences.publish_kernel(action.buffer, action.seq)

    def _do_signal_kernel(self, action: SignalKernelFence) -> None:
        self.fences.signal_kernel(action.buffer, action.seq)


def heap_sizes(buffers: int, buffer_size: int, vram_size: int | None) -> tuple[int, int]:
    """Default vram: half the buffers (at least one); sys: every buffer plus vram's worth, so
    eviction always finds room."""
    if vram_size is None:
        vram_size = max(1, buffers // 2) * buffer_size
    sys_size = buffers * buffer_size + vram_size
    round_up = lambda n: int(math.ceil(n / LINE) * LINE)  # noqa: E731
    return round_up(vram_size), round_up(sys_size)
