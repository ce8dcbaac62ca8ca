"""Snapshots (sim/search/snapshot.py): the exhaustive search gives the same schedules, in the same
order, with the same verdicts and counts, whether each schedule runs from start-up or resumes from
a forked snapshot of its prefix; a snapshot that cannot be taken falls back to start-up, once
said; and nothing is left running after the search, after Ctrl-C, or after the searcher is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from sim.search import dpor, snapshot
from sim.search.exhaustive import node_to_dict
from tests.helpers import ROOT
from tests.test_dpor import MUTANT, REVOKE, RF_DUP, RF_TWO, cfg_of


def search(case: tuple, bound: int | None, reduction: str, snapshots: bool | None) -> list[tuple]:
    """Everything explore() yields for each schedule, as comparable values."""
    out = []
    for trial, stack, level, cost in dpor.explore(cfg_of(*case), bound, reduction=reduction, snapshots=snapshots):
        out.append((trial.blocked, trial.history_sha256, sorted(map(str, trial.races)), trial.error, cost,
                    level.bound, level.over_bound, level.unraced, trial.steps, trial.messages, trial.window_steps,
                    trial.entries, trial.streams, [node_to_dict(n) for n in stack]))
    return out


def in_fresh_process(fn: str, *args: object) -> None:
    """Run this module's `fn(*args)` in a new interpreter: forking needs a process with no other
    thread, and tests run before these in one pytest worker may have left threads behind."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", f"import tests.test_snapshots as t; t.{fn}(*{args!r})"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def same_search(case: tuple, bound: int, reduction: str) -> None:
    without = search(case, bound, reduction, False)
    with_ = search(case, bound, reduction, True)
    stats = snapshot.report()
    assert stats["resumed"] > 0 and stats["snapshots"] > 0 and stats["fallbacks"] == 0, stats
    assert len(with_) == len(without)
    for i, (a, b) in enumerate(zip(without, with_)):
        assert a == b, f"schedule {i + 1} differs"
    assert not psutil.Process().children(recursive=True)


@pytest.mark.parametrize("case,bound,reduction", [
    (MUTANT, 2, dpor.DPOR), (MUTANT, 2, dpor.SLEEP_SETS), (MUTANT, 1, dpor.NONE),
    (RF_DUP, 1, dpor.DPOR), (REVOKE, 1, dpor.DPOR), (RF_TWO, 0, dpor.NONE)],
    ids=["mutant-dpor-2", "mutant-sleep-sets-2", "mutant-none-1", "rf-dup-dpor-1", "revoke-dpor-1", "rf-two-none-0"])
def test_snapshots_give_the_same_search(case: tuple, bound: int, reduction: str) -> None:
    in_fresh_process("same_search", case, bound, reduction)


def test_the_races_are_found_from_snapshots_too() -> None:
    races = {r for s in search(MUTANT, 2, dpor.DPOR, True) for r in s[2]}
    assert any("stale_read" in r for r in races)


def fork_refused() -> None:
    said: list[str] = []
    real, searcher, warn = os.fork, os.getpid(), snapshot._warn
    snapshot._warn = said.append  # type: ignore[assignment]

    def fork() -> int:                      # the searcher may fork the chain; the chain may not fork
        if os.getpid() != searcher:
            raise OSError(11, "Resource temporarily unavailable")
        return real()

    def refused() -> int:
        raise OSError(12, "Cannot allocate memory")
    try:
        expected = search(MUTANT, 1, dpor.DPOR, False)
        os.fork = fork
        assert search(MUTANT, 1, dpor.DPOR, True) == expected
        stats = snapshot.report()
        assert stats["resumed"] == 0 and stats["fallbacks"] > 1 and "fork refused" in stats["fallback"], stats
        assert len(said) == 1 and "no snapshot" in said[0]
        os.fork = refused
        said.clear()
        assert search(MUTANT, 1, dpor.DPOR, True) == expected
        assert snapshot.report()["fallbacks"] == len(expected) and len(said) == 1
    finally:
        os.fork, snapshot._warn = real, warn  # type: ignore[assignment]


