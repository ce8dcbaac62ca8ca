"""Findings: what a run should not hide although it is no race. Deadlocks, fences forced, timeouts.

Rules (docs/events.md, "Findings"):
- `deadlock`: each cycle of the wait-for graph (checker/waitfor.py), with its shortest cycle as the
  witness, when it formed, and how it was broken or that it was still there at the end.
- `fence_forced`: each exporter `fence_signal` with `forced: true` (an importer's fences
  force-completed; its `error` says why).
- `timeout`: a bounded wait that ran out: `notify` (ack_timeout), `fence` (the first forced
  fence_signal with error "timeout" of one fence wait; later ones of the same wait join it),
  `lease` (importer_lost, reason "lease expired"), `unmap` (unmap_wait_warning, Linux 7.1).
- `revoke_incomplete` (Linux 7.1, checker/revoke.py): a revocation ended its unmap wait while the
  exporter still had a mapping of the buffer on record: one item per such mapping.
- `refcount_warning` (Linux 7.1): each exporter `refcount_warning` event, the kernel's WARN from
  lib/refcount.c ("addition on 0" or "underflow"): the exporter's unmap-wait count went wrong,
  whatever the importers did. A catch: no other event shows an underflow.
- `potential_deadlock` (checker/lockdep.py): lockdep's report with the dma-fence signalling
  annotations: a fence whose signalling path takes (or waits for) a reservation lock, in a run
  that waits for fences under that lock; one item per importer and buffer, formed or not.
- `stuck` (checker/liveness.py): something begun (a move, a queued move, a deferred map, an
  awaited fence, an unmap wait) still open when the run's drain ended (deploy's workload_stop).
- Counts count everything; item lists keep the first MAX_ITEMS. Sentences are written at report
  time, when the history's start and the fate of each cycle are known.
"""

from __future__ import annotations

from typing import Any

from checker import liveness
from checker.lockdep import LockDep
from checker.model import importer_name
from checker.waitfor import HOLDER_KINDS, Cycle, Node, WaitFor
from checker.witness import rel_ms

MAX_ITEMS = 256
# The finding kinds: report.json's `findings` keys, the `finding` field of the oracle's on_finding
# hook. Declared here only; deploy and sim import them.
DEADLOCK = "deadlock"
FENCE_FORCED = "fence_forced"
TIMEOUT = "timeout"
REVOKE_INCOMPLETE = "revoke_incomplete"
STUCK = "stuck"
REFCOUNT_WARNING = "refcount_warning"
POTENTIAL_DEADLOCK = "potential_deadlock"   # lockdep's: a cycle of lock classes, formed or not (checker/lockdep.py)
FINDING_KINDS: tuple[str, ...] = (DEADLOCK, FENCE_FORCED, TIMEOUT, REVOKE_INCOMPLETE, STUCK, REFCOUNT_WARNING,
                                  POTENTIAL_DEADLOCK)
# The findings that say a rule was broken, caught as races are (explore's searches, the mutation
# score); fence timeouts and forced fences are a bounded wait doing its job, under faults as under bugs.
# A stuck item is a liveness rule broken: the protocol stopped making progress. A potential deadlock
# is the kernel's rule broken ("any code required for fence completion cannot acquire a dma_resv
# lock", drivers/dma-buf/dma-fence.c), whether or not the cycle formed.
CATCHES: tuple[str, ...] = (DEADLOCK, REVOKE_INCOMPLETE, STUCK, REFCOUNT_WARNING, POTENTIAL_DEADLOCK)
TIMEOUT_KINDS = ("notify", "fence", "lease", "unmap")


# ---------------------------------------------------------------------------- deadlock sentences

def _name(n: Node, details: dict[str, Any], home: Any) -> str:
    kind = n[0]
    if kind == "move":
        return f"the move of buffer {n[1]} (move {n[2]})"
    if kind == "revoke":
        return f"the revocation of buffer {n[1]} (revoke {n[2]})"
    if kind == "fence":
        where = "" if n[2] == home else f" on buffer {n[2]}"
        return f"{n[1]}'s fence {n[3]}{where}"
    if kind == "map":
        buf = details.get("buffer")
        return f"{n[1]}'s map of buffer {buf if buf is not None else '?'} (request {n[2]})"
    if kind == "lock":
        return "the lock" if n[1] == home else f"buffer {n[1]}'s lock"
    return str(n)


