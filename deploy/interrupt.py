"""A foreground command stops the same way whatever stops it: Ctrl-C, SIGTERM or SIGHUP.

Rules:
- Inside `stop_signals()` (the dmabuf-emu command wraps every command in it), the first SIGINT,
  SIGTERM or SIGHUP raises `Interrupted` in the main thread. It is a KeyboardInterrupt, so every
  cleanup written for Ctrl-C runs for the others too (`finally`, `except BaseException`), and it
  says which signal came and when.
- Inside `shielded()` (cleanup that must finish: taking the services down, writing the report),
  the first signal is recorded instead (`pending()`), for the code to act on when it is done.
- After the first signal, SIGTERM and SIGHUP only count: `timeout`, a CI runner or a closing
  terminal may send more than one, and each would cut the bounded cleanup short. A second Ctrl-C
  raises KeyboardInterrupt: the user insists. Services left running then still stop by
  themselves, since they watch their launcher (runtime/watchdog.py).
- An interrupted command exits with 128 + the signal's number, what a shell reports for a
  process the signal killed: 130 for SIGINT, 129 for SIGHUP, 143 for SIGTERM (`exit_code`).
- Handlers are installed only from the main thread and restored on leaving `stop_signals()`.
  Without `stop_signals()` (the functions called from Python), `shielded()` does nothing and
  Ctrl-C is Python's usual KeyboardInterrupt.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The command was asked to stop by `signum`. `detail` is what the command made of it, one
    line for the user (set by whoever cleaned up)."""

    def __init__(self, signum: int, at: str | None = None) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.signal = signal.Signals(signum).name
        self.at = at or datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        self.detail = ""
        self.logged = False   # already in the run's history (deploy's run_interrupted event)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def as_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "at": self.at}

    def __str__(self) -> str:
        return self.detail or f"interrupted by {self.signal}"


def interrupted(exc: KeyboardInterrupt) -> Interrupted:
    """`exc` as an Interrupted: a plain KeyboardInterrupt is a SIGINT."""
    return exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)


@dataclass
class _State:
    active: bool = False
    shield: int = 0
    first: Interrupted | None = None
    raised: bool = False
    later: list[str] = field(default_factory=list)


_state = _State()


def _on_signal(signum: int, frame: Any) -> None:
    if _state.first is None:
        _state.first = Interrupted(signum)
        if _state.shield:
            return
        _state.raised = True
        raise _state.first
    _state.later.append(signal.Signals(signum).name)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt


@contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted inside (see the rules at the top)."""
    if threading.current_thread() is not threading.main_thread() or _state.active:
        yield
        return
    old = {s: signal.signal(s, _on_signal) for s in STOP_SIGNALS}
    _state.active, _state.first, _state.raised, _state.later = True, None, False, []
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        _state.active, _state.first = False, None  # nothing carries over to code run after


@contextmanager
def shielded() -> Iterator[None]:
    """Inside, a first signal is recorded (see `pending()`), not raised."""
    _state.shield += 1
    try:
        yield
    finally:
        _state.shield -= 1


def pending() -> Interrupted | None:
    """The first signal if it came and was not raised (it came while shielded); None outside
    stop_signals()."""
    return _state.first if _state.active and _state.first is not None and not _state.raised else None
