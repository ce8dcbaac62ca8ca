"""The timers of a protocol half, on the shell's loop: StartTimer and CancelTimer performed.

Rules: a StartTimer of a key that is running replaces it (the old one never fires); a timer that
fires is forgotten first, then `fire(key)` is called; CancelTimer of a key not running is a no-op.
The shell decides what happens around a fire (both shells first read what their sockets hold, so
that a message that came in before the deadline counts before the half judges).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

from protocol.actions import CancelTimer, StartTimer
from runtime.loop import Loop


class HalfTimers:
    def __init__(self, loop: Loop, fire: Callable[[Hashable], None]) -> None:
        self.loop = loop
        self.fire = fire
        self._handles: dict[Any, int] = {}

    def start(self, action: StartTimer) -> None:
        key = action.key
        old = self._handles.pop(key, None)
        if old is not None:
            self.loop.cancel(old)

        def due() -> None:
            if self._handles.get(key) == handle:
                del self._handles[key]
                self.fire(key)

        handle = self.loop.call_later(action.seconds, due)
        self._handles[key] = handle

    def cancel(self, action: CancelTimer) -> None:
        handle = self._handles.pop(action.key, None)
        if handle is not None:
            self.loop.cancel(handle)

    def __len__(self) -> int:
        return len(self._handles)
