"""Fault specifications: what to break, where, when and how often.

A fault is written `KIND[:key=value,...]` on the command line (`--fault delay:ms=5,op=move_notify`)
or as a `[[faults]]` table in a scenario file. Its canonical form is a plain dict, so it can
travel in deploy.json, on a service's command line (as JSON) and in the history.

Common keys (every kind):
    target  importer-N | importers | exporter   (default: importers; exporter only where it makes sense)
    at      seconds into the workload when it starts (default 0)
    for     seconds it lasts (default: to the end of the run; pause: 1; restart: 0.5 before the restart)
    p       probability per message (message faults) or per job / notification (device faults), default 1
    op      message faults only: only messages of this op

Kinds and their own keys:
    message faults, in the sending service's transport (so they work on ipc and tcp alike):
        delay       ms (default 5), jitter_ms (default 0)
        drop        (a dropped request is retried by its sender)
        dup         (the receiver deduplicates by request id)
        reorder     (hold a message, release it after the next one)
    process faults, applied by dmabuf-emu to the target's process:
        kill        SIGKILL at `at`
        pause       SIGSTOP at `at`, SIGCONT `for` seconds later
        restart     SIGKILL at `at`, start it again `for` seconds later (importers only)
    device faults, in the importer's DMA engine:
        rogue           ms (default 20), access (write|read, default write): keep doing DMA on the
                        buffer for `ms` after unmap, or after acknowledging a move_notify
        slow-dma        factor (default 4): jobs take `factor` times longer
        early-ack       acknowledge move_notify at once, even with DMA still running
        ignore-notify   drop move_notify on the floor: no return, no ack, no invalidation
    buffer faults, applied by the exporter (strategies whose table revokes: `revoke`):
        revoke      revoke the buffers at `at` (VFIO taking a PCI BAR away on a device reset) and
                    un-revoke them `for` seconds later (default: never). `target` names the
                    buffers: `buffers` (all, the default), a number, a range `2-5`, or several
                    joined by `+` (`0+3-4`); in a scenario also a list [0, 3]. `p` and `op` do
                    not apply.
        close       close the exporting device at `at` (VFIO: vfio_pci_core_close_device ->
                    vfio_pci_dma_buf_cleanup): the buffers are revoked for good, a buffer revoked
                    already is left as it is (7.1-rc with the May 2026 fix; the revoke+cleanup-redrain
                    mutant drains it again). `target` as revoke's; `for` does not apply.

All randomness (which message, which job) is drawn from generators seeded by the run's --seed,
the fault's position in the list and the service's name: the same seed gives the same schedule.
"""

from __future__ import annotations

import json
import re
from typing import Any

MESSAGE_KINDS = ("delay", "drop", "dup", "reorder")
PROCESS_KINDS = ("kill", "pause", "restart")
DEVICE_KINDS = ("rogue", "slow-dma", "early-ack", "ignore-notify")
BUFFER_KINDS = ("revoke", "close")
KINDS = MESSAGE_KINDS + PROCESS_KINDS + DEVICE_KINDS + BUFFER_KINDS

_COMMON = {"target", "at", "for", "p", "op"}
_OWN: dict[str, dict[str, Any]] = {
    "delay": {"ms": 5.0, "jitter_ms": 0.0},
    "drop": {}, "dup": {}, "reorder": {},
    "kill": {}, "pause": {}, "restart": {},
    "rogue": {"ms": 20.0, "access": "write"},
    "slow-dma": {"factor": 4.0},
    "early-ack": {}, "ignore-notify": {},
    "revoke": {}, "close": {},
}
_DEFAULT_FOR = {"pause": 1.0, "restart": 0.5}


class FaultError(ValueError):
    """A fault that cannot be: the message names the fault and the key."""


def parse_cli(text: str) -> dict[str, Any]:
    """`KIND[:key=value,...]` -> canonical dict (see `canonical`)."""
    kind, _, rest = text.partition(":")
    raw: dict[str, Any] = {"kind": kind.strip()}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise FaultError(f"--fault {text!r}: expected key=value, got {item!r}")
            raw[key.strip()] = value.strip()
    return canonical(raw, where=f"--fault {text!r}")


