"""sim/executor.py: one interface over this process, local workers and (tests/test_explore.py,
tests/test_campaign.py) a Dask cluster."""

from __future__ import annotations

import os

import pytest

from sim.executor import SchedulerError, check_scheduler, executor


def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fails(x: int) -> int:
    raise ValueError(f"unit {x} failed")


def collect(pool, units: list[int]) -> dict[int, tuple[int, int]]:
    futures = {pool.submit(square_and_pid, x): x for x in units}
    out = {}
    while futures:
        for f in pool.done(futures):
            out[futures.pop(f)] = f.result()
    return out


@pytest.mark.parametrize("jobs, threads", [(1, False), (2, True), (2, False)])
def test_every_backend_gives_each_units_result(jobs: int, threads: bool) -> None:
    pool = executor(jobs, threads=threads)
    try:
        out = collect(pool, [1, 2, 3, 4])
    finally:
        pool.close()
    assert pool.workers == jobs
    assert {x: r[0] for x, r in out.items()} == {1: 1, 2: 4, 3: 9, 4: 16}
    pids = {r[1] for r in out.values()}
    assert (pids == {os.getpid()}) == (jobs == 1 or threads), "processes only for jobs > 1 without threads"


def test_here_runs_a_unit_only_when_it_is_waited_for_and_never_a_cancelled_one() -> None:
    ran: list[int] = []
    pool = executor(1)
    a, b = pool.submit(ran.append, 1), pool.submit(ran.append, 2)
    assert ran == []
    pool.cancel([b])
    assert pool.done([a, b]) == [a, b] and ran == [1]
    assert b.cancelled()


def test_a_units_exception_comes_from_its_result() -> None:
    pool = executor(2, threads=True)
    try:
        f = pool.submit(fails, 7)
        assert pool.done([f]) == [f]
        with pytest.raises(ValueError, match="unit 7 failed"):
            f.result()
    finally:
        pool.close()


@pytest.mark.parametrize("address", ["localhost:8786", "tcp://", "tcp://host:0", "nosuch://host:1"])
def test_a_bad_scheduler_address_is_refused_in_one_line(address: str) -> None:
    with pytest.raises(SchedulerError, match="--scheduler must be a Dask scheduler address") as e:
        check_scheduler(address)
    assert "\n" not in str(e.value)
    check_scheduler("tcp://127.0.0.1:8786")


def test_local_workers_die_with_the_search_that_started_them(tmp_path) -> None:
    """An exhaustive search on 2 workers, SIGKILLed while its workers run subtrees: within a
    bounded wait no worker is left (before, they went on with their subtree for minutes)."""
    import signal
    import subprocess
    import sys
    import time

    import psutil
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "explore", "--strategy", "resv-fence",
                             "--search", "exhaustive", "--bound", "3", "--jobs", "2", "--quiet",
                             "--out", str(tmp_path / "x")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    workers: list = []
    while time.monotonic() < deadline and len(workers) < 2:
        workers = [c for c in parent.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
        time.sleep(0.05)        # polling for the workers to exist (bounded by the deadline)
    assert len(workers) >= 2, "the search never started its workers"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    gone, alive = psutil.wait_procs(workers, timeout=10)
    for w in alive:             # nothing left behind, even when the test fails
        w.kill()
    assert not alive, [w.pid for w in alive]


def forever(started: str) -> None:
    """A unit that never ends by itself (it says it began by creating `started`)."""
    import time
    open(started, "w").close()
    while True:
        time.sleep(1)


def test_closing_with_a_unit_still_running_terminates_its_worker(tmp_path) -> None:
    """A caller that stops early (--time, Ctrl-C, a race) closes the pool while a worker still runs
    a unit, which may be a subtree of hours: close() terminates that worker instead of waiting."""
    import threading
    import time

    import psutil
    pool = executor(2)
    started = tmp_path / "started"
    f = pool.submit(forever, str(started))
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)        # polling for the unit to begin (bounded by the deadline)
    assert started.exists(), "the unit never began"
    workers = [c for c in psutil.Process().children() if "spawn_main" in _cmd(c)]
    assert workers
    closing = threading.Thread(target=pool.close, daemon=True)
    closing.start()
    closing.join(timeout=30)
    assert not closing.is_alive(), "close() waited for a unit that never ends"
    gone, alive = psutil.wait_procs(workers, timeout=10)
    for w in alive:
        w.kill()
    assert not alive and f.done()      # its future ends too (the pool broke under it), not left pending


def _cmd(p) -> str:
    import psutil
    try:
        return " ".join(p.cmdline())
    except psutil.Error:        # gone, or a zombie about to be reaped
        return ""


def test_an_exhaustive_search_on_workers_stops_at_its_time_limit(tmp_path) -> None:
    """--time with --jobs: the search stops at its limit, keeps what it recorded (resumable) and
    leaves none of its workers (each seen while it ran)."""
    import json
    import subprocess
    import sys
    import time

    import psutil
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "explore", "--strategy", "resv-fence", "--search",
                             "exhaustive", "--bound", "2", "--jobs", "2", "--time", "3", "--quiet", "--out",
                             str(tmp_path / "x")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parent, workers = psutil.Process(proc.pid), {}
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            workers.update((c.pid, c) for c in parent.children() if "spawn_main" in _cmd(c))
        except psutil.Error:
            pass                # it just ended
        time.sleep(0.05)        # polling for its workers and its end (bounded by the deadline)
    if proc.poll() is None:
        proc.kill()
    assert proc.wait(timeout=10) == 0, proc.stderr.read()
    assert workers, "the search never started its workers"
    gone, alive = psutil.wait_procs(list(workers.values()), timeout=10)
    for w in alive:
        w.kill()
    assert not alive
    done = json.loads((tmp_path / "x" / "explore.json").read_text())
    assert not done["exhausted"] and (tmp_path / "x" / "explore.state.json").exists()


def test_done_with_a_timeout_may_return_nothing(tmp_path) -> None:
    """A caller that must look for a stop while long units run (the split exhaustive search) waits
    at most `timeout` for one to finish."""
    pool = executor(2)
    try:
        f = pool.submit(forever, str(tmp_path / "started"))
        assert pool.done([f], timeout=0.2) == []
    finally:
        pool.close()
