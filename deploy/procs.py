"""Processes of a run: is this pid still our service, wait for it to go, make it go.

A pid alone is not proof: it may have been reused, or be a zombie (dead, not yet reaped by its
parent). A service counts as alive only if /proc says it is running and its command line names
our service module. /proc/PID/stat is read by runtime/watchdog.py, for the services' own watch.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from runtime import watchdog


def _state_and_cmdline(pid: int) -> tuple[str, str] | None:
    fields = watchdog.stat_fields(pid)
    argv = cmdline(pid)
    if fields is None or argv is None:
        return None
    return fields[0], " ".join(argv)


def cmdline(pid: int) -> list[str] | None:
    """The process's argv, or None if it is gone (or not ours to read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw.decode(errors="replace").split("\0")[:-1] if raw else []


def uptime_s(pid: int) -> float | None:
    """How long the process has run, from /proc (None if it is gone)."""
    start = watchdog.start_ticks(pid)
    try:
        since_boot = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return None if start is None else max(0.0, since_boot - start / os.sysconf("SC_CLK_TCK"))


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
