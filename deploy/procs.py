"""Processes of a run: is this pid still our service, wait for it to go, make it go.

A pid alone is not proof: it may have been reused, or be a zombie (dead, not yet reaped by its
parent). A service counts as alive only if /proc says it is running and its command line names
our service module.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _state_and_cmdline(pid: int) -> tuple[str, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the state is the field after the parenthesised command name
    state = stat[stat.rfind(")") + 2:].split(" ", 1)[0]
    return state, cmdline


def reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie; no-op for others."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def alive(pid: int, marker: str) -> bool:
    reap(pid)
    info = _state_and_cmdline(pid)
    if info is None:
        return False
    state, cmdline = info
    return state not in ("Z", "X") and marker in cmdline


def wait_gone(pids: dict[int, str], timeout_s: float) -> dict[int, str]:
    """Wait until none of `pids` (pid -> marker) is alive; returns those still alive."""
    deadline = time.monotonic() + timeout_s
    left = dict(pids)
    while left:
        left = {p: m for p, m in left.items() if alive(p, m)}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return left


def signal_all(pids: dict[int, str], sig: signal.Signals) -> None:
    for pid, marker in pids.items():
        if alive(pid, marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