def cycle_clauses(c: Cycle) -> str:
    """The cycle in words: "the move of buffer 3 (move 7) held its lock and waited for importer-2's
    fence 17; that fence waited for importer-2's map of buffer 3 (request 41); that map waited for
    the lock"."""
    nodes, k = c.nodes, len(c.nodes)
    n0 = nodes[0]
    home = n0[1] if n0[0] in HOLDER_KINDS else None
    d = lambda n: c.details.get(n, {})  # noqa: E731
    nxt = nodes[1 % k]
    held = nodes[-1][0] == "lock" and n0[0] in HOLDER_KINDS
    if held:
        lock = "its lock" if nodes[-1][1] == home else f"buffer {nodes[-1][1]}'s lock"
        parts = [f"{_name(n0, d(n0), home)} held {lock} and waited for {_name(nxt, d(nxt), home)}"]
    else:
        parts = [f"{_name(n0, d(n0), home)} waited for {_name(nxt, d(nxt), home)}"]
    for i in range(1, k):
        u, v = nodes[i], nodes[(i + 1) % k]
        if u[0] == "lock":
            if v != n0 or not held:
                parts.append(f"that lock was held by {_name(v, d(v), home)}")
        elif u[0] in HOLDER_KINDS:
            parts.append(f"that {u[0]} waited for {_name(v, d(v), home)}")
        elif u[0] == "fence" and v[0] == "fence" and (v[1], v[2]) == (u[1], u[2]):
            parts.append(f"that fence is behind {_name(v, d(v), home)} (one importer's fences on a "
                         f"buffer signal in order)")
        else:
            parts.append(f"that {u[0]} waited for {_name(v, d(v), home)}")
    text = "; ".join(parts)
    return text[0].upper() + text[1:]


def describe_break(how: dict[str, Any]) -> str:
    """What took an edge away, as the object of "broken by ..."."""
    ev = how.get("event")
    imp, buf = how.get("importer") or how.get("svc"), how.get("buffer")
    if ev == "fence_signal" and how.get("forced"):
        err = how.get("error")
        if err == "timeout":
            return f"a fence timeout: the exporter forced {imp}'s fences on buffer {buf}"
        if err == "lease expired":
            return f"{imp}'s lease expiring: the exporter forced its fences on buffer {buf}"
        return f"the exporter forcing {imp}'s fences on buffer {buf} ({err})"
    if ev == "fence_signal":
        return f"{imp} signaling fence {how.get('seq')} on buffer {buf}"
    if ev == "resv_unlock":
        return f"the release of buffer {buf}'s lock"
    if ev == "resv_lock":
        return f"buffer {buf}'s lock changing hands"
    if ev == "fence_wait_end":
        return f"the end of the fence wait on buffer {buf}"
    if ev == "map_served":
        return f"the exporter serving {imp}'s map (request {how.get('id')})"
    if ev == "op_answered":
        return f"the exporter refusing {imp}'s map (request {how.get('id')}, {how.get('code')})"
    if ev == "attachment_revoked":
        return f"the exporter revoking {imp}'s attachment {how.get('attachment')} ({how.get('reason')})"
    if ev == "detach":
        return f"{imp} detaching attachment {how.get('attachment')}"
    if ev == "map":
        return f"{imp} receiving the reply to its map (request {how.get('id')})"
    if ev == "fence_unblocked":
        return f"{imp} unblocking its fence {how.get('seq')} on buffer {buf}"
    if isinstance(ev, str) and ev.startswith("service "):
        return f"{how.get('svc')} {'dying' if ev.endswith('died') else 'starting again'}"
    return str(ev)


