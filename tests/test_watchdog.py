"""The launcher watch (runtime/watchdog.py) and the stop signals of foreground commands
(deploy/interrupt.py), piece by piece: identities, pid reuse, zombies, the poll on a loop, a real
exporter watching a launcher that is not its parent, and SIGTERM/SIGHUP as Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from deploy import interrupt
from runtime import security, shm, watchdog
from tests.helpers import ROOT


def _sleeper() -> subprocess.Popen:
    """A process to play the launcher: it reads stdin until we close it (or kill it)."""
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)


class FakeLoop:
    """call_soon / call_later recorded, run by hand: the watch reads no clock of its own."""

    def __init__(self) -> None:
        self.soon: list = []
        self.later: list[tuple[float, object]] = []

    def call_soon(self, cb) -> None:
        self.soon.append(cb)

    def call_later(self, seconds: float, cb) -> int:
        self.later.append((seconds, cb))
        return len(self.later)

    def run_soon(self) -> None:
        while self.soon:
            self.soon.pop(0)()

    def fire_next_timer(self) -> float:
        seconds, cb = self.later.pop(0)
        cb()
        self.run_soon()
        return seconds


def test_identity_names_one_process_and_parse_refuses_garbage() -> None:
    me = watchdog.identity()
    pid, start = watchdog.parse(me)
    assert pid == os.getpid() and start > 0 and watchdog.is_alive(me)
    assert not watchdog.is_alive(f"{pid}:{start + 1}"), "same pid, another start time: a reused pid"
    for bad in ("", "123", "abc:1", "12:x", "0:5", "-1:5"):
        with pytest.raises(ValueError, match="expected PID:START"):
            watchdog.parse(bad)


def test_a_dead_launcher_is_gone_even_as_an_unreaped_zombie() -> None:
    p = _sleeper()
    spec = watchdog.identity(p.pid)
    assert watchdog.is_alive(spec)
    p.kill()
    deadline = time.monotonic() + 10
    while watchdog.stat_fields(p.pid)[0] != "Z":       # dead, not yet reaped by us
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not watchdog.is_alive(spec)
    p.wait()
    assert not watchdog.is_alive(spec) and watchdog.identity(p.pid) == ""


def test_the_watch_polls_on_the_loop_every_period_and_reports_once() -> None:
    p = _sleeper()
    try:
        gone: list[str] = []
        loop = FakeLoop()
        watch = watchdog.LauncherWatch(loop, watchdog.identity(p.pid), 0.25, gone.append)
        assert not watch.parent_signal, "not our parent: no parent-death signal, the poll alone"
        loop.run_soon()                                   # the first check, at once
        assert gone == [] and loop.fire_next_timer() == 0.25 and gone == []
        p.kill()
        p.wait()
        loop.fire_next_timer()
        assert gone == ["poll"] and loop.later == [], "gone: reported once, no more polling"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_launcher_already_gone_is_seen_on_the_first_turn_of_the_loop() -> None:
    gone: list[str] = []
    loop = FakeLoop()
    me = watchdog.parse(watchdog.identity())
    watchdog.LauncherWatch(loop, f"{me[0]}:{me[1] + 1}", 10.0, gone.append)
    loop.run_soon()
    assert gone == ["poll"] and loop.later == []


def _exporter(d: Path, launcher: str) -> tuple[subprocess.Popen, str]:
    run_id = "wd" + uuid.uuid4().hex[:8]
    creds = security.secrets_dir(d) / "exporter.json"
    security.write_private(creds, {"secret": os.urandom(32).hex()})
    cmd = [sys.executable, "-m", "exporter_svc", "--run-id", run_id, "--launcher", launcher, "--out", str(d),
           "--endpoint", f"ipc://{d}/e.rpc", "--control", f"ipc://{d}/e.ctl", "--buffers", "2",
           "--buffer-size", "64KiB", "--lease-ms", "400", "--credentials", str(creds)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT), run_id


def test_an_exporter_stops_and_unlinks_when_a_launcher_that_is_not_its_parent_dies(short_dir: Path) -> None:
    from tests.conftest import wait_for_file
    launcher = _sleeper()
    proc, run_id = _exporter(short_dir, watchdog.identity(launcher.pid))
    try:
        wait_for_file(short_dir / "run" / "exporter.json", proc)
        assert len(shm.existing(run_id)) == 3
        launcher.kill()
        launcher.wait()
        assert proc.wait(5 * 0.4 + 5) == watchdog.EXIT_LAUNCHER_GONE   # a poll every lease (400 ms)
    finally:
        for p in (launcher, proc):
            if p.poll() is None:
                p.kill()
                p.wait()
        for name in shm.existing(run_id):
            shm.unlink(name)
    out = proc.stdout.read().decode()
    assert "is gone (poll): stopping" in out, out
    assert shm.existing(run_id) == [], "the exporter unlinks its segments on the way out"


def test_a_reused_pid_is_not_the_launcher(short_dir: Path) -> None:
    pid, start = watchdog.parse(watchdog.identity())
    proc, run_id = _exporter(short_dir, f"{pid}:{start - 1}")  # our pid, someone else's start time
    try:
        assert proc.wait(30) == watchdog.EXIT_LAUNCHER_GONE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert shm.existing(run_id) == []


def test_a_bad_launcher_spec_is_one_line_naming_it(short_dir: Path) -> None:
    proc, _ = _exporter(short_dir, "nope")
    assert proc.wait(30) == 2
    assert "--launcher 'nope': expected PID:START" in proc.stdout.read().decode()


def test_sigterm_and_sighup_raise_interrupted_as_ctrl_c_does() -> None:
    before = {s: signal.getsignal(s) for s in interrupt.STOP_SIGNALS}
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        with pytest.raises(interrupt.Interrupted) as info:
            with interrupt.stop_signals():
                os.kill(os.getpid(), sig)
                for _ in range(1000):       # the handler runs between bytecodes, at once
                    pass
        assert info.value.signal == sig.name and info.value.exit_code == 128 + sig
        assert isinstance(info.value, KeyboardInterrupt), "every Ctrl-C cleanup runs for it"
    assert {s: signal.getsignal(s) for s in interrupt.STOP_SIGNALS} == before, "handlers restored"


def test_a_signal_during_shielded_cleanup_waits_and_a_second_one_does_not_cut_it() -> None:
    with interrupt.stop_signals():
        with interrupt.shielded():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(1000):
                pass
            first = interrupt.pending()
        assert first is not None and first.signal == "SIGTERM" and first.exit_code == 143
        os.kill(os.getpid(), signal.SIGTERM)     # after the first, TERM and HUP only count
        for _ in range(1000):
            pass
    assert interrupt.pending() is None, "a signal of a finished command does not reach the next code"
