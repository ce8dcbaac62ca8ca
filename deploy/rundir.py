"""An --out that already holds a run is refused unless --force: no earlier run is lost unasked.

A directory holds a run when something was started there (`deploy.json`, written by `up` before
any service starts) or judged there (`report.json`). Every command that writes run directories
(`run`, `up`, `compare`, `demo`, `sim`) claims each of them before it starts anything, so a refusal
leaves every directory as it was. With --force the command says which run it replaces; `up`
then removes that run's files (launcher.up: deploy.json, events/, logs/, the reports, ...).
A deployment still running is refused with or without --force: `down` it first.

`campaign` is the exception by design: its OUT is a campaign directory whose finished runs are
kept and skipped (resume), so it only refuses an OUT that is itself a run directory. `bench`
claims its OUT for bench.json the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from deploy.options import OptionError

RUN_FILES = ("deploy.json", "report.json")
FORCE_HELP = "replace the run already in --out (without it, such an --out is refused)"


class OutTaken(OptionError):
    """--out names a directory holding a run (or a result) that would be replaced."""


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def held_run(out: Path) -> str | None:
    """What run `out` holds, in a few words; None if it holds none."""
    if not out.is_dir() or not any((out / name).exists() for name in RUN_FILES):
        return None
    report = _read(out / "report.json")
    dep = _read(out / "deploy.json")
    run_id = report.get("run_id") or dep.get("run_id") or "?"
    strategy = report.get("strategy") or dep.get("strategy") or "?"
    if isinstance(report.get("races"), dict):
        return f"a finished run (run id {run_id}, strategy {strategy}, races {report['races'].get('total', 0)})"
    return f"a run that was started and not judged (run id {run_id}, strategy {strategy})"


def live_deployment(out: Path) -> str | None:
    """The run id of a deployment in `out` with a service still alive, else None."""
    if not (out / "deploy.json").exists():
        return None
    from deploy import procs
    from deploy.launcher import DeployError, Deployment
    try:
        dep = Deployment.read(out)
    except (DeployError, KeyError, TypeError, ValueError):
        return None
    return dep.run_id if any(procs.alive(s.pid, s.marker) for s in dep.services) else None


def claim(dirs: list[Path], *, force: bool, say=lambda line: None) -> None:
    """Refuse (OutTaken) if any of `dirs` holds a run, unless `force`; then `say` what will be
    replaced. All of `dirs` are checked before the caller writes any of them."""
    replacing = []
    for d in dirs:
        run_id = live_deployment(d)
        if run_id is not None:
            raise OutTaken(f"--out {d} has a running deployment (run id {run_id}): "
                           f"run 'dmabuf-emu down {d}' first")
        what = held_run(d)
        if what is None:
            continue
        if not force:
            raise OutTaken(f"--out {d} already holds {what}: choose another --out, "
                           f"or add --force to replace it")
        replacing.append(f"replacing {what} in {d}")
    for line in replacing:
        say(line)


def claim_result(out: Path, files: tuple[str, ...], *, force: bool, what: str) -> None:
    """The same for a directory of results that is not a run (bench.json, ...)."""
    present = [f for f in files if (out / f).exists()]
    if present and not force:
        raise OutTaken(f"--out {out} already holds {what} ({', '.join(present)}): choose another "
                       f"--out, or add --force to replace it")


def refuse_run_dir(out: Path, role: str) -> None:
    """`out` must not be a run directory (a campaign directory holds runs below it)."""
    what = held_run(out)
    if what is not None:
        raise OutTaken(f"--out {out} holds {what}: a {role} needs a directory of its own")
