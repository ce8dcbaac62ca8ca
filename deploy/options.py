"""Run parameters: defaults, a TOML scenario file, command-line flags (flags win), validation.

Every parameter is declared once, in protocol/params.py (its name, kind, range, default, help and
the services that take it); RunParams, the flags and the scenario keys are derived from there,
with runtime/params.py's checks. The scenario file uses the same names as the flags, with
underscores:

    # scenarios/pin.toml
    strategy = "pin"
    importers = 2
    buffer_size = "256KiB"
    duration = 3

A parameter declared with a `table` (importer_kind: `[importer_kinds]`) may also be set per
importer by that table; the flag or key sets the others. A bad value gets one line naming the key
(or flag) and what was expected; nothing starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
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
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        d["faults"] = [dict(f) for f in self.faults]  # type: ignore[attr-defined]
        return d

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


_TYPES = {"int": int, "float": float, "size": int, "choice": str, "bool": bool, "address": str, "strategy": str}

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
_BY_KEY = {o.key: o for o in OPTIONS}
TABLES: tuple[Param, ...] = tuple(p for p in PARAMS if p.table)
SCENARIO_EXTRA_KEYS = {"name", "description", "faults", "grants", *(p.table for p in TABLES)}
_IMPORTER_NAME = re.compile(r"importer-[1-9][0-9]*", re.ASCII)


def add_arguments(parser: argparse.ArgumentParser, *, title: str = "run parameters (override the scenario file)",
                  defaults: RunParams = RunParams(), skip: tuple[str, ...] = ()) -> None:
    """One flag per parameter (but those in `skip`), default None so that only flags actually
    given override; the help shows `defaults` (a command's own, where it has them), each once."""
    from deploy.helpformat import with_default
    group = parser.add_argument_group(title)
    for p in PARAMS:
        if p.name in skip:
            continue
        group.add_argument(p.flag, dest=p.name, default=None, metavar=p.metavar,
                           help=with_default(params.describe(p), params.shown(p, getattr(defaults, p.name))))
    if "faults" in skip:
        return
    group.add_argument("--fault", dest="faults", action="append", default=None, metavar="KIND[:k=v,...]",
                       help="inject a fault; repeatable; replaces the scenario's [[faults]]. Kinds: "
                            "delay drop dup reorder (messages), kill pause restart (processes), rogue "
                            "slow-dma early-ack ignore-notify (devices), revoke (buffers, by the exporter: "
                            "revoke:at=S,for=S[,target=BUFFERS]); keys target, at, for, p, op and the kind's "
                            "own. Example: --fault delay:target=exporter,op=move_notify,ms=5")


def load_scenario(path: Path) -> dict[str, Any]:
    """Read a TOML scenario; unknown keys and TOML errors are OptionErrors naming the file."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise OptionError(f"{path}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"{path}: cannot read the scenario file ({exc.__class__.__name__}: {exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise OptionError(f"{path}: not valid TOML: {exc}") from None
    for key, value in data.items():
        if key not in _BY_KEY and key not in SCENARIO_EXTRA_KEYS:
            raise OptionError(f"{path}: unknown key '{key}' (known: {', '.join(sorted(_BY_KEY | {'faults': None}))})")
        if key == "faults":
            if not isinstance(value, list) or not all(isinstance(f, dict) for f in value):
                raise OptionError(f"{path}: 'faults' must be an array of tables: [[faults]]")
        elif key == "grants":
            if not isinstance(value, dict):
                raise OptionError(f"{path}: 'grants' must be a table: [grants] importer-1 = [0, 1]")
        elif key in SCENARIO_EXTRA_KEYS and key not in ("name", "description"):
            if not isinstance(value, dict):
                raise OptionError(f"{path}: '{key}' must be a table: [{key}] importer-1 = ...")
        elif key in ("name", "description"):
            if not isinstance(value, str):
                raise OptionError(f"{path}: key '{key}' must be a string, got {value!r}")
        elif isinstance(value, dict):
            raise OptionError(f"{path}: key '{key}' must be a value, not a table")
    return data


def _checked_values(data: dict[str, Any], where: str) -> dict[str, Any]:
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
    for key, raw in data.items():
        if key in _BY_KEY and raw is not None:
            try:
                values[key] = _BY_KEY[key].check(raw)
            except OptionError as exc:
                raise OptionError(f"{where}: key '{key}' {exc}") from None
    return values


def _finished(params: RunParams) -> RunParams:
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
    known = set(_BY_KEY) | {"faults", "grants", *(p.table for p in TABLES)}
    for key in data:
        if key not in known:
            raise OptionError(f"{where}: unknown key '{key}'")
    if not isinstance(data.get("faults") or [], list) or not all(isinstance(f, dict) for f in data.get("faults") or []):
        raise OptionError(f"{where}: 'faults' must be a list of fault tables")
    if data.get("grants") is not None and not isinstance(data["grants"], dict):
        raise OptionError(f"{where}: 'grants' must be a table")
    return _finished(RunParams(**_checked_values(data, where)))


def resolve(scenario: Path | None, flags: dict[str, Any]) -> RunParams:
    """Defaults, then the scenario's values, then the flags given; each value checked."""
    values: dict[str, Any] = {}
    if scenario is not None:
        values = _checked_values(load_scenario(scenario), str(scenario))
    if flags.get("faults"):
        try:
            values["faults"] = tuple(faults.parse_cli(text) for text in flags["faults"])
        except faults.FaultError as exc:
            raise OptionError(str(exc)) from None
    for key, raw in flags.items():
        if key in _BY_KEY and raw is not None:
            try:
                values[key] = _BY_KEY[key].check(raw)
            except OptionError as exc:
                raise OptionError(f"--{key.replace('_', '-')} {exc}") from None
    return _finished(RunParams(**values))


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
    """A revoke fault needs a strategy whose exporter table revokes, and buffers that exist."""
    revokes = [f for f in p.faults if f["kind"] == "revoke"]
    if not revokes:
        return
    from protocol.exporter import compile_spec
    from protocol.strategies import resolve
    if not compile_spec(resolve(p.strategy).EXPORTER).revokes:
        raise OptionError(f"fault revoke: strategy {p.strategy} cannot revoke a buffer (its exporter table has "
                          f"no revocation: no row marks a buffer revoked); use --strategy revoke")
    for f in revokes:
        bad = [b for b in faults.revoked_buffers(f, p.buffers) if b >= p.buffers]
        if bad:
            raise OptionError(f"fault revoke: target names buffer {bad[0]}; buffers are 0..{p.buffers - 1}")


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
