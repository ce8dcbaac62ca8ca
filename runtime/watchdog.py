"""The launcher watch: a service started for a foreground command stops when that command is gone.

Rules:
- A launcher is named by `PID:START` (`identity()`): its pid and its start time, field 22 of
  /proc/PID/stat in clock ticks since boot. The pair names one process even after the pid is
  reused. `dmabuf-emu run` (and every command that starts services in the foreground) passes its
  own identity as `--launcher`; `up` passes none, since its services outlive it by design.
- The launcher is gone when /proc/PID/stat is missing, says the process is a zombie (dead, not
  yet reaped) or carries another start time. Nothing else counts: not a closed terminal, not a
  parent-death signal on its own.
- Two ways to notice, both ending in one `on_gone(how)` called from the service's loop:
    * `how="parent died"`: when the launcher is our parent, the kernel sends LAUNCHER_SIGNAL the
      moment it dies (prctl(PR_SET_PDEATHSIG), set through ctypes). The kernel sends it when the
      *thread* that forked us exits, not the process, so the signal only asks the loop for a
      check; a launcher that spawned from a helper thread which then ended is still alive.
    * `how="poll"`: a check every `every_s` (the service passes its lease) on a loop timer. It
      also catches a launcher that died before the prctl and one that is not our parent.
  The first check runs as soon as the loop does: a launcher that died during our startup is seen
  at once.
- Before all that, a service's first lines call `die_with_launcher(argv)`: from then until the
  watch installs its handler, the parent-death signal keeps its default action (terminate), so
  a service still importing its modules when the launcher dies goes at once, and one whose
  launcher is already gone exits there. Safe from the thread rule above: the launcher's spawning
  thread waits in `up` until every service answers ping, which comes after the handler.
- The signal handler only queues the check (`loop.call_soon`): it may interrupt the loop between
  any two bytecodes, for instance in the middle of writing an event.
- Time goes only through the loop (its timers); no thread, no clock of our own.

Why /proc/PID/stat and not psutil (which deploy/procs.py and deploy/leftovers.py use): the start
time must be the same number in every process that reads it, for the life of the run. Field 22
is an integer of clock ticks since boot, fixed for the process. psutil's Process.create_time() is
that over the clock rate plus the boot time (/proc/stat's btime, whole seconds, recomputed from
the wall clock on each read, so it moves when the clock is stepped or slewed): a launcher and
its service reading it a second apart may disagree, and a live launcher would be taken for gone.
One read of the stat file also gives the state (zombie or not) and the start together.

Linux only (/proc): elsewhere `identity()` is "" and nothing is armed. A launcher on another
machine is invisible in /proc; the general answer there is a heartbeat from the launcher on the
control socket. dmabuf-emu always starts a run's services on the launcher's own machine (tcp
runs included, and a campaign's Dask worker runs `dmabuf-emu run` itself), so that is not built.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

PR_SET_PDEATHSIG = 1                 # linux/prctl.h
LAUNCHER_SIGNAL = signal.SIGUSR1     # what the kernel sends us when our parent dies
EXIT_LAUNCHER_GONE = 5               # a service's exit status when it stopped because of it


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3, the state, first)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
        return None
    # the command name is in parentheses and may itself hold spaces or parentheses
    return stat[stat.rfind(")") + 2:].split()


def start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), or None if it is gone or a zombie."""
    fields = stat_fields(pid)
    if fields is None or len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])           # field 22 of the whole line


def process_gone(pid: int) -> bool:
    """Has process `pid` exited (a zombie not yet reaped counts)? Where /proc cannot say, whether
    a signal can still reach it. The exporter asks it of an importer whose lease ran out while its
    device was in mid-access (runtime/env.py)."""
    if Path("/proc/self/stat").exists():
        return start_ticks(pid) is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def identity(pid: int | None = None) -> str:
    """`PID:START` for process `pid` (default: this one), or "" where /proc cannot say."""
    pid = os.getpid() if pid is None else pid
    start = start_ticks(pid)
    return "" if start is None else f"{pid}:{start}"


def parse(spec: str) -> tuple[int, int]:
    """(pid, start) of a `PID:START` launcher spec; ValueError naming the spec otherwise."""
    pid, sep, start = spec.partition(":")
    if not sep or not pid.isdigit() or not start.isdigit() or int(pid) <= 0:
        raise ValueError(f"--launcher {spec!r}: expected PID:START (the launcher's pid and its start "
                         f"time in clock ticks, field 22 of /proc/PID/stat)")
    return int(pid), int(start)


def is_alive(spec: str) -> bool:
    """Is the launcher named by `spec` still the running process it was?"""
    pid, start = parse(spec)
    return start_ticks(pid) == start


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (prctl PR_SET_PDEATHSIG,
    Linux only): the services' watchdog and the search's local workers. False where it is refused."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux, or no prctl: the poll alone watches
        return False


def die_with_launcher(argv: list[str]) -> None:
    """A service's first call, before its heavy imports (see the rules at the top). A missing or
    unreadable --launcher does nothing here: the argument parser says what is wrong with it."""
    spec = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--launcher"), "")
    try:
        pid, start = parse(spec)
    except ValueError:
        return
    if os.getppid() == pid:
        set_parent_death_signal(LAUNCHER_SIGNAL)
    if start_ticks(pid) != start:
        from runtime import oplog  # here, not at the top: a service's first call stays cheap
        oplog.service_logger("", stream=sys.stderr).error(
            "the launcher is gone before this service started: exiting", launcher=spec)
        sys.exit(EXIT_LAUNCHER_GONE)


class LauncherWatch:
    """Watches one launcher from a service's loop (any object with call_soon and call_later).

    Arming it (the constructor) must happen in the main thread (it installs a signal handler);
    `on_gone` is called at most once, from the loop. `every_s` bounds how long a dead launcher
    goes unnoticed when no signal came."""

    def __init__(self, loop: Any, spec: str, every_s: float, on_gone: Callable[[str], None]) -> None:
        self.spec = spec
        self.pid, self.start = parse(spec)
        self.loop = loop
        self.every_s = max(0.01, every_s)
        self.on_gone = on_gone
        self.gone = False
        self.parent_signal = False
        if os.getppid() == self.pid:
            # handler first, then the prctl: a death in between still finds the handler
            signal.signal(LAUNCHER_SIGNAL, self._on_signal)
            self.parent_signal = set_parent_death_signal(LAUNCHER_SIGNAL)
        loop.call_soon(self._poll)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.loop.call_soon(lambda: self._verify("parent died"))

    def _poll(self) -> None:
        if not self._verify("poll"):
            self.loop.call_later(self.every_s, self._poll)

    def _verify(self, how: str) -> bool:
        """True once the launcher is gone (on_gone called the first time)."""
        if self.gone:
            return True
        if start_ticks(self.pid) == self.start:
            return False
        self.gone = True
        self.on_gone(how)
        return True
