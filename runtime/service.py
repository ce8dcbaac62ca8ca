"""What both services' shells share: the loop, the event log, the control socket, the endpoints
file that tells `dmabuf-emu` where a service listens, signals, and the dispatch of actions.

A shell takes its loop, transport, memory, event sink, pid and random numbers from a
`ServiceEnv` (runtime/env.py): the real ones by default, the simulator's in sim/. Its life is
`begin()` (the subclass's: say hello, arm timers), the loop, then `end_serving()` (cleanup,
`service_stop`); `serve()` runs the last two in a real process, the simulator calls
`end_serving()` itself when the service's loop is stopped.

Two logs: `self.log`, the history the checker reads (runtime/eventlog.py), and `self.oplog`, the
operator's (runtime/oplog.py: levelled lines to DIR/logs/<svc>.log, or the simulator's `say`).
A line in the operational log may repeat a history event for the operator, never replace one.

Control socket (ROUTER, one per service): `ping` and `status` are answered at once in every
state; `start`, `stop` and `shutdown` are passed to the service, which may answer later (stop
answers when the service has drained). Bad frames get an error reply naming what was wrong.
"""

from __future__ import annotations

import json
import os
import signal
import traceback
from pathlib import Path
from typing import Any, Callable

import zmq

from protocol import wire
from protocol.actions import Emit
from runtime import oplog, watchdog
from runtime.env import ServiceEnv
from runtime.eventlog import EventLog


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class ServiceShell:
    """Base of ExporterService and ImporterService. Subclasses fill `handlers` (action type ->
    method) and implement on_start / on_stop / on_shutdown."""

    def __init__(self, svc: str, out: Path, control_endpoint: str, env: ServiceEnv | None = None, *,
                 launcher: str = "", watch_every_s: float = 0.5) -> None:
        self.svc = svc
        self.out = out
        self.state = "starting"
        self.env = env = env or ServiceEnv()
        self.loop = env.loop
        self.transport = env.transport
        self.log = (EventLog(out / "events" / f"{svc}.jsonl", svc, pid=env.pid, clock=self.loop.now_ns)
                    if env.sink is None else EventLog(None, svc, pid=env.pid, clock=self.loop.now_ns, sink=env.sink(svc)))
        # the subclass binds run_id (and incarnation) once it has them
        self.oplog = oplog.service_logger(svc, pid=env.pid, say=None if env.process else env.say)
        self.control, self.control_endpoint = self.transport.router(control_endpoint)
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
        """Tell dmabuf-emu where we listen (written atomically: a reader never sees half).
        A simulated service has nobody to tell."""
        if not self.env.process:
            return
        run_dir = self.out / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / f"{self.svc}.json",
                          {"svc": self.svc, "pid": self.env.pid, "control": self.control_endpoint, **endpoints})

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
        self.oplog.warning(f"the launcher is gone ({how}): stopping", launcher=launcher, how=how)
        self.finish("launcher gone", exit_code=watchdog.EXIT_LAUNCHER_GONE)

    def serve(self) -> int:
        """Run the loop until a stop (a real process only). The shells' run() installs the signal
        handlers before begin() publishes our endpoints, so a SIGTERM sent as soon as dmabuf-emu
        (or a test) sees them is a clean stop; one that came before the loop ran is honoured here
        (loop.run() would forget the stop)."""
        self.install_signals()
        self.oplog.info("serving", state=self.state)
        try:
            if not self._stop_reason:
                self.loop.run()  # type: ignore[attr-defined]  (a real process's loop)
        finally:
            self.end_serving()
        return self.exit_code

    def end_serving(self) -> None:
        """After the loop: release what we hold, say why we stopped, close the sockets."""
        self.cleanup()
        self.log.emit("service_stop", reason=self._stop_reason or "loop ended")
        self.oplog.info("service stopped", reason=self._stop_reason or "loop ended", exit_code=self.exit_code)
        self.log.close()
        self.transport.close()

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
        self.oplog.error("internal error (the history has its traceback)", where=where,
                         error=f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ control socket

    def _on_control(self) -> None:
        while True:
            frames = self.control.recv()
            if frames is None:
                return
            peer = frames[0]
            if len(frames) != 2:
                self._control_reply(peer, wire.ErrorReply(id=0, op="invalid", code=wire.ErrorCode.BAD_MESSAGE,
                                                          message=f"expected one frame per message, got {len(frames) - 1}"))
                continue
            try:
                msg = wire.decode(frames[1])
            except wire.ProtocolError as err:
                self.oplog.warning("bad control request", error=str(err))
                self._control_reply(peer, wire.error_reply(err))
                continue
            self._control_request(peer, msg)

    def _control_request(self, peer: bytes, msg: wire.Message) -> None:
        if isinstance(msg, wire.Ping):
            self._control_reply(peer, wire.ok_reply(msg))
        elif isinstance(msg, wire.Status):
            self._control_reply(peer, wire.StatusReply(id=msg.id, svc=self.svc, state=self.state, pid=self.env.pid))
        elif isinstance(msg, (wire.Start, wire.Stop, wire.Shutdown)):
            self.log.emit("control", op=msg.OP, id=msg.id)
            self.oplog.info("control request", op=msg.OP, id=msg.id)
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
            self.control.send(peer, wire.encode(msg))
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