def _node_dict(n: Node, details: dict[str, Any]) -> dict[str, Any]:
    kind = n[0]
    if kind in HOLDER_KINDS:
        return {"node": kind, "buffer": n[1], kind: n[2]}
    if kind == "fence":
        return {"node": "fence", "importer": n[1], "buffer": n[2], "seq": n[3], **details}
    if kind == "map":
        return {"node": "map", "importer": n[1], "id": n[2], **details}
    return {"node": kind, "buffer": n[1]}


_EDGE_EVENT = {"lock": "resv_lock", "move": "fence_wait_begin", "revoke": "fence_wait_begin",
               "fence": "fence_blocked", "map": "map_deferred"}


def cycle_events(c: Cycle) -> list[dict[str, Any]]:
    """The events that made the cycle's waits (one per edge), in time order."""
    out = []
    k = len(c.nodes)
    for i, u in enumerate(c.nodes):
        v = c.nodes[(i + 1) % k]
        t = c.edges_since[i]
        if t is None:
            continue
        e: dict[str, Any] = {"t_ns": t, "event": _EDGE_EVENT.get(u[0], "?"),
                             "note": f"{_name(u, c.details.get(u, {}), None)} waits for "
                                     f"{_name(v, c.details.get(v, {}), None)}"}
        if u[0] == "lock":
            e.update(svc="exporter", buffer=u[1], holder=_node_dict(v, {}))
        elif u[0] in HOLDER_KINDS:
            e.update(svc="exporter", buffer=u[1], **{u[0]: u[2]}, awaits=_node_dict(v, {}))
        elif u[0] == "fence":
            e.update(svc=u[1], buffer=u[2], seq=u[3] if v[0] != "fence" or v[1:3] != u[1:3] else v[3],
                     waiting_for=_node_dict(v, c.details.get(v, {})))
        elif u[0] == "map":
            e.update(svc="exporter", importer=u[1], id=u[2], buffer=v[1],
                     attachment=c.details.get(u, {}).get("attachment"))
        out.append(e)
    out.sort(key=lambda e: e["t_ns"])
    return out


# ---------------------------------------------------------------------------- the collection

