"""Every example command of `dmabuf-emu --help`, of each command's --help and of README.md works.

The commands are collected from the text users read, so that none can go stale:
- the help pages, as printed: indented lines beginning with `dmabuf-emu`;
- README.md: indented code lines, each `&&` part beginning with `dmabuf-emu` or
  `.venv/bin/dmabuf-emu`, and every `dmabuf-emu ...` in backticks (tables and prose).
A command with placeholders (DIR, N, [options], ...) is a synopsis: its command and its flags
must exist. Every other command is an example, and is run:
- `run`, `up`, `demo` and `compare` for real, with --duration cut to SHORT_S (or just past the
  last process fault the example schedules) and every path under a fresh directory;
- `check`, `status`, `down`, `compare --table-only` after the example that made their directory
  (in the same test, so that one run serves all its readers);
- `campaign` and `bench`, which take minutes, with their --dry-run: every run's parameters, the
  fault plans and the scheduler address are checked as a real campaign checks them;
- `down --all` with --dry-run: it acts on every run of the machine, other tests' included.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import deploy.run  # noqa: F401  bound now: run()'s default stream is the sys.stderr of its import
from deploy import cli, options, procs
from deploy.launcher import Deployment, down
from runtime import shm
from tests.helpers import ROOT

README = ROOT / "README.md"
SHORT_S = 0.5
PROGRAMS = ("dmabuf-emu", ".venv/bin/dmabuf-emu")
PLACEHOLDER = re.compile(r"\.\.\.|[\[\]|]|^[A-Z]$|[A-Z]{2,}")
WORKLOADS = {"run", "up", "demo", "compare", "sim"}
DRY_RUN = {"campaign", "bench"}
PROCESS_FAULTS = {"kill", "pause", "restart"}


# ---------------------------------------------------------------------------------- collecting

def _subparsers() -> dict[str, object]:
    parser = cli._parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(action.choices)


def help_pages() -> dict[str, str]:
    """Every help page as printed, by the command that prints it."""
    pages = {"dmabuf-emu --help": cli._parser().format_help()}
    for name, sub in _subparsers().items():
        pages[f"dmabuf-emu {name} --help"] = sub.format_help()
    return pages


def _commands(line: str) -> list[list[str]]:
    """The dmabuf-emu commands of one shell line (`a && b`), each without its program name."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return []
    parts: list[list[str]] = [[]]
    for w in words:
        if w == "&&":
            parts.append([])
        else:
            parts[-1].append(w)
    return [p[1:] for p in parts if p and p[0] in PROGRAMS]


def collected() -> list[tuple[str, tuple[tuple[str, ...], ...]]]:
    """(where, chain) for every command line found; a chain is its `&&`-joined commands."""
    found: list[tuple[str, tuple[tuple[str, ...], ...]]] = []
    for where, text in help_pages().items():
        for line in text.splitlines():
            if line.startswith("  ") and line.strip().startswith("dmabuf-emu "):
                found.append((where, tuple(map(tuple, _commands(line.strip())))))
    for line in README.read_text().splitlines():
        if line.startswith("    "):
            chain = _commands(line.strip())
            if chain:
                found.append(("README.md", tuple(map(tuple, chain))))
        for span in re.findall(r"`((?:\.venv/bin/)?dmabuf-emu\b[^`]*)`", line):
            found.append(("README.md", tuple(map(tuple, _commands(span)))))
    return [(w, c) for w, c in found if c and all(c)]   # a bare `dmabuf-emu` in prose names the program


def _needs_arguments(cmd: tuple[str, ...]) -> bool:
    """A command named in prose (`dmabuf-emu down`) without the arguments it requires."""
    sub = _subparsers().get(cmd[0]) if len(cmd) == 1 else None
    return sub is not None and any(a.required or a.nargs is None and not a.option_strings
                                   for a in sub._actions)


def is_synopsis(chain: tuple[tuple[str, ...], ...]) -> bool:
    """A command with placeholders (DIR, N, [options], ...), or a command merely named."""
    return any(PLACEHOLDER.search(word) for cmd in chain for word in cmd) or any(map(_needs_arguments, chain))


@dataclass
class Group:
    """Commands run one after the other in one fresh directory, and where they were found."""
    chains: list[tuple[tuple[str, ...], ...]]
    where: set[str] = field(default_factory=set)

    @property
    def id(self) -> str:
        return " ; ".join(" && ".join(" ".join(c) for c in chain) for chain in self.chains)[:150]


def _writes(cmd: tuple[str, ...]) -> set[str]:
    if not cmd or cmd[0] not in WORKLOADS or "--table-only" in cmd:
        return set()
    return {_value(cmd, "--out") or "runs/demo"}


