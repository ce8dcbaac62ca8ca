"""Run parameters: defaults, a TOML scenario file, command-line flags (flags win), validation.

One table (`OPTIONS`) defines every parameter: its scenario key, its flag, its type, its check and
its help. The scenario file uses the same names as the flags, with underscores:

    # scenarios/pin.toml
    strategy = "pin"
    importers = 2
    buffer_size = "256KiB"
    duration = 3

A bad value gets one line naming the key (or flag) and what was expected; nothing starts.
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

from protocol.strategies import STRATEGIES
from runtime import faults
from runtime.units import format_size, parse_size


class OptionError(ValueError):
    """A parameter with a bad value: the message names the key and what was expected."""


@dataclass(frozen=True)
class RunParams:
    strategy: str = "pin"
    importers: int = 2
    buffers: int = 8
    buffer_size: int = 256 * 1024
    vram_size: int | None = None
    duration: float = 3.0
    seed: int = 1
    move_rate: float = 20.0
    transport: str = "ipc"
    hint_policy: str = "optimistic"
    ack_timeout_ms: float = 250.0
    fence_timeout_ms: float = 1000.0
    queue_depth: int = 2
    dma_ms: float = 6.0
    think_ms: float = 1.0
    write_ratio: float = 0.5
    lease_ms: float = 500.0
    retry_ms: float = 100.0
    bind: str | None = None          # tcp: the address the exporter binds (None: 127.0.0.1)
    curve: bool | None = None        # tcp: CURVE on the importers' socket (None: when bound beyond loopback)
    faults: tuple[dict[str, Any], ...] = ()
    grants: dict[str, list[int]] | None = None   # importer -> buffers it may attach (None: all to all)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["faults"] = [dict(f) for f in self.faults]
        return d

    @property
    def bind_address(self) -> str:
        return self.bind or "127.0.0.1"

    @property
    def uses_curve(self) -> bool:
        """tcp beyond loopback always; on loopback when asked."""
        if self.transport != "tcp":
            return False
        return bool(self.curve) or not _is_loopback(self.bind_address)

    def granted(self, importer: str) -> list[int]:
        if self.grants is None:
            return list(range(self.buffers))
        return list(self.grants.get(importer, []))


def _is_loopback(address: str) -> bool:
    return address == "localhost" or ipaddress.ip_address(address).is_loopback


def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            try:
                v = int(str(v), 10)
            except ValueError:
                raise OptionError(f"must be an integer from {lo} to {hi}, got {v!r}") from None
        if not lo <= v <= hi:
            raise OptionError(f"must be an integer from {lo} to {hi}, got {v}")
        return v
    return check


def _float_range(lo: float, hi: float, *, open_lo: bool = False) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool):
            raise OptionError(f"must be a number, got {v!r}")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise OptionError(f"must be a number, got {v!r}") from None
        if f != f or (f <= lo if open_lo else f < lo) or f > hi:
            raise OptionError(f"must be a number {'>' if open_lo else '>='} {lo:g} and <= {hi:g}, got {v!r}")
        return f
    return check


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in choices:
            raise OptionError(f"must be one of {', '.join(choices)}; got {v!r}")
        return v
    return check


def _address(v: Any) -> str:
    if not isinstance(v, str):
        raise OptionError(f"must be an IP address such as 127.0.0.1, ::1 or 0.0.0.0, got {v!r}")
    if v == "localhost":
        return v
    try:
        return str(ipaddress.ip_address(v.strip("[]")))
    except ValueError:
        raise OptionError(f"must be an IP address such as 127.0.0.1, ::1 or 0.0.0.0, got {v!r}") from None


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise OptionError(f"must be true or false (on/off, yes/no), got {v!r}")


def _size(lo: int, hi: int, multiple: int = 64) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        try:
            n = parse_size(v)
        except ValueError as exc:
            raise OptionError(str(exc)) from None
        if not lo <= n <= hi or n % multiple:
            raise OptionError(f"must be a multiple of {multiple} bytes from {format_size(lo)} to "
                              f"{format_size(hi)}, got {v!r}")
        return n
    return check


@dataclass(frozen=True)
class Option:
    key: str
    check: Callable[[Any], Any]
    help: str
    metavar: str = ""


OPTIONS: tuple[Option, ...] = (
    Option("strategy", _choice(*STRATEGIES), "buffer-move strategy: " + ", ".join(STRATEGIES), "NAME"),
    Option("importers", _int_range(1, 64), "importer processes (devices) to start", "N"),
    Option("buffers", _int_range(1, 4096), "buffers the exporter shares", "N"),
    Option("buffer_size", _size(64, 1 << 30), "bytes per buffer, e.g. 256KiB", "SIZE"),
    Option("vram_size", _size(64, 1 << 32), "bytes of the scarce vram heap (default: half the buffers)", "SIZE"),
    Option("duration", _float_range(0, 86400, open_lo=True), "seconds of workload", "S"),
    Option("seed", _int_range(0, 2**63 - 1), "seed of every random choice: the workloads and the fault schedule", "N"),
    Option("move_rate", _float_range(0, 10000), "moves per second the memory manager tries (0: none)", "R"),
    Option("transport", _choice("ipc", "tcp"), "ipc: unix sockets inside the run directory (mode 0700); tcp: see --bind", "KIND"),
    Option("bind", _address, "tcp only: the address the exporter's socket binds; beyond loopback the run "
                             "uses CURVE with keys made for the run (default: 127.0.0.1)", "ADDR"),
    Option("curve", _bool, "tcp only: CURVE encryption and authentication of the importers' connections "
                           "with keys made for the run (default: on when --bind is beyond loopback)", "on|off"),
    Option("hint_policy", _choice("optimistic", "conservative"), "unmap-hint only: what the unmap reply promises", "POLICY"),
    Option("ack_timeout_ms", _float_range(1, 600000), "how long a move waits for acks / move_notify returns", "MS"),
    Option("fence_timeout_ms", _float_range(1, 600000), "resv-fence: how long a move waits for fences before forcing them", "MS"),
    Option("queue_depth", _int_range(1, 64), "DMA jobs each importer keeps in flight", "N"),
    Option("dma_ms", _float_range(0, 60000, open_lo=True), "mean duration of one DMA job", "MS"),
    Option("think_ms", _float_range(0, 60000), "mean pause between an importer's jobs", "MS"),
    Option("write_ratio", _float_range(0, 1), "share of DMA jobs that write", "P"),
    Option("lease_ms", _float_range(10, 600000), "heartbeat lease: a silent importer is declared dead after this long", "MS"),
    Option("retry_ms", _float_range(1, 600000), "a request without a reply is sent again after this long", "MS"),
)
_BY_KEY = {o.key: o for o in OPTIONS}
SCENARIO_EXTRA_KEYS = {"name", "description", "faults", "grants"}
_IMPORTER_NAME = re.compile(r"importer-[1-9][0-9]*", re.ASCII)


def add_arguments(parser: argparse.ArgumentParser, *, title: str = "run parameters (override the scenario file)",
                  defaults: RunParams = RunParams(), skip: tuple[str, ...] = ()) -> None:
    """One flag per option (but those in `skip`), default None so that only flags actually given
    override; the help shows `defaults` (a command's own, where it has them), each once."""
    from deploy.helpformat import with_default
    group = parser.add_argument_group(title)
    for o in OPTIONS:
        if o.key in skip:
            continue
        default = getattr(defaults, o.key)
        shown = format_size(default) if o.key.endswith("_size") and default else default
        group.add_argument("--" + o.key.replace("_", "-"), dest=o.key, default=None, metavar=o.metavar,
                           help=with_default(o.help, shown))
    if "faults" in skip:
        return
    group.add_argument("--fault", dest="faults", action="append", default=None, metavar="KIND[:k=v,...]",
                       help="inject a fault; repeatable; replaces the scenario's [[faults]]. Kinds: "
                            "delay drop dup reorder (messages), kill pause restart (processes), rogue "
                            "slow-dma early-ack ignore-notify (devices); keys target, at, for, p, op and "
                            "the kind's own. Example: --fault delay:target=exporter,op=move_notify,ms=5")


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
        elif key in ("name", "description"):
            if not isinstance(value, str):
                raise OptionError(f"{path}: key '{key}' must be a string, got {value!r}")
        elif isinstance(value, dict):
            raise OptionError(f"{path}: key '{key}' must be a value, not a table")
    return data


def resolve(scenario: Path | None, flags: dict[str, Any]) -> RunParams:
    """Defaults, then the scenario's values, then the flags given; each value checked."""
    values: dict[str, Any] = {}
    if scenario is not None:
        data = load_scenario(scenario)
        try:
            values["faults"] = tuple(faults.canonical(f, where=f"{scenario}: [[faults]] #{i + 1}")
                                     for i, f in enumerate(data.get("faults", [])))
        except faults.FaultError as exc:
            raise OptionError(str(exc)) from None
        if "grants" in data:
            values["grants"] = _grants(data["grants"], f"{scenario}: [grants]")
        for key, raw in data.items():
            if key in _BY_KEY:
                try:
                    values[key] = _BY_KEY[key].check(raw)
                except OptionError as exc:
                    raise OptionError(f"{scenario}: key '{key}' {exc}") from None
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
    params = RunParams(**values)
    _check_together(params)
    if params.grants is not None:
        params = dataclasses.replace(params, grants={
            name: list(range(params.buffers)) if buffers == "all" else list(buffers)
            for name, buffers in params.grants.items()})
    return params


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
    if p.grants is not None:
        for name, buffers in p.grants.items():
            if int(name[9:]) > p.importers:
                raise OptionError(f"grants: {name} does not exist (importers: {p.importers})")
            bad = [b for b in buffers if buffers != "all" and not 0 <= b < p.buffers]
            if bad:
                raise OptionError(f"grants: {name} names buffer {bad[0]}; buffers are 0..{p.buffers - 1}")
    _check_memory(p)


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