class Findings:
    """Collects what the oracle and the wait-for graph report; `report(t0, t_end)` renders it."""

    def __init__(self, waitfor: WaitFor, lockdep: LockDep | None = None) -> None:
        self.waitfor = waitfor
        self.lockdep = lockdep if lockdep is not None else LockDep()
        self.fence_forced: list[dict[str, Any]] = []
        self.n_fence_forced = 0
        self.timeouts: list[dict[str, Any]] = []
        self.n_timeouts = 0
        self.timeouts_by_kind = {k: 0 for k in TIMEOUT_KINDS}
        self._fence_round: dict[tuple[Any, Any], dict[str, Any]] = {}   # (buffer, move) -> its timeout item
        self.incomplete: list[dict[str, Any]] = []
        self.n_incomplete = 0
        self.stuck_items: list[dict[str, Any]] = []
        self.n_stuck = 0
        self.refcount: list[dict[str, Any]] = []
        self.n_refcount = 0
        self.stuck_by_what = {w: 0 for w in liveness.WHAT}
        self.liveness: liveness.Liveness | None = None   # set by the oracle: whether and how it judged

    @property
    def total(self) -> int:
        return (self.waitfor.count + self.n_fence_forced + self.n_timeouts + self.n_incomplete + self.n_stuck
                + self.n_refcount + self.lockdep.count)

    def refcount_warning(self, ev: dict[str, Any], t: int) -> dict[str, Any]:
        """The exporter's refcount_t WARN on a buffer's unmap-wait count."""
        self.n_refcount += 1
        item = {"t_ns": t, "buffer": ev.get("buffer"), "refs": ev.get("refs"), "message": ev.get("message"),
                "events": [{"t_ns": t, "event": "refcount_warning", "svc": "exporter", "buffer": ev.get("buffer"),
                            "refs": ev.get("refs"), "message": ev.get("message"),
                            "note": f"the exporter's own WARN: {ev.get('message')}"}]}
        if len(self.refcount) < MAX_ITEMS:
            self.refcount.append(item)
        return item

    def stuck(self, item: dict[str, Any]) -> None:
        """Something still open when the drain ended (checker/liveness.py fills in its end, if any)."""
        self.n_stuck += 1
        self.stuck_by_what[item["what"]] += 1
        if len(self.stuck_items) < MAX_ITEMS:
            self.stuck_items.append(item)

    def revoke_incomplete(self, item: dict[str, Any]) -> None:
        """A mapping still on record when its revocation's unmap wait ended (checker/revoke.py
        fills in its unmap when it comes)."""
        self.n_incomplete += 1
        if len(self.incomplete) < MAX_ITEMS:
            self.incomplete.append(item)

    def forced(self, ev: dict[str, Any], t: int) -> None:
        imp = importer_name(ev.get("importer"))
        self.n_fence_forced += 1
        item = {"t_ns": t, "buffer": ev.get("buffer"), "move": ev.get("move"), "revoke": ev.get("revoke"),
                "importer": imp, "error": ev.get("error")}
        if len(self.fence_forced) < MAX_ITEMS:
            self.fence_forced.append(item)
        if ev.get("error") == "timeout":
            key = (ev.get("buffer"), ev.get("move") if ev.get("move") is not None else ev.get("revoke"))
            round_ = self._fence_round.get(key)
            if round_ is None:
                self._fence_round[key] = self.timeout("fence", t, buffer=ev.get("buffer"), move=ev.get("move"),
                                                      revoke=ev.get("revoke"), importers=[imp])
            elif imp not in round_["importers"]:
                round_["importers"].append(imp)

    def wait_round(self, ev: dict[str, Any]) -> None:
        """fence_wait_begin / fence_wait_end: a fence timeout after this is a new one."""
        if self._fence_round:
            key = (ev.get("buffer"), ev.get("move") if ev.get("move") is not None else ev.get("revoke"))
            self._fence_round.pop(key, None)

    def timeout(self, kind: str, t: int, **fields: Any) -> dict[str, Any]:
        self.n_timeouts += 1
        self.timeouts_by_kind[kind] = self.timeouts_by_kind.get(kind, 0) + 1
        item = {"kind": kind, "t_ns": t, **fields}
        if len(self.timeouts) < MAX_ITEMS:
            self.timeouts.append(item)
        return item

    # ------------------------------------------------------------------ report

    def report(self, t0: int, t_end: int | None, secs: Any) -> dict[str, Any]:
        wf = self.waitfor
        active = {id(c) for c in wf.active}
        deadlocks = [self._deadlock(c, t0, t_end, id(c) in active, secs) for c in wf.cycles[:MAX_ITEMS]]
        forced = [{**f, "t_s": secs(f["t_ns"]), "sentence": _forced_sentence(f, t0)} for f in self.fence_forced]
        timeouts = [{**x, "importers": list(x.get("importers") or []), "t_s": secs(x["t_ns"]),
                     "sentence": _timeout_sentence(x, t0)} for x in self.timeouts]
        return {
            "total": self.total,
            DEADLOCK: {"count": wf.count, "present_at_end": len(wf.active), "items": deadlocks},
            FENCE_FORCED: {"count": self.n_fence_forced, "items": forced},
            TIMEOUT: {"count": self.n_timeouts, "by_kind": dict(self.timeouts_by_kind), "items": timeouts},
            REVOKE_INCOMPLETE: {"count": self.n_incomplete, "items": [
                {**x, "t_s": secs(x["t_ns"]), "sentence": _incomplete_sentence(x, t0)} for x in self.incomplete]},
            STUCK: {"count": self.n_stuck, "by_what": dict(self.stuck_by_what),
                    "summary": liveness.phrase(self.stuck_by_what),
                    **(self.liveness.status() if self.liveness is not None else {"judged": False, "why_not": None,
                                                                                  "bound_t_ns": None, "excused": {}}),
                    "items": [{**x, "t_s": secs(x["t_ns"]), "sentence": liveness.sentence(x, t0)}
                              for x in self.stuck_items]},
            REFCOUNT_WARNING: {"count": self.n_refcount, "items": [
                {**x, "t_s": secs(x["t_ns"]), "sentence": _refcount_sentence(x, t0)} for x in self.refcount]},
            POTENTIAL_DEADLOCK: self.lockdep.report(t0, secs),
        }

    @staticmethod
    def _deadlock(c: Cycle, t0: int, t_end: int | None, present: bool, secs: Any) -> dict[str, Any]:
        text = f"{cycle_clauses(c)}. It formed at {rel_ms(c.formed_t, t0)} ({c.formed_by})"
        broken = None
        if c.broken_t is not None and c.broken_by is not None:
            how = describe_break(c.broken_by)
            text += f" and was broken at {rel_ms(c.broken_t, t0)} by {how}."
            broken = {"t_ns": c.broken_t, "t_s": secs(c.broken_t), **c.broken_by, "how": how}
        elif present:
            text += f" and was still present at the end of the history ({rel_ms(t_end, t0)})."
        else:
            text += "; it was no longer watched when it ended (too many cycles at once)."
        return {"t_ns": c.formed_t, "t_s": secs(c.formed_t), "formed_by": c.formed_by, "length": len(c.nodes),
                "cycle": [_node_dict(n, c.details.get(n, {})) for n in c.nodes], "sentence": text,
                "broken": broken, "present_at_end": present, "events": cycle_events(c)}


