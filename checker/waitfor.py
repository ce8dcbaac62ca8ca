"""The wait-for graph: who waits for whom, from the lock and wait events alone. A cycle is a deadlock.

Rules (docs/events.md, "Locks and waits"):
- Nodes are tuples: ("lock", buffer); a lock's holder ("move", buffer, id) or ("revoke", buffer, id);
  ("fence", importer, buffer, seq); ("map", importer, request id).
- Edges are not stored: they are read off the state of live waits, so an edge exists exactly while
  its wait does, and nothing outlives the wait that made it:
  `holders` (lock -> holder, resv_lock..resv_unlock), `waits` (holder -> the fences of its
  fence_wait_begin not yet signaled), `blocked` (a fence -> what its fence_blocked names),
  `deferred` (a map -> its buffer's lock, map_deferred..served / refused / revoked).
- Fences of one importer and buffer signal in order: a blocked fence j also holds back a wait for
  fence s >= j of that importer and buffer (the edge fence s -> fence j), and a signal of seq s
  signals every fence up to s.
- A new cycle can only pass through a node that just gained an out-edge, so after each such event
  the checker searches from that node's new successors back to it (breadth first: the shortest
  cycle through each new edge). A cycle is reported once; while it lasts it is "active", and each
  event that ends a wait re-checks the active cycles (only then): the first one that takes away
  an edge of a cycle broke it. A cycle still active at the end is reported as such.
- The graph knows no strategy: any producer that emits these events gets the finding.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from checker.catalogue import require_known
from checker.model import importer_name

Node = tuple[Any, ...]
HOLDER_KINDS = ("move", "revoke")
MAX_ACTIVE = 64          # cycles watched for their end at once (more are reported, not watched)


def holder_of(ev: dict[str, Any], buffer: Any) -> Node | None:
    """The lock holder an exporter event names: its `move`, or its `revoke`."""
    if ev.get("move") is not None:
        return ("move", buffer, ev["move"])
    if ev.get("revoke") is not None:
        return ("revoke", buffer, ev["revoke"])
    return None


def _le(a: Any, b: Any) -> bool:
    """a <= b for seqnos; a seqno that is not an int only matches itself."""
    if type(a) is int and type(b) is int:
        return a <= b
    return a == b


@dataclass(slots=True)
class Cycle:
    nodes: list[Node]                      # starting at a lock holder when there is one
    formed_t: int
    formed_by: str                         # the event that closed it
    edges_since: list[int | None]          # when each edge's wait began (nodes[i] -> nodes[i+1])
    details: dict[Node, dict[str, Any]] = field(default_factory=dict)
    broken_t: int | None = None
    broken_by: dict[str, Any] | None = None


class WaitFor:
    """Feed the events through the handler methods (names as in `HANDLED`); read `cycles`."""

    def __init__(self, on_cycle: Callable[[Cycle], None] | None = None,
                 on_broken: Callable[[Cycle], None] | None = None) -> None:
        self.on_cycle = on_cycle
        self.on_broken = on_broken
        self.holders: dict[Any, tuple[Node, int]] = {}                     # buffer -> (holder, since)
        self.waits: dict[Node, dict[tuple[str, Any], tuple[Any, Any, int]]] = {}  # holder -> (imp, buf) -> (seq, usage, since)
        self.fence_waiters: dict[tuple[str, Any], set[Node]] = {}         # (imp, buf) -> holders waiting
        self.blocked: dict[tuple[str, Any], dict[Any, tuple[Node, int, Any]]] = {}  # (imp, buf) -> seq -> (target, since, job)
        self.blocked_on_map: dict[tuple[str, Any], tuple[str, Any, Any]] = {}  # map node key -> (imp, buf, seq)
        self.deferred: dict[tuple[str, Any], tuple[Any, Any, Node | None, int]] = {}  # (imp, id) -> (buffer, att, holder, since)
        self.cycles: list[Cycle] = []          # every cycle found, in order
        self.count = 0
        self.active: list[Cycle] = []
        self.not_watched = 0

    # ------------------------------------------------------------------ the graph

    def succ(self, node: Node) -> list[Node]:
        kind = node[0]
        if kind == "lock":
            h = self.holders.get(node[1])
            return [h[0]] if h is not None else []
        if kind in HOLDER_KINDS:
            w = self.waits.get(node)
            return [("fence", imp, buf, seq) for (imp, buf), (seq, _u, _t) in w.items()] if w else []
        if kind == "fence":
            _, imp, buf, s = node
            bl = self.blocked.get((imp, buf))
            if not bl:
                return []
            out: list[Node] = []
            for j, (target, _t, _job) in bl.items():
                if j == s:
                    out.append(target)
                elif _le(j, s):
                    out.append(("fence", imp, buf, j))
            return out
        if kind == "map":
            d = self.deferred.get((node[1], node[2]))
            return [("lock", d[0])] if d is not None else []
        return []

    def _since(self, u: Node, v: Node) -> int | None:
        kind = u[0]
        if kind == "lock":
            h = self.holders.get(u[1])
            return h[1] if h else None
        if kind in HOLDER_KINDS:
            e = (self.waits.get(u) or {}).get((v[1], v[2]))
            return e[2] if e else None
        if kind == "fence":
            bl = self.blocked.get((u[1], u[2])) or {}
            e = bl.get(u[3])
            if (e is None or e[0] != v) and v[0] == "fence" and (v[1], v[2]) == (u[1], u[2]):
                e = bl.get(v[3])      # u is behind v on their timeline: v's block holds u back
            return e[1] if e else None
        if kind == "map":
            d = self.deferred.get((u[1], u[2]))
            return d[3] if d else None
        return None

    def _details(self, node: Node) -> dict[str, Any]:
        kind = node[0]
        if kind in HOLDER_KINDS:
            return {}
        if kind == "fence":
            holder_waits = [w for w in self.waits.values() if (node[1], node[2]) in w]
            usage = holder_waits[0][(node[1], node[2])][1] if holder_waits else None
            bl = (self.blocked.get((node[1], node[2])) or {}).get(node[3])
            return {"usage": usage, "job": bl[2] if bl else None}
        if kind == "map":
            d = self.deferred.get((node[1], node[2]))
            return {"buffer": d[0], "attachment": d[1]} if d else {}
        return {}

    def _path_back(self, start: Node, goal: Node) -> list[Node] | None:
        """Shortest path start -> ... -> goal (breadth first over live waits)."""
        if start == goal:
            return [start]
        prev: dict[Node, Node | None] = {start: None}
        q = deque([start])
        while q:
            u = q.popleft()
            for v in self.succ(u):
                if v in prev:
                    continue
                prev[v] = u
                if v == goal:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])  # type: ignore[arg-type]
                    return path[::-1]
                q.append(v)
        return None

    def _gained(self, node: Node, new: list[Node], t: int, event: str) -> None:
        """`node` gained the out-edges to `new`: report each cycle they close."""
        seen = {frozenset(c.nodes) for c in self.active}
        for v in new:
            path = self._path_back(v, node)
            if path is None:
                continue
            cyc = [node, *path[:-1]]
            key = frozenset(cyc)
            if key in seen:
                continue
            seen.add(key)
            self._found(cyc, t, event)

    def _found(self, cyc: list[Node], t: int, event: str) -> None:
        k = next((i for i, n in enumerate(cyc) if n[0] in HOLDER_KINDS), 0)
        cyc = cyc[k:] + cyc[:k]
        n = len(cyc)
        since = [self._since(cyc[i], cyc[(i + 1) % n]) for i in range(n)]
        c = Cycle(cyc, t, event, since, {x: self._details(x) for x in cyc})
        self.count += 1
        self.cycles.append(c)
        if len(self.active) < MAX_ACTIVE:
            self.active.append(c)
        else:
            self.not_watched += 1
        if self.on_cycle is not None:
            self.on_cycle(c)

    def _lost_edge(self, t: int, how: dict[str, Any]) -> None:
        """An edge went away: which active cycles did that break?"""
        still = []
        for c in self.active:
            n = len(c.nodes)
            if all(c.nodes[(i + 1) % n] in self.succ(c.nodes[i]) for i in range(n)):
                still.append(c)
            else:
                c.broken_t, c.broken_by = t, how
                if self.on_broken is not None:
                    self.on_broken(c)
        self.active = still

    def trim(self, keep: int) -> None:
        """Forget the oldest reported cycles beyond `keep` that are no longer active."""
        if len(self.cycles) > keep:
            active = {id(c) for c in self.active}
            drop = len(self.cycles) - keep
            self.cycles = [c for i, c in enumerate(self.cycles) if i >= drop or id(c) in active]

    # ------------------------------------------------------------------ exporter events

    def resv_lock(self, ev: dict[str, Any], t: int, svc: str) -> None:
        buf = ev["buffer"]
        holder = holder_of(ev, buf)
        if holder is None:
            return
        old = self.holders.get(buf)
        self.holders[buf] = (holder, t)
        if old is not None and self.active:
            self._lost_edge(t, {"event": "resv_lock", "svc": svc, "buffer": buf})
        self._gained(("lock", buf), [holder], t, "resv_lock")

    def resv_unlock(self, ev: dict[str, Any], t: int, svc: str) -> None:
        buf = ev["buffer"]
        if self.holders.pop(buf, None) is not None and self.active:
            self._lost_edge(t, {"event": "resv_unlock", "svc": svc, "buffer": buf, "holder": holder_of(ev, buf)})

    def fence_wait_begin(self, ev: dict[str, Any], t: int, svc: str) -> None:
        buf = ev["buffer"]
        holder = holder_of(ev, buf)
        fences = ev.get("fences")
        if holder is None or not isinstance(fences, list):
            return
        self._drop_waits(holder)
        w: dict[tuple[str, Any], tuple[Any, Any, int]] = {}
        for f in fences:
            if not isinstance(f, dict):
                continue
            imp = f.get("importer")
            imp = importer_name(imp if imp is not None else f.get("slot"))
            fbuf = f.get("buffer", buf)
            w[(imp, fbuf)] = (f.get("seq"), f.get("usage"), t)
            self.fence_waiters.setdefault((imp, fbuf), set()).add(holder)
        if w:
            self.waits[holder] = w
            self._gained(holder, [("fence", imp, b, e[0]) for (imp, b), e in w.items()], t, "fence_wait_begin")

    def _drop_waits(self, holder: Node) -> bool:
        w = self.waits.pop(holder, None)
        if not w:
            return False
        for key in w:
            ws = self.fence_waiters.get(key)
            if ws is not None:
                ws.discard(holder)
                if not ws:
                    del self.fence_waiters[key]
        return True

    def fence_wait_end(self, ev: dict[str, Any], t: int, svc: str) -> None:
        holder = holder_of(ev, ev["buffer"])
        if holder is not None and self._drop_waits(holder) and self.active:
            self._lost_edge(t, {"event": "fence_wait_end", "svc": svc, "buffer": ev["buffer"]})

    def map_deferred(self, ev: dict[str, Any], t: int, svc: str) -> None:
        imp = importer_name(ev["importer"])
        buf = ev["buffer"]
        key = (imp, ev["id"])
        self.deferred[key] = (buf, ev.get("attachment"), holder_of(ev, buf), t)
        self._gained(("map", *key), [("lock", buf)], t, "map_deferred")

    def map_done(self, imp: str, rid: Any, t: int, how: dict[str, Any]) -> None:
        """A deferred map was served or refused (map_served / op_answered)."""
        if self.deferred.pop((imp, rid), None) is not None and self.active:
            self._lost_edge(t, how)

    def attachment_gone(self, imp: str, att: Any, t: int, how: dict[str, Any]) -> None:
        """attachment_revoked / detach: its deferred maps are answered with an error."""
        keys = [k for k, d in self.deferred.items() if k[0] == imp and d[1] == att]
        for k in keys:
            del self.deferred[k]
        if keys and self.active:
            self._lost_edge(t, how)

    def forced(self, imp: str, buf: Any, t: int, how: dict[str, Any]) -> None:
        """The exporter force-completed every fence of `imp` on `buf`."""
        self._signal(imp, buf, None, t, how)

    # ------------------------------------------------------------------ importer events

    def fence_blocked(self, ev: dict[str, Any], t: int, svc: str) -> None:
        buf, seq = ev["buffer"], ev["seq"]
        wf = ev["waiting_for"]
        kind = wf.get("kind")
        target: Node
        if kind == "map":
            target = ("map", svc, wf["id"])
            self.blocked_on_map[(svc, wf["id"])] = (svc, buf, seq)
        elif kind == "lock":
            target = ("lock", wf["buffer"])
        elif kind == "fence":
            target = ("fence", importer_name(wf.get("importer", svc)), wf.get("buffer", buf), wf["seq"])
        else:
            raise ValueError(f"unknown waiting_for kind {kind!r}")
        self.blocked.setdefault((svc, buf), {})[seq] = (target, t, ev.get("job"))
        self._gained(("fence", svc, buf, seq), [target], t, "fence_blocked")

    def fence_unblocked(self, ev: dict[str, Any], t: int, svc: str) -> None:
        bl = self.blocked.get((svc, ev["buffer"]))
        if bl is not None and bl.pop(ev["seq"], None) is not None:
            if not bl:
                del self.blocked[(svc, ev["buffer"])]
            if self.active:
                self._lost_edge(t, {"event": "fence_unblocked", "svc": svc, "buffer": ev["buffer"], "seq": ev["seq"]})

    def signaled(self, imp: str, buf: Any, seq: Any, t: int, how: dict[str, Any]) -> None:
        """An importer's fence_signal: every fence of (imp, buf) up to seq is signaled."""
        self._signal(imp, buf, seq, t, how)

    def _signal(self, imp: str, buf: Any, seq: Any, t: int, how: dict[str, Any]) -> None:
        key = (imp, buf)
        lost = False
        for holder in list(self.fence_waiters.get(key, ())):
            w = self.waits.get(holder)
            if w is None or key not in w:
                continue
            if seq is None or _le(w[key][0], seq):
                del w[key]
                lost = True
                ws = self.fence_waiters[key]
                ws.discard(holder)
                if not ws:
                    del self.fence_waiters[key]
                if not w:
                    del self.waits[holder]
        bl = self.blocked.get(key)
        if bl:
            for j in [j for j in bl if seq is None or _le(j, seq)]:
                target = bl.pop(j)[0]
                if target[0] == "map":
                    self.blocked_on_map.pop((target[1], target[2]), None)
                lost = True
            if not bl:
                del self.blocked[key]
        if lost and self.active:
            self._lost_edge(t, how)

    def map_answered(self, imp: str, rid: Any, t: int) -> None:
        """The importer's map reply arrived: a fence waiting for it waits no more."""
        b = self.blocked_on_map.pop((imp, rid), None)
        if b is None:
            return
        bl = self.blocked.get((b[0], b[1]))
        if bl is not None and bl.pop(b[2], None) is not None:
            if not bl:
                del self.blocked[(b[0], b[1])]
            if self.active:
                self._lost_edge(t, {"event": "map", "svc": imp, "id": rid})

    # ------------------------------------------------------------------ services

    def service_ended(self, name: str, t: int, how: str) -> None:
        """A service died or started again: every wait it was part of is gone."""
        lost = False
        if name == "exporter":
            lost = bool(self.holders or self.waits or self.deferred)
            self.holders.clear()
            self.waits.clear()
            self.fence_waiters.clear()
            self.deferred.clear()
        else:
            for key in [k for k in self.blocked if k[0] == name]:
                del self.blocked[key]
                lost = True
            for key in [k for k in self.blocked_on_map if k[0] == name]:
                del self.blocked_on_map[key]
            for key in [k for k in self.deferred if k[0] == name]:
                del self.deferred[key]
                lost = True
            for key in [k for k in self.fence_waiters if k[0] == name]:
                for holder in self.fence_waiters.pop(key):
                    w = self.waits.get(holder)
                    if w is not None:
                        w.pop(key, None)
                        if not w:
                            del self.waits[holder]
                lost = True
        if lost and self.active:
            self._lost_edge(t, {"event": f"service {how}", "svc": name})

    @property
    def live(self) -> int:
        """How many waits are held now (the graph's whole size)."""
        return (len(self.holders) + sum(len(w) for w in self.waits.values())
                + sum(len(b) for b in self.blocked.values()) + len(self.deferred))


# Event name -> WaitFor method, for the events only the graph reads.
HANDLED = ("resv_lock", "resv_unlock", "fence_wait_begin", "map_deferred", "fence_blocked", "fence_unblocked")
require_known(HANDLED, "checker/waitfor.py")
