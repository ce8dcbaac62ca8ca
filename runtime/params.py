"""The run parameters declared in protocol/params.py, parsed and checked; the services' flags and
the argv that gives a service its parameters, both derived from the declaration.

Rules: `check(param, value)` takes what a person typed (a flag's text, a TOML value) and returns
the value, or raises ParamError saying what was expected (without naming the key: the caller
knows whether it was a flag or a key). A service's flag for a parameter has the name the
declaration gives it, and the same check, so a service refuses what dmabuf-emu would.
"""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any, Mapping

from protocol import strategies
from protocol.params import PARAMS, Param
from runtime.units import format_size, parse_size


class ParamError(ValueError):
    """A value a parameter cannot take: says what was expected."""


def check(p: Param, v: Any) -> Any:
    if p.kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            try:
                v = int(str(v), 10)
            except ValueError:
                raise ParamError(f"must be an integer from {p.lo:g} to {p.hi:g}, got {v!r}") from None
        if not p.lo <= v <= p.hi:  # type: ignore[operator]
            raise ParamError(f"must be an integer from {p.lo:g} to {p.hi:g}, got {v}")
        return v
    if p.kind == "float":
        if isinstance(v, bool):
            raise ParamError(f"must be a number, got {v!r}")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ParamError(f"must be a number, got {v!r}") from None
        if f != f or (f <= p.lo if p.open_lo else f < p.lo) or f > p.hi:  # type: ignore[operator]
            raise ParamError(f"must be a number {'>' if p.open_lo else '>='} {p.lo:g} and <= {p.hi:g}, got {v!r}")
        return f
    if p.kind == "stall":
        return _check_stall(p, v)
    if p.kind == "size":
        try:
            n = parse_size(v)
        except ValueError as exc:
            raise ParamError(str(exc)) from None
        if not p.lo <= n <= p.hi or n % p.multiple:  # type: ignore[operator]
            raise ParamError(f"must be a multiple of {p.multiple} bytes from {format_size(int(p.lo))} to "  # type: ignore[arg-type]
                             f"{format_size(int(p.hi))}, got {v!r}")  # type: ignore[arg-type]
        return n
    if p.kind == "choice":
        if v not in p.choices:
            raise ParamError(f"must be one of {', '.join(p.choices)}; got {v!r}")
        return v
    if p.kind == "bool":
        if isinstance(v, bool):
            return v
        text = str(v).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ParamError(f"must be true or false (on/off, yes/no), got {v!r}")
    if p.kind == "address":
        if not isinstance(v, str):
            raise ParamError(f"must be an IP address such as 127.0.0.1, ::1 or 0.0.0.0, got {v!r}")
        if v == "localhost":
            return v
        try:
            return str(ipaddress.ip_address(v.strip("[]")))
        except ValueError:
            raise ParamError(f"must be an IP address such as 127.0.0.1, ::1 or 0.0.0.0, got {v!r}") from None
    if p.kind == "strategy":
        # Loaded and checked now, so that a broken one is refused before anything starts; a file
        # becomes its absolute path (what another process needs to load the same one).
        if not isinstance(v, str):
            raise ParamError(f"must be one of {strategies.describe_choices()}; got {v!r}")
        try:
            return strategies.resolve(v).SOURCE
        except strategies.StrategyError as exc:
            raise ParamError(str(exc)) from None
    raise AssertionError(f"parameter {p.name}: unknown kind {p.kind}")


def _check_stall(p: Param, v: Any) -> str:
    """P,MS: 0 <= P <= 1 and lo < MS <= hi; the value is the canonical text (what a service's flag
    is given back)."""
    expected = f"must be P,MS (a probability 0..1, a duration > {p.lo:g} and <= {p.hi:g} ms), e.g. 0.1,50; got {v!r}"
    try:
        prob, ms = stall_pair(str(v))
    except ValueError:
        raise ParamError(expected) from None
    if not 0 <= prob <= 1 or not p.lo < ms <= p.hi:  # type: ignore[operator]
        raise ParamError(expected)
    return f"{prob:g},{ms:g}"


def stall_pair(text: str) -> tuple[float, float]:
    """A stall parameter's text, "P,MS", as (P, MS); ValueError if it is not two numbers."""
    prob, ms = (float(x) for x in text.split(","))   # two items, or ValueError
    if prob != prob or ms != ms:
        raise ValueError(text)
    return prob, ms


def describe(p: Param) -> str:
    """The parameter's help, without its default."""
    if p.kind == "strategy":
        return f"{p.help}: {strategies.describe_choices()} (docs/writing-a-strategy.md)"
    return p.help


def shown(p: Param, value: Any) -> Any:
    """`value` as --help says it (None: "auto")."""
    if value == p.default and p.shown is not None:
        return p.shown
    if p.kind == "size" and value:
        return format_size(value)
    return value


def help_text(p: Param) -> str:
    """The parameter's help with its default, as --help says it."""
    value = shown(p, p.default)
    return f"{describe(p)} (default: {'auto' if value is None else value})"


def add_service_flags(parser: argparse.ArgumentParser, service: str) -> None:
    """The flags of every parameter `service` takes, each checked as dmabuf-emu checks it."""
    for p in PARAMS:
        flag = p.services.get(service)
        if flag is not None:
            parser.add_argument("--" + flag, dest=p.name, type=_argparse_type(p), default=p.default,
                                metavar=p.metavar, help=help_text(p))


def service_argv(values: Mapping[str, Any], service: str) -> list[str]:
    """The flags that give `service` the parameters `values` holds (None: the service's default)."""
    argv: list[str] = []
    for p in PARAMS:
        flag = p.services.get(service)
        if flag is not None and values.get(p.name) is not None:
            argv += ["--" + flag, str(values[p.name])]
    return argv


def _argparse_type(p: Param) -> Any:
    def parse(text: str) -> Any:
        try:
            return check(p, text)
        except ParamError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = p.name
    return parse
