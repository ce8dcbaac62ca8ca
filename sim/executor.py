"""Where work units run: here, in local workers, or on a Dask cluster, behind one interface.

The schedule search (sim/explore.py), explore-table and campaigns (deploy/) hand out work units
(a range of schedules, a subtree, one table cell, one run) and collect what each returns. They
all do it through `executor()`:

- `scheduler` (a Dask distributed scheduler address, tcp://HOST:PORT) gives the cluster's
  workers, through `distributed.Client.get_executor()`: a concurrent.futures Executor. Workers
  need dmabuf-emu importable. The address is checked first (`check_scheduler`), so a typo is one
  line, not a hang.
- else `jobs` > 1 gives that many local workers: processes, spawned (the parent's threads, such
  as a progress bar's, stay in the parent); or threads with `threads=True`, for units that only
  supervise a child process of their own (a campaign's run), which must not see the terminal's
  Ctrl-C before the parent has decided what to do with it.
- else the units run here, one at a time, each when `done` asks for its result (`jobs` 1: what
  a single process does, with nothing started).

Rules:
- `submit(fn, *args, key=None)` returns a concurrent.futures.Future (`key`: the task's name on
  a Dask scheduler, ignored elsewhere); `done(futures)` waits until at least one has finished
  and returns those that have (a unit's exception is raised by its future's result()); `cancel`
  cancels units not started (a Dask task already running finishes on its worker); `close()`
  cancels what is left on a cluster before it lets the client go; locally it waits for running
  units only in threads and here. Local worker *processes* still running a unit when the caller
  closes (it stopped early: --time, an interrupt, the first race) are terminated, not waited for:
  one unit (a subtree of an exhaustive level) can run for hours, and what it would return is not
  recorded anyway (a resumed search runs it again).
- `workers` says how many units run at once (the cluster's threads for Dask), for callers that
  keep that many queued.
- Local worker processes die with the process that started them (a parent-death signal, set as
  each starts): a search killed by SIGTERM or SIGKILL leaves no worker going on with its subtree.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable


class SchedulerError(ValueError):
    """A --scheduler address that is not one: the message says what was expected."""


def check_scheduler(address: str) -> None:
    """A Dask scheduler address (tcp://HOST:PORT, or another scheme distributed knows), checked
    before anything runs; distributed parses it, so what passes here is what Client accepts."""
    from distributed.comm import parse_address
    from distributed.comm.registry import backends
    why = f"--scheduler must be a Dask scheduler address such as tcp://HOST:PORT, got {address!r}"
    try:
        scheme, where = parse_address(address, strict=True)
    except ValueError:
        raise SchedulerError(why) from None
    if scheme not in backends:
        raise SchedulerError(f"{why} (schemes: {', '.join(sorted(backends))})")
    if scheme in ("tcp", "tls", "ws", "wss"):
        host, _, port = where.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SchedulerError(why)


class _Here(Executor):
    """Units run in this process, one at a time, when their result is first waited for."""

    def __init__(self) -> None:
        self._queued: dict[Future, tuple[Callable[..., Any], tuple]] = {}

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        f: Future = Future()
        self._queued[f] = (fn, args)
        f.add_done_callback(lambda f: self._queued.pop(f, None))   # cancelled before it ran
        return f

    def run(self, f: Future) -> None:
        fn, args = self._queued.pop(f)
        if not f.set_running_or_notify_cancel():
            return
        try:
            f.set_result(fn(*args))
        except BaseException as exc:
            f.set_exception(exc)
            if not isinstance(exc, Exception):   # Ctrl-C: the caller's to handle, now
                raise


class Pool:
    """One interface over the three: see the module's rules."""

    def __init__(self, ex: Executor, workers: int, client: Any = None) -> None:
        self.ex, self.workers, self.client = ex, workers, client
        self._live: set[Future] = set()          # submitted and not finished (local processes: close)

    def submit(self, fn: Callable[..., Any], *args: Any, key: str | None = None) -> Future:
        if self.client is not None and key is not None:
            return self.ex.submit(fn, *args, key=key)
        f = self.ex.submit(fn, *args)
        if isinstance(self.ex, ProcessPoolExecutor):
            self._live.add(f)
            f.add_done_callback(self._live.discard)
        return f

    def done(self, futures: Iterable[Future], timeout: float | None = None) -> list[Future]:
        """Those of `futures` that have finished, waiting until one has (running one, here), or
        `timeout` seconds have passed (then possibly none: a caller that must see a stop while
        long units run)."""
        futures = list(futures)
        if isinstance(self.ex, _Here):
            first = next((f for f in futures if not f.done()), None)
            if first is not None:
                self.ex.run(first)
            return [f for f in futures if f.done()]
        return list(wait(futures, timeout=timeout, return_when=FIRST_COMPLETED).done)

    def cancel(self, futures: Iterable[Future]) -> None:
        for f in futures:
            f.cancel()

    def close(self) -> None:
        if self.client is not None:     # what still runs on the cluster is cancelled, as before
            self.ex.shutdown(wait=False)
            self.client.close()
        elif isinstance(self.ex, ProcessPoolExecutor) and any(not f.done() for f in list(self._live)):
            # abandoned units (see the rules): their workers are terminated; each worker's own
            # forks (sim/search/snapshot.py) die with it (their parent-death signal)
            # (concurrent.futures gives no public way to reach the workers before Python 3.14's
            # terminate_workers(); without `_processes` this falls back to waiting, as before)
            procs = list((getattr(self.ex, "_processes", None) or {}).values())
            self.ex.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=10)
            self.ex.shutdown(wait=True)
        else:
            self.ex.shutdown(wait=True, cancel_futures=True)


def _die_with(parent: int) -> None:
    """A local worker's first call: SIGKILL when the parent dies (it holds nothing to clean up: a
    simulated run has no segment, a campaign's unit is a thread); gone at once if it already has."""
    from runtime.watchdog import set_parent_death_signal   # the same prctl the services use
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def executor(jobs: int = 1, scheduler: str | None = None, *, threads: bool = False, retries: int = 0) -> Pool:
    """A Dask cluster's workers (`scheduler`), else `jobs` local workers (processes, or threads),
    else this process. `retries`: how often Dask runs a unit again whose worker died."""
    if scheduler:
        check_scheduler(scheduler)
        from distributed import Client
        client = Client(scheduler, timeout="20s")
        return Pool(client.get_executor(pure=False, retries=retries), max(1, sum(client.nthreads().values())),
                    client)
    if jobs > 1 and threads:
        from concurrent.futures import ThreadPoolExecutor
        return Pool(ThreadPoolExecutor(max_workers=jobs), jobs)
    if jobs > 1:
        import multiprocessing
        return Pool(ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_die_with, initargs=(os.getpid(),)), jobs)
    return Pool(_Here(), 1)
