"""Operational logs: what a service or the CLI tells its operator (start-up, shutdown, errors,
warnings, retries), with a level and context, through structlog. Not the history: the checker
reads only DIR/events/*.jsonl (runtime/eventlog.py), and every event it needs is written there;
a line here may repeat one of those for the operator, never replace it.

Where the lines go:
- a real service: JSON lines on its stdout, which `dmabuf-emu` sends to DIR/logs/<svc>.log
  (deploy/launcher.py), each with `timestamp` (UTC, ISO 8601), `level`, `event`, and the
  service's context (`svc`, `pid`, `run_id`, `incarnation`), flushed per line; run by hand on a
  terminal, the same lines rendered by structlog's ConsoleRenderer;
- a simulated service: text through the simulator's `say` (sim/ writes DIR/logs/<svc>.log), with
  no wall-clock time in it, so a simulated run's logs are the same for the same seed;
- the CLI: `configure_cli_logging` (JSON lines to a file, and with --verbose coloured lines on
  stderr).
The level: `--log-level` at the CLI; a service takes it from DMABUF_LOG_LEVEL (the CLI puts
`service_env()` into its services' environment), else its own default (info; error in the
simulator, whose logs thus hold what they held before structlog, the services' errors, and not a
start and a stop per service in every one of thousands of runs). Each logger is made with structlog.wrap_logger and its own processors, never by
structlog.configure: the simulator runs several services in one process, each with its own.

Lifetime: a logger lives as long as its service; nothing here holds a lock or a thread.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

import orjson
import structlog
from structlog.dev import ConsoleRenderer
from structlog.processors import JSONRenderer, TimeStamper, add_log_level
from structlog.typing import EventDict, FilteringBoundLogger, Processor

LEVEL_ENV = "DMABUF_LOG_LEVEL"
LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_LEVEL = "info"
SIM_DEFAULT_LEVEL = "error"
# keys every line of a service carries; the simulator's text names the service in front instead
CONTEXT_KEYS = ("svc", "pid", "run_id", "incarnation")

Render = Callable[[Any, str, EventDict], str]
Output = tuple[Render, Callable[[str], Any]]


class LogError(Exception):
    """A log that cannot be written; the message names the file."""


class LevelError(ValueError):
    """--log-level names no level; the message is the CLI's one line."""


def parse_level(text: str) -> str:
    """--log-level's value: a level's name, any case. LevelError otherwise (the CLI turns it
    into one line and exit 2, as it does every other bad option value)."""
    name = text.strip().lower()
    if name not in LEVELS:
        raise LevelError(f"--log-level must be one of {', '.join(LEVELS)}, got {text!r}")
    return name


class _Outputs:
    """The logger structlog wraps: gets the processed event dict (as keywords) and writes it,
    rendered once per output, one line each."""

    def __init__(self, outputs: list[Output]) -> None:
        self.outputs = outputs

    def msg(self, /, **event_dict: Any) -> None:
        for render, write in self.outputs:
            write(render(self, event_dict.get("level", "info"), dict(event_dict)))

    debug = info = warning = warn = error = critical = fatal = exception = msg