def _forced_sentence(f: dict[str, Any], t0: int) -> str:
    by = f" (move {f['move']})" if f.get("move") is not None else (
        f" (revoke {f['revoke']})" if f.get("revoke") is not None else "")
    return (f"the exporter force-completed {f['importer']}'s fences on buffer {f.get('buffer')}{by} at "
            f"{rel_ms(f['t_ns'], t0)}: {f.get('error') or 'no reason given'}.")


def _incomplete_sentence(x: dict[str, Any], t0: int) -> str:
    then = (f"it unmapped only at {rel_ms(x['unmapped_t'], t0)} ({x['unmapped_by']})" if x.get("unmapped_t") is not None
            else "it had not unmapped by the end of the history")
    return (f"revoke {x.get('revoke')} of buffer {x.get('buffer')} ended its unmap wait at {rel_ms(x['t_ns'], t0)} "
            f"while {x['importer']}'s attachment {x.get('attachment')} was still mapped (map {x.get('map_id')} "
            f"served at {rel_ms(x['mapped_t'], t0)}); {then}: the exporter went on as if every importer had "
            f"unmapped, and may reuse or disable memory the importer can still reach.")


def _refcount_sentence(x: dict[str, Any], t0: int) -> str:
    return (f"at {rel_ms(x['t_ns'], t0)} the exporter warned \"{x.get('message')}\" on buffer {x.get('buffer')}'s "
            f"unmap-wait count (refs {x.get('refs')}): a reference taken on zero or dropped below it, so that "
            f"count no longer says which mappings a revocation must wait for.")


def _timeout_sentence(x: dict[str, Any], t0: int) -> str:
    kind, at = x["kind"], rel_ms(x["t_ns"], t0)
    who = ", ".join(str(i) for i in x.get("importers") or []) or "nobody named"
    op = (f"move {x['move']}" if x.get("move") is not None
          else f"revoke {x['revoke']}" if x.get("revoke") is not None else "the operation")
    if kind == "notify":
        return f"at {at} {op} of buffer {x.get('buffer')} stopped waiting for move_notify acks or returns from {who}."
    if kind == "fence":
        return f"at {at} the fence wait of {op} on buffer {x.get('buffer')} timed out: the fences of {who} were forced."
    if kind == "lease":
        return f"at {at} {who}'s lease expired: the exporter declared it lost and revoked what it held."
    if kind == "unmap":
        return (f"at {at} {who} had not unmapped buffer {x.get('buffer')} after {op}, past the bound"
                f" ({x.get('message') or 'importer has a broken invalidate_mapping()'}).")
    return f"at {at} a {kind} timeout."
