"""The exporter half, sans-IO: one `Exporter` per exporter service, made of three parts, each a
module with its rules at the top:

    session.py   membership, leases, capability tokens, limits: the requests, checked
    memory.py    the heaps, where each buffer lives, and which move the memory manager wants
    moves.py     the interpreter of the strategy's exporter table: every buffer's move machine
    table.py     what those tables may name (MoveState, MoveEvent, Guard, Step) and BASE_TABLE

Rules of this file (the entry points):
- Every entry point takes `now` (monotonic ns, from the shell) and returns the actions to
  perform, in order. Nothing here reads a clock, draws a random number or does I/O. Time enters
  as `now` and as timers this half starts (StartTimer) and the shell fires (timer_fired): the
  notify timeout, the fence timeout, the lease check and the strategy's own timers.
- Follow-up events queued by a transition run before the actions are returned.
- A request that cannot be served becomes an error reply, and changes nothing.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping

from protocol import capability
from protocol.actions import Action
from protocol.exporter.memory import MemoryManager
from protocol.exporter.moves import CompiledSpec, MoveMachine, ReservationLockError, compile_spec
from protocol.exporter.session import LEASE_TIMER, STOPPED_HOW, Session
from protocol.exporter.state import Ctx, ExporterConfig, ExporterState, HeapConfig
from protocol.exporter.table import (BASE_TABLE, IGNORE, MUTANT_STEPS, ExporterSpec, ExporterTable, Guard,
                                     MoveEvent, MoveState, Step, cancel_timer, start_timer, timer_fired)
from protocol.machine import TransitionError
from protocol.wire import ErrorCode, ErrorReply, Message, Placement, ProtocolError, error_reply

__all__ = ["BASE_TABLE", "IGNORE", "MUTANT_STEPS", "CompiledSpec", "Exporter", "ExporterConfig", "ExporterSpec", "ExporterTable",
           "Guard", "HeapConfig", "MoveEvent", "MoveState", "ReservationLockError", "STOPPED_HOW", "Step", "cancel_timer",
           "compile_spec", "start_timer", "timer_fired"]


class Exporter:
    """One exporter's protocol state. Not thread-safe: the shell calls it from its one loop."""

    def __init__(self, spec: ExporterSpec, config: ExporterConfig) -> None:
        if len(config.secret) < capability.MIN_SECRET:
            raise ValueError(f"the exporter's secret must be at least {capability.MIN_SECRET} bytes, "
                             f"got {len(config.secret)}")
        self.spec = spec
        self.config = config
        self.state = ExporterState(config)
        self.memory = MemoryManager(self.state)
        self.moves = MoveMachine(spec, self.state, self.memory)
        self.session = Session(self.state, self.moves, spec.strategy)
        self.moves.membership = self.session   # what the move machine asks of the importers' session
        # The books, under the names tests and tools have long read them by.
        self._buffers = self.state.buffers
        self._attachments = self.state.attachments
        self._importers = self.state.members
        self._moves = self.state.moves
        self._timers = {LEASE_TIMER[0]: self._lease_timer, "notify": self._notify_timer, "fence": self._fence_timer,
                        "unmap-wait": self._unmap_wait_timer, "reset": self._reset_timer,
                        "timer": self._declared_timer}

    # ------------------------------------------------------------------ entry points

    def boot(self, now: int) -> list[Action]:
        """Allocate every buffer (scarce heap first, then the spill heap) and stamp it; start the
        lease check. Requires: called once, before any other entry point."""
        self.memory.boot()
        self.session.start_lease_timer()
        return self._take()

    def handle_request(self, peer: bytes, msg: Message, now: int) -> list[Action]:
        """A decoded request from `peer`. Errors become error replies; state is unchanged then."""
        handler = self.session.handlers.get(type(msg))
        self.session.touch(peer, now)
        try:
            if handler is None:
                raise ProtocolError(ErrorCode.BAD_STATE, f"the exporter does not serve '{msg.OP}' on this socket")
            handler(peer, msg, now)
        except ProtocolError as err:
            err.op, err.id = msg.OP, msg.id
            self.state.send(peer, error_reply(err))
        except TransitionError as err:
            self.state.send(peer, ErrorReply(id=msg.id, op=msg.OP, code=ErrorCode.BAD_STATE, message=str(err)))
        return self._take()

    def handle_reply(self, peer: bytes, reply: Message, now: int) -> list[Action]:
        """An importer's reply to a request of ours (move_notify): the callback returned."""
        self.session.touch(peer, now)
        self.session.on_reply(peer, reply, now)
        return self._take()

    def pressure_tick(self, now: int, pick: int = 0) -> list[Action]:
        """The memory manager's turn: at most one move wanted (see memory.py), the `pick`-th of
        move_options() (0, the policy's own choice, in real runs; the simulator's scheduler may
        pick another). A pick beyond the options takes the first."""
        if not self.memory.at_move_limit():
            options = self.memory.move_options()
            if options:
                buf, to_heap, reason, then = options[pick] if 0 <= pick < len(options) else options[0]
                self.moves.dispatch(buf, MoveEvent.MOVE_WANTED, now, Ctx(to=to_heap, reason=reason, then_promote=then))
        return self._take()

    def move_options(self) -> list[str]:
        """What pressure_tick may pick from now, labelled `promote:B` or `evict:B>T` (T the buffer
        to promote after it, `-` for none); empty at the move limit or with nothing to move."""
        if self.memory.at_move_limit():
            return []
        return [f"{reason}:{buf.id}" + (f">{'-' if then is None else then}" if reason == "evict" else "")
                for buf, _, reason, then in self.memory.move_options()]

    def copy_done(self, move_id: int, now: int) -> list[Action]:
        move = self.state.moves[move_id]
        self.moves.dispatch(self.state.buffers[move.buffer], MoveEvent.COPY_DONE, now)
        return self._take()

    def fences_snapshot(self, move_id: int, fences: Mapping[int, tuple[int, Any]], now: int) -> list[Action]:
        """The shell's first report of a WaitFences: slot -> (seqno, usage) of the latest fence of
        each slot that the wait waits for and that had not signaled (fence_wait_begin lists them);
        then as fences_pending with those slots. `move_id` is a move's or a revocation's id."""
        move = self.state.operation(move_id)
        if move is not None:
            buf = self.state.buffers[move.buffer]
            self.moves.fences_snapshot(buf, move, dict(fences), now)
            self.moves.fences_pending(buf, move, tuple(fences), now)
        return self._take()

    def fences_pending(self, move_id: int, slots: tuple[int, ...], now: int) -> list[Action]:
        """The shell's fence poll (WaitFences): the importer slots whose fences, among those the
        wait waits for, are still unsignaled; reported at each change. None left: FENCES_SIGNALED.
        `move_id` is the waiting operation's id: a move's or a revocation's."""
        move = self.state.operation(move_id)
        if move is not None:
            self.moves.fences_pending(self.state.buffers[move.buffer], move, tuple(slots), now)
        return self._take()

    def fences_signaled(self, move_id: int, now: int) -> list[Action]:
        """Every fence the move's wait waits for has signaled (fences_pending with none left)."""
        return self.fences_pending(move_id, (), now)

    def fences_timed_out(self, move_id: int, slots: tuple[int, ...], now: int) -> list[Action]:
        """The fence timeout with these slots still unsignaled (what the fence timer does with the
        slots last reported by fences_pending)."""
        move = self.state.operation(move_id)
        if move is not None:
            move.unsignaled = tuple(sorted(slots))
            self.moves.dispatch(self.state.buffers[move.buffer], MoveEvent.FENCE_TIMEOUT, now, Ctx(slots=move.unsignaled))
        return self._take()

    def revoke_buffer(self, buffer: int, now: int) -> list[Action]:
        """Take `buffer` away (VFIO's vfio_pci_dma_buf_move(revoked=true) on a device reset): the
        table's (state, REVOKE) row. Requires a strategy that revokes (CompiledSpec.revokes)."""
        self.moves.dispatch(self.state.buffers[buffer], MoveEvent.REVOKE, now)
        return self._take()

    def unrevoke_buffer(self, buffer: int, now: int) -> list[Action]:
        """Give `buffer` back: the table's (state, UNREVOKE) row."""
        self.moves.dispatch(self.state.buffers[buffer], MoveEvent.UNREVOKE, now)
        return self._take()

    def close_buffer(self, buffer: int, now: int) -> list[Action]:
        """The exporting device is closed (VFIO's vfio_pci_dma_buf_cleanup from
        vfio_pci_core_close_device): the table's (state, CLOSE) row."""
        self.moves.dispatch(self.state.buffers[buffer], MoveEvent.CLOSE, now)
        return self._take()

    @property
    def revokes(self) -> bool:
        """The strategy can revoke a buffer (its table has a revocation)."""
        return self.moves.revokes

    def timer_fired(self, key: Hashable, now: int) -> list[Action]:
        """A timer this half started (StartTimer) has fired: ("notify", op), ("fence", op),
        ("reset", op), ("unmap-wait", revocation), ("timer", name, op) (a timer the strategy
        declares) or ("leases",); an op is a move's or a revocation's id."""
        kind = key[0] if isinstance(key, tuple) and key else None  # type: ignore[index]
        handler = self._timers.get(kind)  # type: ignore[arg-type]
        if handler is None:
            raise ValueError(f"timer {key!r} was not started by the exporter half")
        handler(key, now)
        return self._take()

    def importer_lost(self, slot: int, reason: str, now: int) -> list[Action]:
        """The importer is gone (bye with attachments left, or dead): revoke everything it held,
        complete its fences with an error, and let moves waiting for it go on."""
        self.session.lose(slot, reason, now)
        return self._take()

    def device_stopped(self, slot: int, pid: int, how: str, now: int) -> list[Action]:
        """The shell's answer to ConfirmStopped(slot, pid): that importer's device has no access
        under way, or its process is gone (`how`, one of STOPPED_HOW). If its lease is still the
        one that ran out, it is lost now ("lease expired")."""
        self.session.device_stopped(slot, pid, how, now)
        return self._take()

    def check_leases(self, now: int) -> list[Action]:
        """Every importer silent for longer than its lease: ConfirmStopped, then device_stopped
        loses it (the lease timer does this every lease/4)."""
        self.session.check_leases(now)
        return self._take()

    def cancel_queued_moves(self, now: int) -> list[Action]:
        """Stop: moves still waiting for their last unmap will not happen (the table's CANCEL)."""
        for buf in self.state.buffers.values():
            self.moves.dispatch(buf, MoveEvent.CANCEL, now)
        return self._take()

    @property
    def moves_in_flight(self) -> int:
        return len(self.state.moves)

    def importer_slot(self, peer: bytes) -> int | None:
        imp = self.state.by_peer.get(peer)
        return imp.slot if imp else None

    def peer_label(self, peer: bytes) -> str:
        """What the `peer` field of an event about this connection says (state.py)."""
        return self.state.peer_label(peer)

    def placement_of(self, buffer: int) -> Placement:
        return self.state.buffers[buffer].placement

    def heap_usage(self) -> dict[str, int]:
        return self.memory.usage()

    # ------------------------------------------------------------------ timers

    def _lease_timer(self, key: Any, now: int) -> None:
        self.session.check_leases(now)
        self.session.start_lease_timer()

    def _notify_timer(self, key: Any, now: int) -> None:
        move = self.state.operation(key[1])
        if move is not None:
            self.moves.dispatch(self.state.buffers[move.buffer], MoveEvent.NOTIFY_TIMEOUT, now)

    def _declared_timer(self, key: Any, now: int) -> None:
        op = self.state.operation(key[2])
        if op is not None:
            self.moves.dispatch(self.state.buffers[op.buffer], timer_fired(key[1]), now)

    def _unmap_wait_timer(self, key: Any, now: int) -> None:
        rev = self.state.revocations.get(key[1])
        if rev is not None:
            self.moves.dispatch(self.state.buffers[rev.buffer], MoveEvent.UNMAP_WAIT_TIMEOUT, now)

    def _fence_timer(self, key: Any, now: int) -> None:
        move = self.state.operation(key[1])
        if move is not None:
            self.moves.dispatch(self.state.buffers[move.buffer], MoveEvent.FENCE_TIMEOUT, now,
                                Ctx(slots=move.unsignaled))

    def _reset_timer(self, key: Any, now: int) -> None:
        move = self.state.operation(key[1])
        if move is not None:
            self.moves.dispatch(self.state.buffers[move.buffer], MoveEvent.RESET_TIMEOUT, now)

    def _take(self) -> list[Action]:
        self.moves.run_posted()
        return self.state.take()

