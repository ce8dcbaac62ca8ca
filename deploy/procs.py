"""Processes of a run: is this pid still our service, wait for it to go, make it go.

A pid alone is not proof: it may have been reused, or be a zombie (dead, not yet reaped by its
parent). A service counts as alive only if its state is not zombie (or dead) and its command line
names our service module; both come from psutil, which reads /proc/PID/stat and /proc/PID/cmdline
as this module once did by hand. Start times stay in clock ticks read from /proc/PID/stat
(runtime/watchdog.py: psutil's create_time is a float of seconds since the epoch, derived from
the boot time, which moves when the clock is set).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil

from runtime import watchdog
from runtime.lifecycle import GONE_POLL_S

GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def cmdline(pid: int) -> list[str] | None:
    """The process's argv, or None if it is gone (or not ours to read); [] for a zombie."""
    try:
        return psutil.Process(pid).cmdline()
    except psutil.ZombieProcess:
        return []
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def uptime_s(pid: int) -> float | None:
    """How long the process has run (None if it is gone). From /proc, not psutil: the start in
    clock ticks since boot against /proc/uptime is exact, where psutil's create_time rests on the
    boot time in whole seconds and on the wall clock."""
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
    """Is `pid` running (not a zombie) with `marker` in its command line? The marker is what tells
    a reused pid from our service."""
    reap(pid)
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return proc.status() not in GONE and marker in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):   # ZombieProcess included
        return False


def wait_gone(pids: dict[int, str], timeout_s: float) -> dict[int, str]:
    """Wait until none of `pids` (pid -> marker) is alive; returns those still alive."""
    deadline = time.monotonic() + timeout_s
    left = dict(pids)
    while left:
        left = {p: m for p, m in left.items() if alive(p, m)}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(GONE_POLL_S)
    return left


def signal_all(pids: dict[int, str], sig: signal.Signals) -> None:
    for pid, marker in pids.items():
        if alive(pid, marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
