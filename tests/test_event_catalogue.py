"""The event catalogue (checker/catalogue.py) holds every event a run writes, with its fields.

How each event is covered:
- Run: the simulator (sim/run.py simulate_in_memory: the real exporter, importers and deploy's
  driver on virtual time) over every strategy, mutants and their controls included
  (deploy/campaign.py strategy_variants("all,mutants")), under every fault kind of
  runtime/faults.py KINDS: message faults both ways, process faults, device faults, and the
  buffer fault `revoke` where the strategy revokes. Every event of every history must be in the
  catalogue with only declared fields and every required one. The default suite groups the
  kinds (one run per group and strategy); `-m slow` runs each kind alone and each shipped plan
  (deploy/plans/*.toml).
- Real: one short real run (processes, tcp with CURVE, an importer killed and restarted by
  dmabuf-emu) writes the real services' start, stop and `curve_auth` events and deploy's real
  process-fault events; each is checked the same way.
- Read: events the simulator does not write in these runs (a real process's `launcher_gone`,
  `send_failed` and `fatal`, CURVE's `curve_auth`, `access_denied`, `busy`, `internal_error`, a
  frame that does not decode, an interrupted run ...) are covered by reading the emitting code:
  every event name written as a literal at an emit site in protocol/, runtime/, exporter_svc/,
  importer_svc/, sim/ and deploy/ must be a catalogue name, and every catalogue name must be
  emitted somewhere (by a literal, or by one of the composed names listed in COMPOSED). Their
  fields are the catalogue's reading of those sites.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from checker import catalogue
from checker.catalogue import BY_KEY, NAMES, problems
from deploy.campaign import strategy_variants
from deploy import faultplans
from deploy.options import RunParams
from protocol.exporter import compile_spec
from protocol.strategies import resolve
from runtime import faults as F
from sim.run import simulate_in_memory

ROOT = Path(__file__).resolve().parent.parent
RUN = dict(importers=2, buffers=4, duration=0.6, move_rate=100.0, seed=1)

# Each fault kind of runtime/faults.py, alone (the slow test) and in groups (the default suite).
ALONE: dict[str, tuple[str, ...]] = {
    "delay": ("delay:ms=5,jitter_ms=3", "delay:ms=5,jitter_ms=3,target=exporter"),
    "drop": ("drop:p=0.1", "drop:p=0.1,target=exporter"),
    "dup": ("dup:p=0.2", "dup:p=0.2,target=exporter"),
    "reorder": ("reorder:p=0.2", "reorder:p=0.2,target=exporter"),
    "kill": ("kill:target=importer-2,at=0.2",),
    "pause": ("pause:target=importer-1,at=0.2,for=0.3",),
    "restart": ("restart:target=importer-2,at=0.2,for=0.1",),
    "rogue": ("rogue:ms=50,p=0.5",),
    "slow-dma": ("slow-dma:factor=4",),
    "early-ack": ("early-ack:p=0.5",),
    "ignore-notify": ("ignore-notify:p=0.5",),
    "revoke": ("revoke:at=0.2,for=0.2",),
    "close": ("close:at=0.45",),
}
GROUPS: dict[str, tuple[str, ...]] = {
    "none": (),
    "messages": ("delay:ms=5,jitter_ms=3,target=exporter", "drop:p=0.05", "dup:p=0.1,target=exporter",
                 "dup:p=0.1", "reorder:p=0.1", "reorder:p=0.1,target=exporter", "drop:p=0.05,target=exporter"),
    "processes": ("kill:target=importer-2,at=0.3", "pause:target=importer-1,at=0.1,for=0.35",
                  "restart:target=importer-2,at=0.15,for=0.1"),
    "devices": ("rogue:ms=50,p=0.3", "slow-dma:factor=2,p=0.3", "early-ack:p=0.3", "ignore-notify:p=0.3"),
    "revoke": ALONE["revoke"] + ("ignore-notify:p=0.5",) + ALONE["close"],
    "revoke-static": ALONE["revoke"],
}
# What a group needs beside its faults for its events to come: a lease shorter than the pause
# (lease_expired, woke), an unmap wait shorter than an importer that ignores invalidate_mappings
# (unmap_wait_warning), an importer that cannot be revoked (attach_refused).
GROUP_PARAMS: dict[str, dict[str, Any]] = {"processes": {"lease_ms": 250.0}, "revoke": {"unmap_wait_ms": 50.0},
                                           "revoke-static": {"importer_kind": "static"}}
VARIANTS = dict(strategy_variants("all,mutants"))

# Event names an emit site composes rather than writes whole (so the source scan cannot see them).
COMPOSED = {
    "ack_refused": "protocol/importer.py: f\"{op}_refused\" for an ack, pin or unpin refused",
    "pin_refused": "protocol/importer.py: f\"{op}_refused\" (main's importer has no literal one left)",
    "unpin_refused": "protocol/importer.py: f\"{op}_refused\"",
    "move_notify_returned": "protocol/exporter/session.py: f\"{name}_returned\"",
}


def _kinds(faults: tuple[str, ...]) -> set[str]:
    return {F.parse_cli(f)["kind"] for f in faults}


def test_every_fault_kind_is_exercised() -> None:
    """The groups and the single-kind runs name every kind runtime/faults.py knows."""
    assert set(ALONE) == set(F.KINDS)
    assert set().union(*map(_kinds, GROUPS.values())) == set(F.KINDS)
    assert all(_kinds(v) == {k} for k, v in ALONE.items())


def _params(overrides: dict[str, Any], faults: tuple[str, ...], **extra: Any) -> RunParams | None:
    """The strategy's run (a mutant's own faults kept) under `faults`; None if the strategy
    cannot take them (a revoke fault needs a table that revokes)."""
    if _kinds(faults) & set(F.BUFFER_KINDS) and not compile_spec(resolve(overrides["strategy"]).EXPORTER).revokes:
        return None
    own = tuple(overrides.get("faults", ()))
    return RunParams(**{**RUN, **overrides, **extra, "faults": own + tuple(F.parse_cli(f) for f in faults)})


def _problems_of(params: RunParams, seen: Counter[tuple[str, str]]) -> list[str]:
    """What the catalogue does not declare in one simulated run's history (`seen` counts its events)."""
    r = simulate_in_memory(params, judge=False)
    assert r.outcome.error is None and not r.outcome.crashes, (r.outcome.error, r.outcome.logs)
    bad: list[str] = []
    for line in r.history:
        ev = json.loads(line)
        seen[(catalogue.emitter(ev["svc"]), ev["event"])] += 1
        bad += problems(ev)
    return bad


