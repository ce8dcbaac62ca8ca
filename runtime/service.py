"""What both services' shells share: the loop, the event log, the control socket, the endpoints
file that tells `dmabuf-emu` where a service listens, signals, and the dispatch of actions.

Control socket (ROUTER, one per service): `ping` and `status` are answered at once in every
state; `start`, `stop` and `shutdown` are passed to the service, which may answer later (stop
answers when the service has drained). Bad frames get an error reply naming what was wrong.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import zmq

from protocol import wire
from protocol.actions import Emit
from runtime import transport, watchdog
from runtime.eventlog import EventLog
from runtime.loop import Loop


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class ServiceShell:
    """Base of ExporterService and ImporterService. Subclasses fill `handlers` (action type ->
    method) and implement on_start / on_stop / on_shutdown."""

    def __init__(self, svc: str, out: Path, control_endpoint: str, *, launcher: str = "",
                 watch_every_s: float = 0.5) -> None:
        self.svc = svc
        self.out = out
        self.state = "starting"
        self.ctx = zmq.Context()
        self.loop = Loop()
        self.log = EventLog(out / "events" / f"{svc}.jsonl", svc)
        self.control, self.control_endpoint = transport.router(self.ctx, control_endpoint)
        self.loop.add_reader(self.control, self._on_control)
        self.handlers: dict[type, Callable[[Any], None]] = {Emit: self._do_emit}
        self._pending_control: dict[str, list[tuple[bytes, wire.Message]]] = {}
        self._stop_reason = ""
        self.exit_code = 0
        # --launcher PID:START: stop when the command that started us is gone (runtime/watchdog.py)
        self.watch = (watchdog.LauncherWatch(self.loop, launcher, watch_every_s, self._launcher_gone)
                      if launcher else None)

    # ------------------------------------------------------------------ lifecycle

    def publish_endpoints(self, **endpoints: str) -> None:
        """Tell dmabuf-emu where we listen (written atomically: a reader never sees half)."""
        run_dir = self.out / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / f"{self.svc}.json",
                          {"svc": self.svc, "pid": os.getpid(), "control": self.control_endpoint, **endpoints})

    def install_signals(self) -> None:
        def on_signal(signum: int, frame: Any) -> None:
            self.finish(f"signal {signal.Signals(signum).name}")
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def finish(self, reason: str, exit_code: int = 0) -> None:
        if not self._stop_reason:
            self._stop_reason = reason
            self.exit_code = exit_code
        self.loop.stop()

    def _launcher_gone(self, how: str) -> None:
        launcher = self.watch.spec if self.watch is not None else ""
        self.log.emit("launcher_gone", launcher=launcher, how=how)
        print(f"{self.svc}: the launcher {launcher} is gone ({how}): stopping", flush=True)
        self.finish("launcher gone", exit_code=watchdog.EXIT_LAUNCHER_GONE)

    def serve(self) -> int:
        self.install_signals()
        try:
            self.loop.run()
        finally:
            self.cleanup()
            self.log.emit("service_stop", reason=self._stop_reason or "loop ended")
            self.log.close()
            self.ctx.destroy(linger=0)
        return self.exit_code

    def cleanup(self) -> None:
        """Release what the service holds (segments, views). Must be idempotent."""

    # ------------------------------------------------------------------ actions

    def perform(self, actions: list[Any]) -> None:
        for action in actions:
            self.handlers[type(action)](action)
        self.after_actions()

    def after_actions(self) -> None:
        """Hook: answer control requests that were waiting for a condition."""

    def _do_emit(self, action: Emit) -> None:
        self.log.emit(action.event, **action.fields)

    def internal_error(self, where: str, exc: BaseException) -> None:
        self.log.emit("internal_error", where=where, error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=8))

    # ------------------------------------------------------------------ control socket

    def _on_control(self) -> None:
        while True:
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            peer = frames[0]
            if len(frames) != 2:
                self._control_reply(peer, wire.ErrorReply(id=0, op="invalid", code=wire.ErrorCode.BAD_MESSAGE,
                                                          message=f"expected one frame per message, got {len(frames) - 1}"))
                continue
            try:
                msg = wire.decode(frames[1])
            except wire.ProtocolError as err:
                self._control_reply(peer, wire.error_reply(err))
                continue
            self._control_request(peer, msg)

    def _control_request(self, peer: bytes, msg: wire.Message) -> None:
        if isinstance(msg, wire.Ping):
            self._control_reply(peer, wire.ok_reply(msg))
        elif isinstance(msg, wire.Status):
            self._control_reply(peer, wire.StatusReply(id=msg.id, svc=self.svc, state=self.state, pid=os.getpid()))
        elif isinstance(msg, (wire.Start, wire.Stop, wire.Shutdown)):
            self.log.emit("control", op=msg.OP, id=msg.id)
            try:
                getattr(self, f"on_{msg.OP}")(peer, msg)
            except Exception as exc:  # a bug must not take the service down silently
                self.internal_error(f"control {msg.OP}", exc)
                self._control_reply(peer, wire.ErrorReply(id=msg.id, op=msg.OP, code=wire.ErrorCode.INTERNAL,
                                                          message=f"{type(exc).__name__}: {exc}"))
        else:
            self._control_reply(peer, wire.ErrorReply(id=msg.id, op=msg.OP, code=wire.ErrorCode.BAD_STATE,
                                                      message=f"'{msg.OP}' is not a control op (ping, status, start, stop, shutdown)"))

    def _control_reply(self, peer: bytes, msg: wire.Message) -> None:
        try:
            self.control.send_multipart([peer, wire.encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the asker is gone; nothing to tell

    def defer_control(self, kind: str, peer: bytes, msg: wire.Message) -> None:
        self._pending_control.setdefault(kind, []).append((peer, msg))

    def answer_deferred(self, kind: str) -> None:
        for peer, msg in self._pending_control.pop(kind, []):
            self._control_reply(peer, wire.ok_reply(msg))

    def has_deferred(self, kind: str) -> bool:
        return bool(self._pending_control.get(kind))

    def on_start(self, peer: bytes, msg: wire.Message) -> None:
        raise NotImplementedError

    def on_stop(self, peer: bytes, msg: wire.Message) -> None:
        raise NotImplementedError

    def on_shutdown(self, peer: bytes, msg: wire.Message) -> None:
        raise NotImplementedError


def now_ns() -> int:
    return time.monotonic_ns()