def _reads(cmd: tuple[str, ...]) -> set[str]:
    if cmd and cmd[0] == "down" and "--all" in cmd:
        return set()                      # every run on the machine, not one directory
    if cmd and cmd[0] in ("check", "status", "down", "replay"):
        words = [w for w in cmd[1:] if not w.startswith("-")]
        if not words:
            raise AssertionError(f"`dmabuf-emu {' '.join(cmd)}`: no run directory named")
        return {words[0]}
    if cmd and ("--table-only" in cmd or "--report-only" in cmd):
        return {_value(cmd, "--out")}
    return set()


def _value(cmd: tuple[str, ...], flag: str) -> str | None:
    return cmd[cmd.index(flag) + 1] if flag in cmd[:-1] else None


def plan() -> tuple[list[Group], list[tuple[str, tuple]]]:
    """The examples as groups to run (a reader joins the first example that writes its
    directory), and the synopses."""
    groups: dict[tuple, Group] = {}
    synopses: list[tuple[str, tuple]] = []
    readers: list[tuple[str, tuple]] = []
    writer_of: dict[str, tuple] = {}
    for where, chain in collected():
        if is_synopsis(chain):
            synopses.append((where, chain))
            continue
        written: set[str] = set()
        missing = set()
        for cmd in chain:
            missing |= _reads(cmd) - written
            written |= _writes(cmd)
        if missing:
            readers.append((where, chain))
            continue
        group = groups.setdefault(chain, Group([chain]))
        group.where.add(where)
        for d in written:
            writer_of.setdefault(d, chain)
    for where, chain in readers:
        needs = {d for cmd in chain for d in _reads(cmd)}
        writer = next((writer_of[d] for d in needs if d in writer_of), None)
        if writer is None:
            group = groups.setdefault(chain, Group([chain]))   # fails when run: nothing makes its directory
        else:
            group = groups[writer]
            if chain not in group.chains:
                group.chains.append(chain)
        group.where.add(where)
    return list(groups.values()), synopses


GROUPS, SYNOPSES = plan()


# ---------------------------------------------------------------------------------- running

def _process_fault_end(cmd: list[str]) -> float:
    """When the last process fault the command schedules is over (0 if none)."""
    sub = _subparsers()[cmd[0]]
    args = sub.parse_args(cmd[1:])
    params = options.resolve(getattr(args, "scenario", None), vars(args))
    return max((f["at"] + (f.get("for") or 0.0) for f in params.faults if f["kind"] in PROCESS_FAULTS),
               default=0.0)


def adapt(cmd: tuple[str, ...]) -> list[str]:
    """The example as the test runs it: scenario and strategy paths from the checkout, absolute paths made
    relative (to the test's directory), a short --duration, --dry-run for the long commands."""
    out: list[str] = []
    for w in cmd:
        if w.endswith((".toml", ".py")) and (ROOT / w).exists():  # scenarios, strategies of one's own
            w = str(ROOT / w)
        elif w.startswith("/"):
            w = w.lstrip("/")
        out.append(w)
    if out[0] in WORKLOADS and out[0] != "up" and not {"--table-only", "--help", "-h"} & set(out):
        out += ["--duration", f"{max(SHORT_S, _process_fault_end(out) + 0.5):g}"]
    if out[0] in DRY_RUN and "--report-only" not in out:
        out.append("--dry-run")
    if out[0] == "down" and "--all" in out and "--dry-run" not in out:
        # `down --all` acts on the whole machine: here it would reap what tests running beside
        # this one left for their own `down --all` (tests/test_launcher_death.py runs it for real)
        out.append("--dry-run")
    return out


