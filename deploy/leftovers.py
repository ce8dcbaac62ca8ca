"""dmabuf-emu down --all: what runs left on this machine, and removing what nobody owns any more.

Rules:
- Only this user's things are touched: segments in /dev/shm named `dmabuf-...` whose owner is
  our uid, and processes of our uid. Another user's segments are counted, never touched.
- A service is a process whose command line runs `-m exporter_svc` or `-m importer_svc`; it
  belongs to the run its `--run-id` names (an importer without one, from before the watch, to the
  exporter with the same `--out`).
- A service is, by its `--launcher` (runtime/watchdog.py):
    live       watched, and its launcher is the same running process: left alone;
    orphan     watched, and its launcher is gone: stopped (SIGTERM and SIGCONT, SIGKILL after the
               timeout). It would have stopped by itself; one that cannot (paused by SIGSTOP,
               hung) is why this exists;
    unwatched  no --launcher: started by `up` (which it outlives by design), by hand, or by a
               dmabuf-emu from before the watch: left alone; `dmabuf-emu down DIR` stops it.
- A segment is a leftover when no process of ours has it open or mapped (psutil's open_files and
  memory_maps: /proc/*/fd and /proc/*/smaps), looked at after the orphans are stopped: whoever created it (a service, an
  in-process simulator, a test) is gone. The segments are listed before the processes are, so
  a segment created meanwhile is not in the list, and one in the list was already held by its
  creator when the processes were looked at.
- `--dry-run` lists what would be done and changes nothing.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from deploy import procs
from runtime import shm, watchdog

SERVICE_MODULES = ("exporter_svc", "importer_svc")


@dataclass(frozen=True)
class Service:
    pid: int
    module: str
    name: str
    run_id: str
    out: str
    launcher: str

    @property
    def state(self) -> str:
        if not self.launcher:
            return "unwatched"
        try:
            return "live" if watchdog.is_alive(self.launcher) else "orphan"
        except ValueError:
            return "unwatched"  # a --launcher we cannot read: not ours to judge

    def label(self) -> str:
        return f"{self.name} pid {self.pid}"


@dataclass(frozen=True)
class Segment:
    name: str
    run_id: str
    size: int


@dataclass
class Run:
    run_id: str
    services: list[Service] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    holders: dict[str, list[int]] = field(default_factory=dict)   # segment -> pids holding it

    @property
    def out(self) -> str:
        return next((s.out for s in self.services if s.out), "")


@dataclass
class Sweep:
    runs: list[Run]
    foreign_segments: int                               # another user's: not touched
    stopped: list[Service] = field(default_factory=list)
    not_stopped: list[Service] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)       # segments still held by someone
    dry_run: bool = False


def _segments() -> tuple[list[Segment], int]:
    ours, foreign = [], 0
    uid = os.getuid()
    for name in shm.existing():
        try:
            st = os.stat(os.path.join(shm.SHM_DIR, name))
        except FileNotFoundError:
            continue
        if st.st_uid != uid:
            foreign += 1
            continue
        run_id = name[len(shm.PREFIX):].rpartition("-")[0] or name[len(shm.PREFIX):]
        ours.append(Segment(name, run_id, st.st_size))
    return ours, foreign


def _our_pids() -> list[int]:
    """Every process running as our uid (the effective uid, the owner of its /proc/PID), but us."""
    uid, me = os.getuid(), os.getpid()
    return [p.pid for p in psutil.process_iter(["uids"])
            if p.pid != me and p.info["uids"] is not None and p.info["uids"].effective == uid]


def _flag(argv: list[str], flag: str) -> str:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return ""


def _service(pid: int) -> Service | None:
    argv = procs.cmdline(pid)
    if not argv:
        return None
    module = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m" and argv[i + 1] in SERVICE_MODULES), None)
    if module is None or not procs.alive(pid, module):
        return None
    name = "exporter" if module == "exporter_svc" else _flag(argv, "--name") or "importer"
    return Service(pid, module, name, _flag(argv, "--run-id"), _flag(argv, "--out"), _flag(argv, "--launcher"))


def _holders(pids: list[int], names: set[str]) -> dict[str, list[int]]:
    """Which of `pids` have which of the segments `names` open or mapped. psutil reports a mapping
    of an unlinked file under its old path (without " (deleted)"): a process still mapping an
    unlinked segment counts as holding a new segment of the same name, which keeps that segment
    (names carry their run's random id, so that needs a run id used twice)."""
    held: dict[str, list[int]] = defaultdict(list)
    paths = {os.path.join(shm.SHM_DIR, n): n for n in names}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        found: set[str] = set()
        for listing in (proc.open_files, proc.memory_maps):   # each on its own: either may be refused
            try:
                found.update(paths[f.path] for f in listing() if f.path in paths)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        for n in found:
            held[n].append(pid)
    return dict(held)


def survey() -> tuple[list[Run], int]:
    """Every run with something on this machine (this user's), and the count of other users'
    segments. Segments first, processes second (see the rules at the top)."""
    segments, foreign = _segments()
    pids = _our_pids()
    services = [s for s in map(_service, pids) if s is not None]
    by_out = {s.out: s.run_id for s in services if s.module == "exporter_svc" and s.run_id and s.out}
    runs: dict[str, Run] = {}
    for s in services:
        run_id = s.run_id or by_out.get(s.out, "") or f"? ({s.out or 'no --out'})"
        runs.setdefault(run_id, Run(run_id)).services.append(s)
    for seg in segments:
        runs.setdefault(seg.run_id, Run(seg.run_id)).segments.append(seg)
    held = _holders(pids, {seg.name for seg in segments})
    for run in runs.values():
        run.holders = {seg.name: held.get(seg.name, []) for seg in run.segments}
    return sorted(runs.values(), key=lambda r: r.run_id), foreign


def _stop(services: list[Service], timeout_s: float) -> list[Service]:
    """SIGTERM (and SIGCONT, for one paused), then SIGKILL what did not go; returns those left."""
    pids = {s.pid: s.module for s in services}
    procs.signal_all(pids, signal.SIGTERM)
    procs.signal_all(pids, signal.SIGCONT)
    left = procs.wait_gone(pids, timeout_s)
    if left:
        procs.signal_all(left, signal.SIGKILL)
        left = procs.wait_gone(left, 5.0)
    return [s for s in services if s.pid in left]


def _remove_run_files(out: str, run_id: str) -> None:
    """The socket files and credentials of a run whose services are all gone, as down does; only
    if DIR/deploy.json names that run (the directory may hold a newer run by now)."""
    from deploy.launcher import DeployError, Deployment, remove_run_files
    if not out:
        return
    try:
        if Deployment.read(Path(out)).run_id == run_id:
            remove_run_files(Path(out))
    except (DeployError, OSError, KeyError, TypeError, ValueError):
        pass


def sweep(*, dry_run: bool = False, timeout_s: float = 5.0) -> Sweep:
    """Stop the orphaned services, then unlink the segments nobody holds (see the rules)."""
    runs, foreign = survey()
    result = Sweep(runs, foreign, dry_run=dry_run)
    orphans = [s for r in runs for s in r.services if s.state == "orphan"]
    if dry_run:
        result.stopped = orphans
        result.removed = [seg for r in runs for seg, pids in r.holders.items()
                          if not [p for p in pids if p not in {s.pid for s in orphans}]]
        return result
    if orphans:
        result.not_stopped = _stop(orphans, timeout_s)
        result.stopped = [s for s in orphans if s not in result.not_stopped]
    names = {seg for r in runs for seg in r.holders}
    held = _holders(_our_pids(), names)
    for name in sorted(names):
        if held.get(name):
            result.kept.append(name)
        elif shm.unlink(name):
            result.removed.append(name)
    for run in runs:
        if run.services and all(s in result.stopped for s in run.services):
            _remove_run_files(run.out, run.run_id)
    return result


def render(result: Sweep) -> list[str]:
    """One line per run, what was (or would be) done, and a total."""
    would = "would be " if result.dry_run else ""
    stopped = {s.pid for s in result.stopped}
    lines = []
    for run in result.runs:
        states = {s.state for s in run.services}
        parts = []
        if run.services:
            parts.append(", ".join(s.label() for s in run.services))
        free = [n for n, pids in run.holders.items() if n in result.removed]
        if run.segments:
            parts.append(f"{len(run.segments)} segment(s)")
        if "orphan" in states:
            gone = sorted({s.launcher.split(':')[0] for s in run.services if s.state == "orphan"})
            verdict = f"orphan (launcher pid {', '.join(gone)} gone): services {would}stopped"
        elif "live" in states:
            launcher = next(s.launcher for s in run.services if s.state == "live").split(":")[0]
            verdict = f"live (launcher pid {launcher} running): left alone"
        elif "unwatched" in states:
            verdict = ("not watched (started by up, by hand or by an older dmabuf-emu): left alone"
                       + (f"; stop it with: dmabuf-emu down {run.out}" if run.out else ""))
        elif run.segments and len(free) < len(run.segments):
            holders = sorted({p for pids in run.holders.values() for p in pids})
            verdict = f"segments in use by pid {', '.join(map(str, holders))}: left alone"
        else:
            verdict = "leftover: no service, nothing maps its segments"
        if free:
            verdict += f"; {len(free)} segment(s) {would}removed"
        lines.append(f"  run {run.run_id}: {'; '.join(parts)}: {verdict}")
        for s in run.services:
            if s in result.not_stopped:
                lines.append(f"    {s.label()} did not stop even after SIGKILL")
    head = f"down --all{' --dry-run' if result.dry_run else ''}: {len(result.runs)} run(s) with something on this machine"
    total = (f"{len(result.removed)} segment(s) {would}removed, {len(stopped)} service(s) {would}stopped"
             + (f"; {len(result.kept)} segment(s) still in use kept" if result.kept and not result.dry_run else "")
             + (f"; {result.foreign_segments} segment(s) of other users not touched" if result.foreign_segments else ""))
    return [head, *lines, total]
