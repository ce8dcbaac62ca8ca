"""schedule.json: a simulated run's decision log with everything needed to run it again.

Format (one JSON object; `decisions` one entry per line, written as the run makes them):

    format            "dmabuf-emu-schedule", format_version 1
    version           the dmabuf-emu package version that made it
    sources_sha256    sha256 of the sources a simulated run executes (SOURCES, below)
    strategy, seed    the run's, also in options (they must agree)
    options           the run's parameters (RunParams.as_dict(): every option of `run`)
    sim               the simulator's own options (sim/options.py SimOptions; optional, absent:
                      the defaults, as every schedule made before them)
    decisions         the decision log (sim/scheduler.py): ["s", n, k], ["r", stream, x],
                      ["p", stream, 0|1], ["c", stream, k, n]
    streams           the names of the streams the entries index, in order of first use
    decision_count, steps, virtual_ns, history_sha256, history_events: what the run gave

Reading one checks all of it and says in one line what is wrong (ScheduleError): not JSON
(corrupt or truncated), another format, a missing or mistyped key, options a run would refuse,
a strategy that disagrees with its options, an entry of the wrong shape or out of range, a count
that does not match. Whether it was made by these sources is for the caller to judge
(`Schedule.same_sources`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import orjson

from runtime.runparams import OptionError, RunParams, from_mapping
from sim.options import SimOptionError, SimOptions
from sim.scheduler import CHANCE, CHOICE, RANDOM, STEP

FORMAT = "dmabuf-emu-schedule"
FORMAT_VERSION = 1
ROOT = Path(__file__).resolve().parent.parent
# What a simulated run executes: the halves, the shells and what they share (the process-fault
# schedule and the run's parameters included), and the simulator. A change to any of them may
# change what a decision means.
SOURCES = ("protocol", "runtime", "exporter_svc", "importer_svc", "sim")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ScheduleError(ValueError):
    """A schedule that cannot be replayed: the message names the file and what is wrong."""


def package_version() -> str:
    try:
        return metadata.version("dmabuf-emu")
    except metadata.PackageNotFoundError:
        return "unknown"


_sources_cache: str | None = None


def sources_sha256() -> str:
    """sha256 over SOURCES' *.py files: each file's path relative to the project and its bytes."""
    global _sources_cache
    if _sources_cache is None:
        h = hashlib.sha256()
        files: list[Path] = []
        for s in SOURCES:
            p = ROOT / s
            files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in sorted(files, key=lambda f: f.relative_to(ROOT).as_posix()):
            h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
        _sources_cache = h.hexdigest()
    return _sources_cache


class ScheduleWriter:
    """Writes schedule.json as the run goes: the head now, decisions as they come (DecisionLog
    streams into `file`), the tail at the end; the file appears under its name only when done."""

    def __init__(self, path: Path, params: RunParams, options: SimOptions = SimOptions()) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.file: IO[bytes] = open(self.tmp, "wb", buffering=1 << 20)
        head = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": package_version(),
                "sources_sha256": sources_sha256(), "strategy": params.strategy, "seed": params.seed,
                "options": params.as_dict(), **({} if options.is_default else {"sim": options.as_dict()})}
        self.file.write(orjson.dumps(head)[:-1] + b',\n"decisions":[')

    def finish(self, tail: dict[str, Any]) -> None:
        self.file.write(b'\n],\n' + orjson.dumps(tail)[1:] + b"\n")
        self.file.close()
        self.tmp.replace(self.path)

    def abandon(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)


@dataclass
class Schedule:
    path: Path
    data: dict[str, Any]
    params: RunParams

    sim: SimOptions = SimOptions()

    @property
    def decisions(self) -> list[list[Any]]:
        return self.data["decisions"]

    @property
    def streams(self) -> list[str]:
        return self.data["streams"]

    @property
    def history_sha256(self) -> str:
        return self.data["history_sha256"]

    @property
    def same_sources(self) -> bool:
        return self.data["sources_sha256"] == sources_sha256()


def _need(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ScheduleError(f"{where}: no '{key}' (truncated, or not a schedule)")
    v = data[key]
    if not isinstance(v, kind) or isinstance(v, bool) and kind is int:
        raise ScheduleError(f"{where}: '{key}' must be {getattr(kind, '__name__', kind)}, got {type(v).__name__}")
    return v


def _check_entry(i: int, e: Any, streams: int, where: str) -> None:
    def bad(why: str) -> ScheduleError:
        return ScheduleError(f"{where}: decision {i} {orjson.dumps(e).decode()[:80]}: {why}")

    if not isinstance(e, list) or not e or e[0] not in (STEP, RANDOM, CHANCE, CHOICE):
        raise bad("not a decision (expected [\"s\"|\"r\"|\"p\"|\"c\", ...])")
    kind = e[0]
    if len(e) != (4 if kind == CHOICE else 3):
        raise bad("wrong number of fields")
    ints = e[1:2] if kind == RANDOM else e[1:]
    if any(type(x) is not int for x in ints):
        raise bad("fields must be integers")
    if kind == STEP:
        if not (e[1] >= 2 and 0 <= e[2] < e[1]):
            raise bad("a step's choice must be 0 <= k < n, n >= 2")
        return
    if not 0 <= e[1] < streams:
        raise bad(f"no stream {e[1]} (there are {streams})")
    if kind == RANDOM:
        if type(e[2]) is not float or not 0.0 <= e[2] < 1.0:
            raise bad("a random draw must be a float in [0, 1)")
    elif kind == CHANCE:
        if e[2] not in (0, 1):
            raise bad("a chance must be 0 or 1")
    elif not (e[3] >= 1 and 0 <= e[2] < e[3]):
        raise bad("a choice must be 0 <= k < n")


def read_schedule(path: Path) -> Schedule:
    """Load and check a schedule.json (or the one in a run directory)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "schedule.json").exists():
            raise ScheduleError(f"{path}: no schedule.json here (not a simulated run directory)")
        path = path / "schedule.json"
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScheduleError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ScheduleError(f"{where}: not valid JSON, corrupt or truncated ({exc})") from None
    if not isinstance(data, dict):
        raise ScheduleError(f"{where}: not a schedule (a JSON {type(data).__name__}, expected an object)")
    if data.get("format") != FORMAT:
        raise ScheduleError(f"{where}: not a dmabuf-emu schedule (format {data.get('format')!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise ScheduleError(f"{where}: schedule format version {data.get('format_version')!r}; "
                            f"this dmabuf-emu reads version {FORMAT_VERSION}")
    sha = _need(data, "sources_sha256", str, where)
    if not _HEX64.fullmatch(sha):
        raise ScheduleError(f"{where}: 'sources_sha256' is not a sha256")
    strategy = _need(data, "strategy", str, where)
    seed = _need(data, "seed", int, where)
    try:
        params = from_mapping(_need(data, "options", dict, where), f"{where}: options")
    except OptionError as exc:
        raise ScheduleError(str(exc)) from None
    if params.strategy != strategy:
        raise ScheduleError(f"{where}: made for strategy {strategy} but its options say {params.strategy}")
    if params.seed != seed:
        raise ScheduleError(f"{where}: made with seed {seed} but its options say {params.seed}")
    decisions = _need(data, "decisions", list, where)
    streams = _need(data, "streams", list, where)
    if not all(isinstance(s, str) for s in streams):
        raise ScheduleError(f"{where}: 'streams' must be a list of names")
    count = _need(data, "decision_count", int, where)
    if count != len(decisions):
        raise ScheduleError(f"{where}: {len(decisions)} decisions where decision_count says {count} (truncated?)")
    for i, e in enumerate(decisions):
        _check_entry(i, e, len(streams), where)
    h = _need(data, "history_sha256", str, where)
    if not _HEX64.fullmatch(h):
        raise ScheduleError(f"{where}: 'history_sha256' is not a sha256")
    try:
        sim = SimOptions.from_mapping(data.get("sim", {}), where)
    except SimOptionError as exc:
        raise ScheduleError(str(exc)) from None
    return Schedule(path, data, params, sim)
