"""RunParams: the parameters of one run (real or simulated) as one frozen value, each checked and
all checked together.

Every parameter is declared once, in protocol/params.py (its name, kind, range, default, help and
the services that take it); RunParams' fields are derived from there, with runtime/params.py's
checks, plus what only a scenario says: its faults (runtime/faults.py, canonical), grants and
per-importer tables. Below the simulator and the command line both: `dmabuf-emu run` and `sim`
drive a run from a RunParams, the simulator reads one back from a schedule (`from_mapping`), and
deploy/options.py builds one from a scenario file and flags (`checked_values`, `finished`).

Rules: a bad value is an OptionError whose message names the key (or the flag, or `where`) and
what was expected; a RunParams that exists passed every check here, alone and together
(_check_together: sizes, fault targets, transport, grants, memory).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from protocol.params import PARAMS, Param
from runtime import faults, params
from runtime.units import format_size


class OptionError(ValueError):
    """A parameter with a bad value: the message names the key and what was expected."""


class _RunParamsMethods:
    """What RunParams knows besides its values (its fields are protocol/params.py's PARAMS, plus
    the scenario's faults and grants)."""

    def as_dict(self) -> dict[str, Any]:
        # Made once per RunParams (it is frozen) and handed out as a copy: the simulator asks for
        # it at every schedule's start-up, and dataclasses.asdict was 2% of a schedule.
        d = self.__dict__.get("_as_dict")
        if d is None:
            d = dataclasses.asdict(self)  # type: ignore[call-overload]
            d["faults"] = [dict(f) for f in self.faults]  # type: ignore[attr-defined]
            if d["dma_stall"] is None:
                del d["dma_stall"]   # not given: a run's params (run_start, schedule.json) read as before it existed
            object.__setattr__(self, "_as_dict", d)
        return _copied(d)

    @property
    def bind_address(self) -> str:
        return self.bind or "127.0.0.1"  # type: ignore[attr-defined]

    @property
    def uses_curve(self) -> bool:
        """tcp beyond loopback always; on loopback when asked."""
        if self.transport != "tcp":  # type: ignore[attr-defined]
            return False
        return bool(self.curve) or not _is_loopback(self.bind_address)  # type: ignore[attr-defined]

    def granted(self, importer: str) -> list[int]:
        if self.grants is None:  # type: ignore[attr-defined]
            return list(range(self.buffers))  # type: ignore[attr-defined]
        return list(self.grants.get(importer, []))  # type: ignore[attr-defined]

    def for_importer(self, importer: str) -> dict[str, Any]:
        """as_dict() with each per-importer table's value for `importer` in its parameter."""
        d = self.as_dict()
        for p in TABLES:
            table = d.get(p.table) or {}
            if importer in table:
                d[p.name] = table[importer]
        return d


def _copied(value: Any) -> Any:
    """A deep copy of as_dict()'s values (dicts, lists, tuples of plain values)."""
    kind = type(value)
    if kind is dict:
        return {k: _copied(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return kind(_copied(v) for v in value)
    return value


_TYPES = {"int": int, "float": float, "size": int, "choice": str, "bool": bool, "address": str, "strategy": str,
          "stall": str}

# One field per declared parameter (its default the declaration's), then what only a scenario says.
RunParams = dataclasses.make_dataclass(
    "RunParams",
    [(p.name, _TYPES[p.kind] if p.default is not None else _TYPES[p.kind] | None,  # type: ignore[operator]
      dataclasses.field(default=p.default)) for p in PARAMS]
    + [("faults", tuple[dict[str, Any], ...], dataclasses.field(default=())),
       ("grants", dict[str, list[int]] | None,       # importer -> buffers it may attach (None: all to all)
        dataclasses.field(default=None))]
    # importer -> value, for each parameter declared with a table (None: the parameter's for all)
    + [(p.table, dict[str, Any] | None, dataclasses.field(default=None)) for p in PARAMS if p.table],
    bases=(_RunParamsMethods,), frozen=True)
RunParams.__module__ = __name__


def _is_loopback(address: str) -> bool:
    return address == "localhost" or ipaddress.ip_address(address).is_loopback


@dataclass(frozen=True)
class Option:
    key: str
    check: Callable[[Any], Any]
    help: str
    metavar: str = ""


def _checker(p: Param) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        try:
            return params.check(p, v)
        except params.ParamError as exc:
            raise OptionError(str(exc)) from None
    return check


OPTIONS: tuple[Option, ...] = tuple(Option(p.name, _checker(p), p.help, p.metavar) for p in PARAMS)
BY_KEY = {o.key: o for o in OPTIONS}
TABLES: tuple[Param, ...] = tuple(p for p in PARAMS if p.table)
SCENARIO_EXTRA_KEYS = {"name", "description", "faults", "grants", *(p.table for p in TABLES)}
_IMPORTER_NAME = re.compile(r"importer-[1-9][0-9]*", re.ASCII)


def checked_values(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A scenario's values (options, faults, grants), each checked; errors name `where` and the key."""
    values: dict[str, Any] = {}
    try:
        values["faults"] = tuple(faults.canonical(f, where=f"{where}: [[faults]] #{i + 1}")
                                 for i, f in enumerate(data.get("faults", [])))
    except faults.FaultError as exc:
        raise OptionError(str(exc)) from None
    if data.get("grants") is not None:
        values["grants"] = _grants(data["grants"], f"{where}: [grants]")
    for p in TABLES:
        if data.get(p.table) is not None:
            values[p.table] = _per_importer(p, data[p.table], f"{where}: [{p.table}]")
    values.update(checked_options(data, lambda key: f"{where}: key '{key}'"))
    return values


def checked_options(data: dict[str, Any], named: Callable[[str], str]) -> dict[str, Any]:
    """The values in `data` that are parameters' (None: not given), each checked; an error names
    the key as `named(key)` says (a scenario's key, a flag)."""
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key in BY_KEY and raw is not None:
            try:
                values[key] = BY_KEY[key].check(raw)
            except OptionError as exc:
                raise OptionError(f"{named(key)} {exc}") from None
    return values


def finished(params: RunParams) -> RunParams:
    """`params` checked together, its grants made explicit ("all" and ranges as lists)."""
    _check_together(params)
    if params.grants is not None:
        params = dataclasses.replace(params, grants={
            name: list(range(params.buffers)) if buffers == "all" else list(buffers)
            for name, buffers in params.grants.items()})
    return params


def from_mapping(data: Any, where: str) -> RunParams:
    """RunParams from a dict such as RunParams.as_dict() made (a schedule's options): unknown
    keys and bad values are OptionErrors naming `where` and the key; None means the default."""
    if not isinstance(data, dict):
        raise OptionError(f"{where}: expected a table of options, got {type(data).__name__}")
    known = set(BY_KEY) | {"faults", "grants", *(p.table for p in TABLES)}
    for key in data:
        if key not in known:
            raise OptionError(f"{where}: unknown key '{key}'")
    if not isinstance(data.get("faults") or [], list) or not all(isinstance(f, dict) for f in data.get("faults") or []):
        raise OptionError(f"{where}: 'faults' must be a list of fault tables")
    if data.get("grants") is not None and not isinstance(data["grants"], dict):
        raise OptionError(f"{where}: 'grants' must be a table")
    return finished(RunParams(**checked_values(data, where)))


def _per_importer(p: Param, table: dict[str, Any], where: str) -> dict[str, Any]:
    """importer-N = value, each value checked as the parameter's."""
    if not isinstance(table, dict):
        raise OptionError(f"{where}: must be a table of importer-N = value, got {table!r}")
    out: dict[str, Any] = {}
    for name, value in table.items():
        if not _IMPORTER_NAME.fullmatch(name):
            raise OptionError(f"{where}: key '{name}' must be an importer name, importer-N")
        try:
            out[name] = params.check(p, value)
        except params.ParamError as exc:
            raise OptionError(f"{where}: '{name}' {exc}") from None
    return out


def _grants(table: dict[str, Any], where: str) -> dict[str, list[int]]:
    """importer-N = [buffer, ...] or "all"; checked against the run's size in _check_together."""
    out: dict[str, list[int] | str] = {}
    for name, value in table.items():
        if not _IMPORTER_NAME.fullmatch(name):
            raise OptionError(f"{where}: key '{name}' must be an importer name, importer-N")
        if value == "all":
            out[name] = "all"
            continue
        if not isinstance(value, list) or not all(type(b) is int for b in value):
            raise OptionError(f"{where}: '{name}' must be a list of buffer numbers or \"all\", got {value!r}")
        out[name] = sorted(set(value))
    return out  # type: ignore[return-value]


def _check_together(p: RunParams) -> None:
    if p.vram_size is not None and p.vram_size < p.buffer_size:
        raise OptionError(f"vram_size ({format_size(p.vram_size)}) must hold at least one buffer "
                          f"({format_size(p.buffer_size)})")
    for f in p.faults:
        t = f["target"]
        if t.startswith("importer-") and int(t[9:]) > p.importers:
            raise OptionError(f"fault {f['kind']}: target {t} does not exist (importers: {p.importers})")
        if f["kind"] in ("kill", "pause", "restart") and f["at"] >= p.duration:
            raise OptionError(f"fault {f['kind']}: at={f['at']:g} s is not within the run's {p.duration:g} s")
    if p.queue_depth > p.buffers:
        raise OptionError(f"queue_depth ({p.queue_depth}) cannot exceed buffers ({p.buffers}): "
                          f"each job in flight needs its own buffer")
    if p.transport != "tcp" and p.bind is not None:
        raise OptionError(f"bind ({p.bind}) applies to transport tcp only; transport is {p.transport}")
    if p.transport != "tcp" and p.curve:
        raise OptionError(f"curve applies to transport tcp only; transport is {p.transport}")
    if p.transport == "tcp" and p.curve is False and not _is_loopback(p.bind_address):
        raise OptionError(f"bind ({p.bind}) is beyond loopback: refusing to run without CURVE; "
                          f"drop curve = off (dmabuf-emu makes the keys)")
    for t in TABLES:
        for name in getattr(p, t.table) or {}:
            if int(name[9:]) > p.importers:
                raise OptionError(f"{t.table}: {name} does not exist (importers: {p.importers})")
    _check_revoke_faults(p)
    if p.grants is not None:
        for name, buffers in p.grants.items():
            if int(name[9:]) > p.importers:
                raise OptionError(f"grants: {name} does not exist (importers: {p.importers})")
            bad = [b for b in buffers if buffers != "all" and not 0 <= b < p.buffers]
            if bad:
                raise OptionError(f"grants: {name} names buffer {bad[0]}; buffers are 0..{p.buffers - 1}")
    _check_memory(p)


def _check_revoke_faults(p: RunParams) -> None:
    """A revoke (or close) fault needs a strategy whose exporter table revokes, and buffers that exist."""
    revokes = [f for f in p.faults if f["kind"] in faults.BUFFER_KINDS]
    if not revokes:
        return
    from protocol.exporter import compile_spec
    from protocol.strategies import resolve
    if not compile_spec(resolve(p.strategy).EXPORTER).revokes:
        raise OptionError(f"fault {revokes[0]['kind']}: strategy {p.strategy} cannot revoke a buffer (its exporter table has "
                          f"no revocation: no row marks a buffer revoked); use --strategy revoke")
    for f in revokes:
        bad = [b for b in faults.revoked_buffers(f, p.buffers) if b >= p.buffers]
        if bad:
            raise OptionError(f"fault {f['kind']}: target names buffer {bad[0]}; buffers are 0..{p.buffers - 1}")


def _check_memory(p: RunParams) -> None:
    """The heaps are shared memory: more than /dev/shm can hold would fail mid-run (SIGBUS on the
    first write to a page that cannot be backed), so refuse it now."""
    vram = p.vram_size if p.vram_size is not None else max(1, p.buffers // 2) * p.buffer_size
    total = vram + p.buffers * p.buffer_size + vram
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if total > free:
        raise OptionError(f"buffers x buffer_size needs {format_size(total)} of shared memory (vram and sys "
                          f"heaps) but /dev/shm has {format_size(free)} free: use fewer or smaller buffers")