def _writer(stream: TextIO) -> Callable[[str], None]:
    def write(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()   # a killed process keeps its log up to its last line
    return write


def _json(logger: Any, name: str, event_dict: EventDict) -> str:
    """timestamp, level and event first (a reader scans those), then the context and fields."""
    head = {k: event_dict.pop(k) for k in ("timestamp", "level", "event") if k in event_dict}
    return orjson.dumps({**head, **event_dict}, default=str).decode()


def _console() -> Render:
    return ConsoleRenderer(colors="NO_COLOR" not in os.environ)


def _logger(outputs: list[Output], level: str, timestamps: bool, **context: Any) -> FilteringBoundLogger:
    # the last processor's dict reaches _Outputs.msg as keywords (structlog's rule for a dict)
    processors: list[Processor] = [add_log_level]
    if timestamps:
        processors.append(TimeStamper(fmt="iso", utc=True))
    return structlog.wrap_logger(_Outputs(outputs), processors=processors,
                                 wrapper_class=structlog.make_filtering_bound_logger(level),
                                 context_class=dict).bind(**context)


def _sim_text(svc: str) -> Render:
    def render(logger: Any, name: str, event_dict: EventDict) -> str:
        n = event_dict.get("incarnation")
        who = f"{svc} (incarnation {n})" if n else svc
        event = event_dict.pop("event", "")
        level = event_dict.pop("level", name)
        rest = " ".join(f"{k}={v}" for k, v in event_dict.items() if k not in CONTEXT_KEYS)
        return f"{who}: {event}" + (f" [{level}]" if level != "info" else "") + (f" {rest}" if rest else "")
    return render


_cli: dict[str, Any] = {"level": None, "file": None, "verbose": False, "stderr": None}
_process: list[FilteringBoundLogger] = []


def service_level(default: str) -> tuple[str, str | None]:
    """(level, complaint): DMABUF_LOG_LEVEL, else the CLI's own level (a simulated service in the
    CLI's process), else `default`. A bad variable does not stop a service: it logs at the
    default and says so (the complaint)."""
    text = os.environ.get(LEVEL_ENV)
    if text:
        name = text.strip().lower()
        if name in LEVELS:
            return name, None
        return default, f"{LEVEL_ENV}={text!r} is not a level ({', '.join(LEVELS)}): logging at {default}"
    return _cli["level"] or default, None


def service_logger(svc: str, *, pid: int | None = None, say: Callable[[str], None] | None = None, run_id: str = "",
                   incarnation: int = 0, level: str | None = None,
                   stream: TextIO | None = None) -> FilteringBoundLogger:
    """A service's operational logger. `say` None: a real process, JSON lines on `stream`
    (stdout: the launcher's DIR/logs/<svc>.log), or console lines if that is a terminal; it is
    then the process's logger (`process_logger`). `say` given: the simulator's, text through it.
    `pid`: the service's (ServiceEnv.pid); None leaves it out (a line before the service exists)."""
    context = dict(svc=svc, run_id=run_id, incarnation=incarnation, **({"pid": pid} if pid is not None else {}))
    if say is not None:
        lvl, complaint = (level, None) if level else service_level(SIM_DEFAULT_LEVEL)
        outputs: list[Output] = [(_sim_text(svc), say)]
        if _cli["verbose"]:  # --verbose on sim/explore: the simulated services' lines on the console too
            outputs.append((_console(), _writer(_cli["stderr"] or sys.stderr)))
        log = _logger(outputs, lvl, False, **context)
    else:
        stream = stream or sys.stdout
        lvl, complaint = (level, None) if level else service_level(DEFAULT_LEVEL)
        render: Render = _console() if stream.isatty() else _json
        log = _logger([(render, _writer(stream))], lvl, True, **context)
        _process[:] = [log]
    if complaint:
        log.warning(complaint)
    return log


def process_logger() -> FilteringBoundLogger:
    """This process's service logger; before a service made one, a logger without context."""
    if not _process:
        service_logger("")
    return _process[0]


def readable(line: str) -> str:
    """One line of a service's log as a person reads it (for an error that quotes the log's
    tail): "level: event key=value ..." for a JSON line, the line itself otherwise (a traceback)."""
    try:
        d = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if not isinstance(d, dict) or "event" not in d:
        return line
    rest = " ".join(f"{k}={v}" for k, v in d.items() if k not in ("timestamp", "level", "event", *CONTEXT_KEYS))
    return f"{d.get('level', 'info')}: {d['event']}" + (f" {rest}" if rest else "")


# ---------------------------------------------------------------------- the CLI's side

def add_log_options(parser: argparse.ArgumentParser) -> None:
    """--verbose and --log-level on a command that starts services (run, up, sim, explore)."""
    parser.add_argument("--verbose", action="store_true",
                        help="show the operational log on stderr, coloured (structlog's console renderer)")
    parser.add_argument("--log-level", default=None, metavar="LEVEL",
                        help=f"the operational logs' least level: {', '.join(LEVELS)} (default: "
                             f"{DEFAULT_LEVEL}); the services get it too ({LEVEL_ENV})")


def configure_cli_logging(args: argparse.Namespace, log_file: Path | None = None, *,
                          stderr: TextIO | None = None, **context: Any) -> FilteringBoundLogger:
    """The CLI's operational logger, after add_log_options: JSON lines appended to `log_file`
    (e.g. DIR/logs/dmabuf-emu.log) and, with --verbose, console lines on stderr. Also sets the
    level simulated services in this process take, and the one `service_env()` passes on.
    Raises LogError naming the file if it cannot be opened."""
    given = getattr(args, "log_level", None)
    _cli["level"] = parse_level(given) if given is not None else None
    _cli["verbose"] = bool(getattr(args, "verbose", False))
    _cli["stderr"] = stderr
    outputs: list[Output] = []
    if _cli["file"] is not None:
        _cli["file"].close()
        _cli["file"] = None
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            f = open(log_file, "a", encoding="utf-8")
        except OSError as exc:
            raise LogError(f"cannot write the log {log_file}: {exc.strerror or exc}") from None
        _cli["file"] = f
        outputs.append((_json, _writer(f)))
    if _cli["verbose"]:
        outputs.append((_console(), _writer(stderr or sys.stderr)))
    return _logger(outputs, _cli["level"] or DEFAULT_LEVEL, True, **context)


def run_logger(log_file: Path, **context: Any) -> FilteringBoundLogger:
    """The logger of one run's deployment (deploy's launcher, run and down): JSON lines appended
    to `log_file` (DIR/logs/dmabuf-emu.log), opened per line so that a run directory emptied or
    removed under it costs nothing and several runs of one campaign never share a handle; with
    the CLI's --verbose, console lines on stderr too. Raises LogError naming the file if it
    cannot be written."""
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise LogError(f"cannot write the log {log_file}: {exc.strerror or exc}") from None

    def append(line: str) -> None:
        try:
            with open(log_file, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:
            pass  # the run directory went away under a late line (down --all): nothing to keep it in
    outputs: list[Output] = [(_json, append)]
    if _cli["verbose"]:
        outputs.append((_console(), _writer(_cli["stderr"] or sys.stderr)))
    return _logger(outputs, _cli["level"] or DEFAULT_LEVEL, True, svc="dmabuf-emu", **context)


def cli_logger() -> FilteringBoundLogger:
    """A logger without a file: --verbose's console lines only (nothing when not verbose)."""
    outputs: list[Output] = [(_console(), _writer(_cli["stderr"] or sys.stderr))] if _cli["verbose"] else []
    return _logger(outputs, _cli["level"] or DEFAULT_LEVEL, True, svc="dmabuf-emu")


def service_env() -> dict[str, str]:
    """What the launcher adds to a service's environment: the CLI's --log-level, if given."""
    return {LEVEL_ENV: _cli["level"]} if _cli["level"] else {}