def test_a_fork_refused_falls_back_to_start_up_said_once() -> None:
    in_fresh_process("fork_refused")


def test_threads_alive_mean_no_fork() -> None:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        got = search(MUTANT, 1, dpor.DPOR, True)
    finally:
        stop.set()
        t.join()
    stats = snapshot.report()
    assert stats["forks"] == 0 and "threads are alive" in stats["fallback"], stats
    assert got == search(MUTANT, 1, dpor.DPOR, False)


def closing_ends_the_chain() -> None:
    gen = dpor.explore(cfg_of(*RF_TWO), 0, reduction=dpor.NONE, snapshots=True)
    for _ in range(5):
        next(gen)
    chain = psutil.Process().children(recursive=True)
    assert len(chain) >= 2                  # the first process and a snapshot at least
    gen.close()
    assert not psutil.Process().children(recursive=True)
    assert not [p for p in chain if p.is_running()]


def test_closing_the_search_ends_the_chain() -> None:
    """What Ctrl-C does inside Python: the generator is closed mid-pass."""
    in_fresh_process("closing_ends_the_chain")


# ------------------------------------------------------------------ the CLI, interrupted or killed

def _explore(tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), snapshot.ENV: snapshot.ON}
    return subprocess.Popen([sys.executable, "-m", "deploy.cli", "explore", "--strategy", "resv-fence", "--search",
                             "exhaustive", "--bound", "2", "--no-stalls", "--out", str(tmp_path / "x"), "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def _chain_of(proc: subprocess.Popen[bytes], deadline_s: float = 60) -> list[psutil.Process]:
    """The explore's descendants once it has a snapshot chain (the first process and a snapshot)."""
    me, end = psutil.Process(proc.pid), time.monotonic() + deadline_s
    while time.monotonic() < end and proc.poll() is None:
        kids = me.children(recursive=True)
        if len(kids) >= 2:
            return kids
        threading.Event().wait(0.02)
    raise AssertionError("no snapshot chain appeared")


def _all_gone(procs: list[psutil.Process], deadline_s: float = 30) -> list[psutil.Process]:
    """Those still running (a zombie waiting for PID 1 to reap it counts as gone: it runs nothing)."""
    end = time.monotonic() + deadline_s
    while True:
        left = [p for p in procs if p.is_running() and _status(p) != psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > end:
            return left
        threading.Event().wait(0.02)


def _status(p: psutil.Process) -> str:
    try:
        return p.status()
    except psutil.NoSuchProcess:
        return psutil.STATUS_DEAD


def test_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    proc = _explore(tmp_path)
    try:
        chain = _chain_of(proc)
        os.killpg(proc.pid, signal.SIGINT)   # a terminal's Ctrl-C: the whole process group
        assert proc.wait(timeout=60) == 130
        assert not _all_gone(chain)
        # each was reaped by its parent, none left to PID 1
        assert not [p for p in chain if p.is_running()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killing_the_searcher_leaves_nothing_running(tmp_path: Path) -> None:
    proc = _explore(tmp_path)
    try:
        chain = _chain_of(proc)
        proc.kill()
        proc.wait(timeout=30)
        assert not _all_gone(chain)          # PR_SET_PDEATHSIG: each dies with its parent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def auto_measures() -> None:
    snapshot.BLOCK = 8
    os.environ[snapshot.ENV] = snapshot.AUTO
    got = search(MUTANT, 2, dpor.SLEEP_SETS, None)
    stats = snapshot.report()
    assert stats["mode"] == "auto" and stats["chose"] in ("snapshots", "start-up"), stats
    assert stats["block_ms"]["start-up"] > 0 and stats["block_ms"]["snapshots"] > 0
    assert stats["resumed"] > 0 and stats["resumed"] < stats["schedules"]
    assert got == search(MUTANT, 2, dpor.SLEEP_SETS, False)
    assert not psutil.Process().children(recursive=True)


def test_auto_measures_both_ways_and_keeps_the_cheaper() -> None:
    in_fresh_process("auto_measures")