def _number(where: str, key: str, value: Any, lo: float = 0.0, hi: float = 1e9) -> float:
    if isinstance(value, bool):
        raise FaultError(f"{where}: '{key}' must be a number, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise FaultError(f"{where}: '{key}' must be a number, got {value!r}") from None
    if not lo <= f <= hi or f != f:
        raise FaultError(f"{where}: '{key}' must be between {lo:g} and {hi:g}, got {value!r}")
    return f


_IMPORTER = re.compile(r"importer-[1-9][0-9]*", re.ASCII)


def canonical(raw: dict[str, Any], *, where: str = "fault") -> dict[str, Any]:
    """Check a fault and fill in its defaults. Raises FaultError naming the key."""
    kind = raw.get("kind")
    if kind not in KINDS:
        raise FaultError(f"{where}: unknown fault kind {kind!r} (known: {', '.join(KINDS)})")
    where = f"{where} ({kind})"
    own = _OWN[kind]
    for key in raw:
        if key != "kind" and key not in _COMMON and key not in own:
            known = sorted((_COMMON - {"p", "op"} if kind in BUFFER_KINDS else _COMMON) | set(own))
            raise FaultError(f"{where}: unknown key '{key}' (known: {', '.join(known)})")
    out: dict[str, Any] = {"kind": kind}
    if kind in BUFFER_KINDS:
        return _buffer_fault(raw, out, where)
    target = str(raw.get("target", "importers"))
    if target not in ("importers", "exporter") and not _IMPORTER.fullmatch(target):
        raise FaultError(f"{where}: 'target' must be importer-N, importers or exporter, got {target!r}")
    if target == "exporter" and kind in DEVICE_KINDS + ("restart",):
        raise FaultError(f"{where}: a {kind} fault needs an importer target, not the exporter")
    out["target"] = target
    out["at"] = _number(where, "at", raw.get("at", 0.0))
    duration = raw.get("for", _DEFAULT_FOR.get(kind))
    out["for"] = None if duration is None else _number(where, "for", duration)
    out["p"] = _number(where, "p", raw.get("p", 1.0), 0.0, 1.0)
    op = raw.get("op")
    if op is not None and kind not in MESSAGE_KINDS:
        raise FaultError(f"{where}: 'op' only applies to message faults")
    if op is not None:
        from protocol.wire import ALL_OPS
        if not isinstance(op, str) or op not in ALL_OPS:
            raise FaultError(f"{where}: 'op' must be one of {', '.join(sorted(ALL_OPS))}, got {op!r}")
    out["op"] = op
    for key, default in own.items():
        value = raw.get(key, default)
        if key == "access":
            if value not in ("write", "read"):
                raise FaultError(f"{where}: 'access' must be write or read, got {value!r}")
            out[key] = value
        else:
            out[key] = _number(where, key, value, 1.0 if key == "factor" else 0.0)
    return out


_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?", re.ASCII)


def _buffer_fault(raw: dict[str, Any], out: dict[str, Any], where: str) -> dict[str, Any]:
    """revoke, close: target is the buffers (canonical: "buffers", or "N+M-K" sorted and merged)."""
    # the canonical form carries the values that change nothing (p=1.0 and no op), and its --fault
    # text (deploy/campaign.py fault_text, p as the string "1.0") must parse back to it
    for key, changes in (("p", "p" in raw and _number(where, "p", raw["p"], 0.0, 1.0) != 1.0),
                         ("op", raw.get("op") is not None)):
        if changes:
            raise FaultError(f"{where}: '{key}' does not apply to a {out['kind']} fault (it acts on buffers, "
                             f"not on messages or jobs)")
    target = raw.get("target", "buffers")
    if isinstance(target, list):
        if not target or not all(type(b) is int and b >= 0 for b in target):
            raise FaultError(f"{where}: 'target' must be buffers, or a list of buffer numbers, got {target!r}")
        numbers = sorted(set(target))
    elif str(target) == "buffers":
        numbers = None
    else:
        numbers = set()
        for part in str(target).split("+"):
            m = _RANGE.fullmatch(part.strip())
            if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
                raise FaultError(f"{where}: 'target' must be buffers, a buffer number, a range such as 2-5, "
                                 f"or several joined by '+' (0+3-4), got {target!r}")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            numbers.update(range(lo, min(hi, lo + 1_000_000) + 1))
        numbers = sorted(numbers)
    out["target"] = "buffers" if numbers is None else "+".join(str(b) for b in numbers)
    out["at"] = _number(where, "at", raw.get("at", 0.0))
    if out["kind"] == "close" and raw.get("for") is not None:
        raise FaultError(f"{where}: 'for' does not apply to a close fault (a closed device does not come back)")
    out["for"] = None if raw.get("for") is None else _number(where, "for", raw["for"])
    out["p"] = 1.0
    out["op"] = None
    return out


def revoked_buffers(fault: dict[str, Any], buffers: int) -> list[int]:
    """The buffers a revoke (or close) fault names, of a run with `buffers` buffers (numbers past the last
    are returned too, for the caller to refuse)."""
    target = fault["target"]
    return list(range(buffers)) if target == "buffers" else [int(b) for b in target.split("+")]


def applies_to(fault: dict[str, Any], svc: str) -> bool:
    if fault["kind"] in BUFFER_KINDS:
        return svc == "exporter"   # the exporter revokes its buffers
    target = fault["target"]
    if target == "importers":
        return svc.startswith("importer-")
    return target == svc


def encode(faults: list[dict[str, Any]]) -> str:
    return json.dumps(faults, separators=(",", ":"))


def decode(text: str) -> list[dict[str, Any]]:
    faults = json.loads(text) if text else []
    return [canonical(f) for f in faults]


def describe(fault: dict[str, Any]) -> str:
    """One line for people: `delay ms=5 op=move_notify -> exporter from 0 s`."""
    own = " ".join(f"{k}={fault[k]:g}" if isinstance(fault[k], float) else f"{k}={fault[k]}"
                   for k in _OWN[fault["kind"]])
    when = f"at {fault['at']:g} s" + (f" for {fault['for']:g} s" if fault.get("for") is not None else "")
    extra = (f" op={fault['op']}" if fault.get("op") else "") + (f" p={fault['p']:g}" if fault["p"] < 1 else "")
    return f"{fault['kind']} {own}{extra} -> {fault['target']} {when}".replace("  ", " ")
