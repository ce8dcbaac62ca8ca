"""Run parameters: defaults, a TOML scenario file, command-line flags (flags win), validation.

Every parameter is declared once, in protocol/params.py (its name, kind, range, default, help and
the services that take it); the flags and the scenario keys are derived from there, and the value
they make is runtime/runparams.py's RunParams, checked there (re-exported here with OptionError,
OPTIONS and SCENARIO_EXTRA_KEYS for the commands that build one). The scenario file uses the same names as the flags, with
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
import tomllib
from pathlib import Path
from typing import Any

from protocol.params import PARAMS
from runtime import faults, params
from runtime.runparams import (BY_KEY, OPTIONS, SCENARIO_EXTRA_KEYS, TABLES, OptionError, RunParams,
                               checked_options, checked_values, finished)

__all__ = ["OPTIONS", "SCENARIO_EXTRA_KEYS", "TABLES", "OptionError", "RunParams", "add_arguments",
           "load_scenario", "resolve"]


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
        if key not in BY_KEY and key not in SCENARIO_EXTRA_KEYS:
            raise OptionError(f"{path}: unknown key '{key}' (known: {', '.join(sorted(BY_KEY | {'faults': None}))})")
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


def resolve(scenario: Path | None, flags: dict[str, Any]) -> RunParams:
    """Defaults, then the scenario's values, then the flags given; each value checked."""
    values: dict[str, Any] = {}
    if scenario is not None:
        values = checked_values(load_scenario(scenario), str(scenario))
    if flags.get("faults"):
        try:
            values["faults"] = tuple(faults.parse_cli(text) for text in flags["faults"])
        except faults.FaultError as exc:
            raise OptionError(str(exc)) from None
    values.update(checked_options(flags, lambda key: f"--{key.replace('_', '-')}"))
    return finished(RunParams(**values))