def _check(label: str, runs: dict[str, RunParams | None]) -> Counter[tuple[str, str]]:
    """Run each of `runs` (None: the strategy cannot take that fault) and fail on any problem."""
    seen: Counter[tuple[str, str]] = Counter()
    bad = {plan: _problems_of(params, seen) for plan, params in runs.items() if params is not None}
    report = {plan: sorted(Counter(found).items())[:10] for plan, found in bad.items() if found}
    assert not report, f"{label}: events or fields the catalogue does not declare: {report}"
    assert seen[("importer", "dma_end")] and seen[("deploy", "run_stop")]   # the runs did run
    return seen


@pytest.mark.parametrize("label", list(VARIANTS))
def test_simulated_events_are_in_the_catalogue(label: str) -> None:
    _check(label, {group: _params(VARIANTS[label], faults, **GROUP_PARAMS.get(group, {}))
                   for group, faults in GROUPS.items()})


def _plan_run(label: str, name: str) -> RunParams:
    """A shipped plan's run of the strategy (a mutant's own faults kept), as a campaign makes it."""
    plan = faultplans.load(name)
    base = RunParams(**{**RUN, "duration": 1.0, **VARIANTS[label]})
    return dataclasses.replace(plan.apply(base), faults=base.faults + plan.faults)


@pytest.mark.slow
@pytest.mark.parametrize("label", list(VARIANTS))
def test_simulated_events_are_in_the_catalogue_each_fault_and_plan(label: str) -> None:
    _check(label, {**{kind: _params(VARIANTS[label], faults) for kind, faults in ALONE.items()},
                   **{f"plan {name}": _plan_run(label, name) for name in faultplans.shipped()}})