def _call(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:   # argparse: --help, --version, or a usage error
        return int(exc.code or 0)


def _leftovers(base: Path) -> list[str]:
    left = []
    for path in base.rglob("deploy.json"):
        dep = Deployment.read(path.parent)
        left += [f"{s.name} of {path.parent}" for s in dep.services if procs.alive(s.pid, s.marker)]
        left += shm.existing(dep.run_id)
    return left


@pytest.fixture
def short_cwd(monkeypatch) -> Path:
    """A fresh directory with a short path (ipc socket paths stay under 108 bytes), as cwd."""
    d = Path("/tmp") / f"dmx-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    monkeypatch.chdir(d)
    yield d
    for path in d.rglob("deploy.json"):       # whatever a failed example left running
        down(path.parent, timeout_s=2.0)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("group", GROUPS, ids=[g.id for g in GROUPS])
def test_every_example_command_runs(group: Group, short_cwd: Path, capsys) -> None:
    for chain in group.chains:
        for cmd in chain:
            argv = adapt(cmd)
            rc = _call(argv)
            err = capsys.readouterr().err
            allowed = {0, 1} if "--fail-on-race" in cmd else {0}
            assert rc in allowed, (f"`dmabuf-emu {' '.join(cmd)}` (from {', '.join(sorted(group.where))}) "
                                   f"ran as `dmabuf-emu {' '.join(argv)}` and exited {rc}: {err.strip()[-800:]}")
    assert _leftovers(short_cwd) == [], "an example left services or segments behind"


@pytest.mark.parametrize("where, chain", SYNOPSES, ids=[" && ".join(" ".join(c) for c in s[1])[:120] for s in SYNOPSES])
def test_every_synopsis_names_a_command_and_flags_that_exist(where: str, chain: tuple) -> None:
    subs = _subparsers()
    for cmd in chain:
        assert cmd and cmd[0] in subs, f"{where}: `dmabuf-emu {' '.join(cmd)}`: no command {cmd[0]!r}"
        known = set(subs[cmd[0]]._option_string_actions)
        flags = {w.strip("[]").split("=")[0] for w in cmd if w.strip("[]").startswith("--")}
        assert flags <= known, f"{where}: `dmabuf-emu {' '.join(cmd)}`: no such flag {sorted(flags - known)}"


def test_the_examples_cover_what_users_read() -> None:
    """The collection itself: it finds the README's first command, the help's examples, and
    at least one command of every kind, so that an empty collection cannot pass."""
    chains = [c for g in GROUPS for c in g.chains]
    first = [c for c in chains if c[0][0] == "demo"]
    assert first, "the README's first command (demo) was not collected"
    kinds = {cmd[0] for chain in chains for cmd in chain}
    assert kinds >= {"demo", "run", "up", "status", "down", "check", "compare", "campaign", "bench", "strategies"}
    wheres = {w for g in GROUPS for w in g.where}
    assert {"README.md", "dmabuf-emu --help", "dmabuf-emu run --help", "dmabuf-emu campaign --help"} <= wheres


def test_every_flag_the_readme_names_exists() -> None:
    flags = set(re.findall(r"`(--[a-z][a-z-]*)", README.read_text()))
    known = set().union(*(set(s._option_string_actions) for s in _subparsers().values()))
    assert flags and flags <= known, f"README names flags no command has: {sorted(flags - known)}"


# ---------------------------------------------------------------------------------- scenarios

SCENARIOS = sorted((ROOT / "scenarios").glob("*.toml"))


def test_every_scenario_the_docs_name_exists() -> None:
    text = README.read_text() + "\n".join(help_pages().values())
    named = set(re.findall(r"scenarios/[a-z0-9_.-]+\.toml", text))
    assert named, "the docs name no scenario"
    assert [n for n in sorted(named) if not (ROOT / n).exists()] == []
    shipped = {f"scenarios/{p.name}" for p in SCENARIOS}
    assert shipped <= set(re.findall(r"scenarios/[A-Za-z0-9_.-]+\.toml", README.read_text())), \
        "every shipped scenario is listed in the README"


def test_there_is_a_scenario_per_strategy_and_some_with_faults() -> None:
    from protocol.strategies import STRATEGIES
    params = [options.resolve(p, {}) for p in SCENARIOS]
    assert {p.strategy for p in params} == set(STRATEGIES)
    assert {p.hint_policy for p in params if p.strategy == "unmap-hint"} == {"optimistic", "conservative"}
    assert sum(bool(p.faults) for p in params) >= 3


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_every_scenario_is_valid_and_says_what_it_shows(path: Path) -> None:
    options.resolve(path, {})                             # every value, fault and grant checked
    head = path.read_text().splitlines()
    comment = [line for line in head[:next(i for i, line in enumerate(head) if not line.startswith("#"))]]
    assert len(comment) >= 2 and "Shows" in " ".join(comment), f"{path.name}: a comment saying what it shows"


# ---------------------------------------------------------------------------------- the program

def test_version_comes_from_the_installed_package() -> None:
    from importlib.metadata import version
    script = Path(sys.executable).parent / "dmabuf-emu"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "deploy.cli"]
    r = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == f"dmabuf-emu {version('dmabuf-emu')}"


def test_help_says_each_default_once() -> None:
    for where, text in help_pages().items():
        flat = " ".join(text.split())
        assert "(default: None)" not in flat, where
        # one option per entry: an entry starts at a line that begins with "  -"
        for entry in re.split(r"\n  (?=-)", text):
            assert entry.count("(default") <= 1, f"{where}: {' '.join(entry.split())}"
    for name, sub in _subparsers().items():
        for action in sub._actions:
            assert (action.help or "").count("(default") <= 1, f"{name} {action.option_strings}"


def test_examples_in_help_are_printed_whole() -> None:
    """A wrapped example is two broken commands: each example line in the help parses."""
    for where, text in help_pages().items():
        for line in text.splitlines():
            if line.strip().startswith("dmabuf-emu "):
                assert line.startswith("  "), f"{where}: an example not indented: {line!r}"
                cmd = _commands(line.strip())[0]
                assert not cmd or cmd[0] in _subparsers(), f"{where}: {line!r}"