def test_a_real_run_writes_only_catalogue_events(short_dir: Path) -> None:
    from deploy.run import run
    from runtime import shm
    params = RunParams(strategy="resv-fence", importers=2, duration=1.0, transport="tcp", curve=True,
                       faults=(F.parse_cli("restart:target=importer-2,at=0.3,for=0.2"),))
    run(params, short_dir, quiet=True)
    events = [json.loads(line) for line in (short_dir / "history.jsonl").read_text().splitlines()]
    assert shm.existing(json.loads((short_dir / "deploy.json").read_text())["run_id"]) == []
    names = {(catalogue.emitter(e["svc"]), e["event"]) for e in events}
    assert {("exporter", "curve_auth"), ("deploy", "service_restarted"), ("importer", "dma_end")} <= names
    bad = Counter(p for e in events for p in problems(e))
    assert not bad, f"a real run wrote events or fields the catalogue does not declare: {sorted(bad.items())[:10]}"


def test_a_mismatch_is_reported() -> None:
    """problems() finds what the simulated runs must not have: the test above can fail."""
    ok = {"t_ns": 1, "svc": "importer-1", "pid": 2, "event": "woke", "late_ns": 5}
    assert problems(ok) == []
    assert problems({**ok, "event": "woken"}) == ["importer event 'woken' is not in the catalogue"]
    assert problems({**ok, "extra": 1}) == ["importer woke: field 'extra' is not declared"]
    assert problems({k: v for k, v in ok.items() if k != "late_ns"}) == ["importer woke: required field 'late_ns' is missing"]
    assert problems({**ok, "svc": "exporter"}) == ["exporter event 'woke' is not in the catalogue"]


# ------------------------------------------------------------------------------ the code read

# structlog's _process_event(method_name, event, ...) names the sink's method, not an event
_EMIT = re.compile(r"""(?:\.emit|\._emit|\bEmit)\(\s*"([a-z_]+)"|(?<!_process)_event\(\s*"([a-z_]+)\"""")
_SOURCES = ("protocol", "runtime", "exporter_svc", "importer_svc", "sim", "deploy")


def _emitted_literals() -> dict[str, set[str]]:
    """Event name -> the files that emit it by a literal name."""
    out: dict[str, set[str]] = {}
    for top in _SOURCES:
        for path in (ROOT / top).rglob("*.py"):
            for m in _EMIT.finditer(path.read_text()):
                out.setdefault(m.group(1) or m.group(2), set()).add(str(path.relative_to(ROOT)))
    return out


def test_every_emitted_name_is_in_the_catalogue_and_every_entry_is_emitted() -> None:
    emitted = _emitted_literals()
    assert {"send_failed", "fatal", "map_served", "dma_end"} <= set(emitted)   # the scan sees emit sites
    unknown = {name: sorted(files) for name, files in emitted.items() if name not in NAMES}
    assert not unknown, f"emitted but not in checker/catalogue.py: {unknown}"
    never = sorted(NAMES - set(emitted) - set(COMPOSED))
    assert not never, f"in the catalogue but emitted nowhere: {never}"


def test_send_failed_and_fatal_are_declared() -> None:
    assert BY_KEY[("exporter", "send_failed")].required == ("peer", "error")
    assert BY_KEY[("importer", "send_failed")].required == ("error",)
    assert BY_KEY[("importer", "fatal")].required == ("error",)


# ------------------------------------------------------------------------------ the docs

def test_docs_events_md_holds_the_generated_catalogue() -> None:
    text = (ROOT / "docs" / "events.md").read_text()
    assert catalogue.block(text) == catalogue.markdown(), (
        "docs/events.md is not the catalogue: run `python -m checker.catalogue --write docs/events.md`")
    for name in ("send_failed", "fatal"):
        assert f"| `{name}` |" in text


def test_checker_handlers_are_catalogue_names() -> None:
    from checker import oracle, trace, waitfor
    catalogue.require_known(oracle.Oracle()._handlers, "checker/oracle.py")
    catalogue.require_known(trace._HANDLERS, "checker/trace.py")
    catalogue.require_known(waitfor.HANDLED, "checker/waitfor.py")
    with pytest.raises(ValueError, match="checker/x.py: handles events the catalogue does not declare: map_servd"):
        catalogue.require_known(["map_served", "map_servd"], "checker/x.py")
